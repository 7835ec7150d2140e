"""Annotation: panels placed clear of other faces, legible text, near-ties shown as such."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from conftest import require_shared

from ferkit.inference.annotate import (
    CLASS_COLORS,
    MIN_TEXT_HEIGHT,
    STILL_IMAGE_MIN_SIDE,
    class_color,
    draw_results,
    face_title,
    is_uncertain,
    layout_panels,
    panel_style,
)
from ferkit.inference.results import FaceResult

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def probabilities(**top: float) -> dict[str, float]:
    """One value per class: those given, the rest sharing what is left equally."""
    rest = (1 - sum(top.values())) / (len(CLASSES) - len(top))
    return {name: top.get(name, rest) for name in CLASSES}


def face(box: tuple[int, int, int, int], track_id: int | None = None, **top: float) -> FaceResult:
    values = probabilities(**top)
    return FaceResult(
        box=box,
        detector_confidence=0.9,
        label=max(values, key=values.get),
        probabilities=values,
        track_id=track_id,
    )


# Seven faces packed together on a 600x604 group photo, one of them a near-tie.
CROWDED = [
    face((311, 113, 173, 173), happy=0.9),
    face((84, 296, 141, 141), happy=0.8),
    face((192, 120, 128, 127), angry=0.34, neutral=0.32),
    face((0, 246, 88, 105), happy=0.7),
    face((470, 60, 130, 150), happy=0.85),
    face((0, 380, 110, 150), happy=0.6, neutral=0.3),
    face((420, 240, 180, 220), surprise=0.55, happy=0.4),
]
# The four faces the default recognizer finds on the shared group selfie.
SELFIE = [
    face((311, 113, 173, 173), happy=0.95),
    face((84, 296, 141, 141), happy=0.89),
    face((192, 120, 128, 127), happy=0.73, neutral=0.23),
    face((0, 246, 88, 105), happy=0.72),
]
TWO_IN_A_FRAME = [
    face((100, 60, 120, 120), track_id=1, happy=0.9),
    face((300, 80, 110, 110), track_id=2, angry=0.34, neutral=0.32),
]
# name: (canvas shape, faces, scale from the faces' boxes to the canvas)
LAYOUTS = {
    "crowded": ((604, 600, 3), CROWDED, 1.0),
    "crowded_upscaled": ((725, 720, 3), CROWDED, 1.2),
    "selfie": ((604, 600, 3), SELFIE, 1.0),
    # The selfie shrunk to 300 pixels, upscaled for drawing as still images are.
    "small": ((725, 720, 3), [face(tuple(v // 2 for v in f.box), happy=0.9) for f in SELFIE], 2.4),
    "video_frame": ((336, 596, 3), TWO_IN_A_FRAME, 1.0),
    "row_of_four": (
        (240, 640, 3),
        [face((40 + 150 * i, 60, 110, 110), happy=0.8) for i in range(4)],
        1.0,
    ),
}


def canvas_boxes(faces: list[FaceResult], scale: float) -> list[tuple[int, ...]]:
    return [tuple(round(v * scale) for v in f.box) for f in faces]


def touches(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether two (x, y, width, height) rectangles overlap or share an edge."""
    return (
        a[0] <= b[0] + b[2] and b[0] <= a[0] + a[2] and a[1] <= b[1] + b[3] and b[1] <= a[1] + a[3]
    )


@pytest.mark.parametrize("name", LAYOUTS)
def test_panels_touch_no_other_face_nor_panel(name):
    shape, faces, scale = LAYOUTS[name]
    panels = layout_panels(shape, faces, scale=scale)
    boxes = canvas_boxes(faces, scale)
    assert [panel.face_box for panel in panels] == boxes
    for panel in panels:
        assert panel.covered == 0
        for other, box in enumerate(boxes):
            if other != panel.face_index:
                assert not touches(panel.rect, box), (panel, box)
        for other_panel in panels:
            if other_panel is not panel:
                assert not touches(panel.rect, other_panel.rect), (panel, other_panel)


@pytest.mark.parametrize("name", LAYOUTS)
def test_panels_stay_inside_the_image(name):
    shape, faces, scale = LAYOUTS[name]
    height, width = shape[:2]
    for panel in layout_panels(shape, faces, scale=scale):
        x, y, w, h = panel.rect
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height, panel


def test_a_lone_face_gets_the_full_panel_beside_its_box():
    (panel,) = layout_panels((480, 640, 3), [face((100, 100, 150, 150), happy=0.9)])
    assert panel.rows == tuple(CLASSES)
    x, y, _, _ = panel.rect
    assert x > 100 + 150 and y <= 100 + 150  # right of the box, beside it


@pytest.mark.parametrize("name", ["crowded", "selfie", "video_frame", "row_of_four"])
def test_drawing_leaves_every_face_visible(name):
    """On a flat image, nothing but box lines, and as a last resort the face's own panel,
    is drawn inside a face's box: the panels are drawn where the layout put them."""

    shape, faces, _ = LAYOUTS[name]
    drawn = draw_results(np.full(shape, 90, dtype=np.uint8), faces)
    thickness = panel_style(*shape[:2]).line_thickness
    box_lines = np.zeros(shape[:2], np.uint8)
    for x, y, w, h in (f.box for f in faces):
        cv2.rectangle(box_lines, (x, y), (x + w, y + h), 1, 2 * thickness)
    changed = (drawn != 90).any(axis=2) & (box_lines == 0)
    for panel in layout_panels(shape, faces):
        x, y, w, h = panel.face_box
        inside = changed[max(0, y) : y + h, max(0, x) : x + w].copy()
        px, py, pw, ph = panel.rect
        inside[max(0, py - y) : max(0, py + ph - y), max(0, px - x) : max(0, px + pw - x)] = False
        assert not inside.any(), panel


def test_near_tie_is_uncertain_and_a_clear_winner_is_not():
    near_tie = face((10, 10, 50, 50), angry=0.34, neutral=0.32)
    clear = face((10, 10, 50, 50), happy=0.9)
    assert is_uncertain(near_tie.probabilities)
    assert not is_uncertain(clear.probabilities)
    assert face_title(near_tie) == "angry? 34% / neutral 32%"
    assert face_title(clear) == "happy 90%"
    assert face_title(face((0, 0, 9, 9), track_id=3, happy=0.9)) == "#3 happy 90%"
    panels = layout_panels((300, 400, 3), [near_tie])
    assert panels[0].uncertain and "?" in panels[0].title


@pytest.mark.parametrize(
    ("first", "second", "margin", "expected"),
    [(0.34, 0.32, 0.10, True), (0.50, 0.41, 0.10, True), (0.50, 0.40, 0.05, False)],
)
def test_is_uncertain_margin(first, second, margin, expected):
    values = {"happy": first, "neutral": second, "sad": 1 - first - second}
    assert is_uncertain(values, margin) is expected


def test_is_uncertain_rejects_a_negative_margin():
    with pytest.raises(ValueError, match="margin must be >= 0"):
        is_uncertain({"happy": 0.6, "sad": 0.4}, margin=-0.1)


def test_a_near_tie_keeps_its_colour_and_gets_a_dashed_box():
    """A face too close to call is drawn in its top class's colour with a dashed box, so
    that no expression's colour means "uncertain"; a clear face gets a solid box."""
    clear = draw_results(np.zeros((400, 600, 3), np.uint8), [face((200, 100, 120, 120), happy=0.9)])
    edge = clear[110:210, 200]  # the box's left edge, away from the panel
    assert all(tuple(p) == class_color("happy") for p in edge)
    tie = face((200, 100, 120, 120), angry=0.34, neutral=0.32)
    drawn = draw_results(np.zeros((400, 600, 3), np.uint8), [tie])
    edge = drawn[110:210, 200]
    coloured = [tuple(p) == class_color("angry") for p in edge]
    assert 0.3 < np.mean(coloured) < 0.9  # dashes and gaps
    assert not any(tuple(p) not in ((0, 0, 0), class_color("angry")) for p in edge)


def test_no_expression_is_drawn_grey():
    """Grey is nobody's colour: neutral has one of its own."""
    for name, (r, g, b) in CLASS_COLORS.items():
        assert not (r == g == b and r < 230), name


def test_video_frames_keep_their_size_and_type():
    frame = np.random.default_rng(0).integers(0, 256, (336, 596, 3), dtype=np.uint8)
    before = frame.copy()
    drawn = draw_results(frame, TWO_IN_A_FRAME)
    assert drawn.shape == frame.shape and drawn.dtype == np.uint8
    assert (frame == before).all()  # the input is left as it was
    assert draw_results(frame, []).shape == frame.shape


def test_small_still_images_are_upscaled_only_when_asked():
    small = np.zeros((151, 150, 3), np.uint8)
    faces = [face((20, 30, 50, 50), happy=0.9)]
    assert draw_results(small, faces).shape == small.shape
    upscaled = draw_results(small, faces, min_side=STILL_IMAGE_MIN_SIDE)
    assert min(upscaled.shape[:2]) >= STILL_IMAGE_MIN_SIDE
    assert upscaled.shape[0] > upscaled.shape[1]
    (panel,) = layout_panels(upscaled.shape, faces, scale=upscaled.shape[1] / 150)
    assert panel.face_box == tuple(round(v * STILL_IMAGE_MIN_SIDE / 150) for v in faces[0].box)


@pytest.mark.parametrize("side", [120, 336, 600, 1588])
def test_text_is_never_smaller_than_the_legible_minimum(side):
    style = panel_style(side, side * 4 // 3)
    assert style.text_height >= MIN_TEXT_HEIGHT
    assert style.row_height > style.text_height


def test_a_frame_with_two_faces_draws_in_under_5_ms():
    frame = np.zeros((360, 640, 3), np.uint8)
    draw_results(frame, TWO_IN_A_FRAME)  # first call loads OpenCV and fills caches
    timings = []
    for _ in range(30):
        started = time.perf_counter()
        draw_results(frame, TWO_IN_A_FRAME)
        timings.append(time.perf_counter() - started)
    assert np.median(timings) < 0.005


@pytest.mark.real_data
def test_real_group_selfie_keeps_every_face_visible():
    from ferkit.images import read_image

    rgb = read_image(require_shared("samples", "selfie-many-people.jpg"), color=True)
    drawn = draw_results(rgb, SELFIE, min_side=STILL_IMAGE_MIN_SIDE)
    scale = drawn.shape[0] / rgb.shape[0]
    panels = layout_panels(drawn.shape, SELFIE, scale=scale)
    for panel in panels:
        assert panel.rows  # room for at least a compact panel beside every face
        for other in panels:
            if other is not panel:
                assert not touches(panel.rect, other.face_box)


def test_upscaling_for_legibility_is_bounded():
    """A face on a 3000x10 strip: drawing must not blow the image up to millions of pixels."""
    from ferkit.inference.annotate import MAX_DRAWN_SIDE

    strip = np.zeros((10, 3000, 3), np.uint8)
    drawn = draw_results(strip, [face((0, 0, 10, 10), happy=0.9)], min_side=STILL_IMAGE_MIN_SIDE)
    assert max(drawn.shape[:2]) <= MAX_DRAWN_SIDE
    assert draw_results(strip, [], min_side=STILL_IMAGE_MIN_SIDE).shape == strip.shape


def test_still_faces_are_numbered_from_one_as_in_the_records():
    """The annotated image numbers a still image's faces as the records' ``face`` column
    and the web page do (from 1); video faces keep their track's number."""
    from ferkit.inference.records import image_records
    from ferkit.inference.results import ImageResult

    faces = ImageResult([face((20, 30, 80, 80), happy=0.9), face((300, 30, 80, 80), sad=0.8)])
    panels = layout_panels((400, 600, 3), faces)
    assert [p.title.split()[0] for p in panels] == ["#1", "#2"]
    records, _ = image_records("group.jpg", faces)
    assert [r["face"] for r in records] == [1, 2]
    tracked = layout_panels((400, 600, 3), [face((20, 30, 80, 80), track_id=7, happy=0.9)])
    assert tracked[0].title.startswith("#7 happy")
