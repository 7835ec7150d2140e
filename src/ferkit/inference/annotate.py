"""Draw results on images and video frames, and plot emotions over time.

Each face gets its box and one panel: a title row (the label and its probability, or
the two rival labels of a near-tie) above a bar per class. Panels are laid out so that
none covers another face or another panel (:func:`layout_panels`), and text is never
drawn smaller than :data:`MIN_TEXT_HEIGHT` pixels. Faces with geometry can also have it
drawn under the boxes and panels (:data:`GEOMETRY_DRAWINGS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

# One colour per canonical class (RGB); classes outside this map get grey. No class is
# grey: a face whose top two classes are too close to call keeps its top class's colour
# and gets a dashed box instead (see UNCERTAIN_DASH).
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "angry": (220, 50, 47),
    "contempt": (133, 153, 0),
    "disgust": (108, 113, 196),
    "fear": (211, 54, 130),
    "happy": (255, 200, 0),
    "neutral": (190, 150, 100),
    "sad": (38, 139, 210),
    "surprise": (42, 161, 152),
}


# A face whose top two classes are too close to call gets a dashed box (dash and gap
# lengths, in line widths), in its top class's colour, and a title with a question mark.
UNCERTAIN_DASH: tuple[int, int] = (4, 3)


# Top two probabilities closer than this make a near-tie, shown as uncertain.
UNCERTAIN_MARGIN = 0.10


# Height in pixels of capital letters and digits; smaller Hershey text is hard to read.
MIN_TEXT_HEIGHT = 12


# Above the minimum, text grows with the image: this share of its shorter side.
TEXT_HEIGHT_FRACTION = 1 / 50


# Still images whose shorter side is smaller are upscaled to it before drawing (pass as
# ``draw_results(..., min_side=STILL_IMAGE_MIN_SIDE)``), which leaves room for legible
# panels on thumbnails; video frames keep their size.
STILL_IMAGE_MIN_SIDE = 720


# Upscaling for legibility stops when the longer side reaches this many pixels.
MAX_DRAWN_SIDE = 4096


# Where every place covers another face or its own, a panel may hide this share of its own
# face (the box) before a smaller panel is preferred.
OWN_FACE_SHARE = 0.25


# Extra greedy passes tried when a layout leaves some face with a reduced or covering panel.
LAYOUT_RETRIES = 2


# Classes listed by a compact panel, used where a full panel has no free place.
COMPACT_ROWS = 3


#: What ``draw_results(..., geometry=...)`` draws of each face's geometry (``predict
#: --annotate-geometry``): ``mesh``, the face mesh's edges; ``contours``, the outlines of
#: the face, eyes, brows, lips and irises; ``axes``, the head's pose as three axes from
#: the nose tip (red: to the subject's left, green: up, blue: forward out of the face).
GEOMETRY_DRAWINGS = ("mesh", "contours", "axes")


# Colours of the geometry drawings (RGB).
_MESH_COLOR = (235, 235, 235)
_CONTOUR_COLORS = {
    "face_oval": (235, 235, 235), "lips": (255, 80, 80), "left_eye": (80, 220, 120),
    "right_eye": (80, 220, 120), "left_eyebrow": (255, 170, 60), "right_eyebrow": (255, 170, 60),
    "left_iris": (60, 200, 255), "right_iris": (60, 200, 255),
}  # fmt: skip
_AXIS_COLORS = ((230, 40, 40), (40, 200, 60), (50, 110, 255))


_PANEL_COLOR = (30, 30, 30)


_TRACK_COLOR = (70, 70, 70)


_TEXT_COLOR = (255, 255, 255)


Rect = tuple[int, int, int, int]  # x, y, width, height


def class_color(name: str) -> tuple[int, int, int]:
    return CLASS_COLORS.get(name, (160, 160, 160))


def _top_two(probabilities: Mapping[str, float]) -> list[tuple[str, float]]:
    return sorted(probabilities.items(), key=lambda item: -float(item[1]))[:2]


def is_uncertain(probabilities: Mapping[str, float], margin: float = UNCERTAIN_MARGIN) -> bool:
    """Whether the two most probable classes are less than ``margin`` apart (a near-tie)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, not {margin}")
    top = _top_two(probabilities)
    return len(top) == 2 and float(top[0][1]) - float(top[1][1]) < margin


def face_title(face: Any, margin: float = UNCERTAIN_MARGIN) -> str:
    """The title drawn for a face: ``happy 95%``, or ``angry? 34% / neutral 32%`` when
    the top two classes are a near-tie; prefixed by ``#<track>`` in videos."""
    if is_uncertain(face.probabilities, margin):
        (first, p_first), (second, p_second) = _top_two(face.probabilities)
        title = f"{first}? {float(p_first):.0%} / {second} {float(p_second):.0%}"
    else:
        title = f"{face.label} {float(face.probabilities[face.label]):.0%}"
    if getattr(face, "track_id", None) is not None:
        title = f"#{face.track_id} {title}"
    return title


@dataclass(frozen=True)
class PanelStyle:
    """Sizes in pixels of everything drawn, derived from the canvas size."""

    text_height: int
    font_scale: float
    text_thickness: int
    line_thickness: int  # face boxes
    gap: int  # free space kept between a panel and any face box
    pad: int  # inside a row, above the text
    pad_x: int
    row_height: int
    bar_width: int


@lru_cache(maxsize=1)
def _cap_height_at_scale_one() -> int:
    import cv2

    return cv2.getTextSize("0", cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][1]


@lru_cache(maxsize=64)
def panel_style(height: int, width: int) -> PanelStyle:
    """The drawing sizes for a canvas of ``height`` x ``width`` pixels."""
    text_height = max(MIN_TEXT_HEIGHT, round(min(height, width) * TEXT_HEIGHT_FRACTION))
    line_thickness = max(2, round(text_height / 7))
    pad = max(2, round(text_height * 0.2))
    descent = math.ceil(text_height * 0.3)  # Hershey descenders (g, p, y) reach this far
    return PanelStyle(
        text_height=text_height,
        font_scale=text_height / _cap_height_at_scale_one(),
        text_thickness=max(1, round(text_height / 13)),
        line_thickness=line_thickness,
        gap=line_thickness + 2,
        pad=pad,
        pad_x=max(3, round(text_height * 0.35)),
        row_height=pad + text_height + descent,
        bar_width=4 * text_height,
    )


@lru_cache(maxsize=1024)
def _text_width(text: str, font_scale: float, thickness: int) -> int:
    import cv2

    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)[0][0]


@dataclass(frozen=True)
class PanelLayout:
    """Where one face's panel goes and what it shows."""

    face_index: int
    face_box: Rect  # the face's box on the canvas
    rect: Rect  # the panel, title row included
    title: str
    rows: tuple[str, ...]  # classes with a bar, top to bottom
    uncertain: bool
    covered: int  # pixels of other faces and panels under it; 0 unless nowhere was free


def _panel_size(style: PanelStyle, title: str, rows: Sequence[str]) -> tuple[int, int]:
    scale, thick = style.font_scale, style.text_thickness
    width = _text_width(title, scale, thick)
    if rows:
        names = max(_text_width(name, scale, thick) for name in rows)
        columns = names + style.pad_x + _text_width("100%", scale, thick) + style.pad_x
        width = max(width, columns + style.bar_width)
    return width + 2 * style.pad_x, style.row_height * (1 + len(rows))


def _overlap(a: Rect, b: Rect) -> int:
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return dx * dy if dx > 0 and dy > 0 else 0


def _candidates(
    zone: Rect,
    size: tuple[int, int],
    away: int,
    inset: int,
    row_height: int,
    height: int,
    width: int,
):
    """Panel positions around a face's keep-out zone, most preferred first: right of it,
    left, below, above (each slid along that side), ``away`` pixels from the zone; when
    ``away`` is 0, then the corners of the face box, ``inset`` inside the zone, as a last
    resort. All are kept inside the canvas."""
    x, y, w, h = zone
    pw, ph = size
    # Slid along a side, a panel still shares a stretch of it so that it reads as the
    # face's: at least a row of text beside the box, or a quarter of its width above it.
    row, quarter = min(ph, row_height), pw // 4
    along_y = (y, y + h - ph, y - ph // 2, y + h - ph // 2, y - ph + row, y + h - row)
    along_x = (x, x + w - pw, x - pw // 2, x + w - pw // 2, x - pw + quarter, x + w - quarter)
    positions = [(x + w + away, top) for top in along_y]
    positions += [(x - pw - away, top) for top in along_y]
    positions += [(left, y + h + away) for left in along_x]
    positions += [(left, y - ph - away) for left in along_x]
    if away == 0:
        inner_left, inner_right = x + inset, x + w - inset - pw
        inner_top, inner_bottom = y + inset, y + h - inset - ph
        positions += [(inner_left, inner_top), (inner_right, inner_top)]
        positions += [(inner_left, inner_bottom), (inner_right, inner_bottom)]
    seen = set()
    for left, top in positions:
        left = max(0, min(left, width - pw))
        top = max(0, min(top, height - ph))
        if (left, top) not in seen:
            seen.add((left, top))
            yield (left, top, pw, ph)


class _Place(NamedTuple):
    others: int  # pixels of other faces and panels covered
    own: int  # pixels of its own face covered
    stage: int  # index in the face's stages, most wanted first
    rank: int  # index among the stage's candidates
    rows: tuple[str, ...]
    rect: Rect


def _choose(options: list[_Place], own_allowance: float) -> _Place:
    """The first free place if there is one; else one covering only its own face (the
    earliest stage that hides at most ``own_allowance`` pixels of it, or failing that the
    least hiding); else the one covering the fewest pixels of others."""
    free = [place for place in options if place.others == place.own == 0]
    if free:
        return free[0]
    own_only = [place for place in options if place.others == 0]
    bearable = [place for place in own_only if place.own <= own_allowance]
    if bearable:
        return min(bearable, key=lambda place: (place.stage, place.own, place.rank))
    if own_only:
        return min(own_only, key=lambda place: (place.own, place.stage, place.rank))
    return min(options, key=lambda place: (place.others, place.own, place.stage, place.rank))


def layout_panels(
    image_shape: Sequence[int],
    faces: Sequence[Any],
    *,
    margin: float = UNCERTAIN_MARGIN,
    scale: float = 1.0,
) -> list[PanelLayout]:
    """Place each face's panel where it covers no other face box and no other panel.

    A panel goes right of its face's box, else left, below or above it (slid along each
    side), all inside the canvas. Where a full panel (all classes) has no free place
    there, a compact one (the top :data:`COMPACT_ROWS` classes) is tried, then the same a
    little further out, then the title alone; a panel covers its own face (inside the box)
    only as a last resort, and where nothing is free, the place covering the fewest pixels
    of other faces wins. Faces with the fewest free places choose first. Deterministic,
    and quick for video frames.

    Args:
        image_shape: shape of the canvas drawn on (height and width first).
        faces: :class:`ferkit.inference.results.FaceResult` objects (``box``, ``label``,
            ``probabilities``, optional ``track_id``).
        margin: near-tie margin, see :func:`is_uncertain`.
        scale: factor from the faces' box coordinates to the canvas.

    Returns:
        One :class:`PanelLayout` per face, in the order of ``faces``.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    style = panel_style(height, width)
    reach = style.gap + style.line_thickness // 2
    away = 2 * style.row_height
    boxes = [tuple(round(float(value) * scale) for value in face.box) for face in faces]
    # A face's box grown by its line and a gap: panels stay off it and off its edges.
    keep_out = [(x - reach, y - reach, w + 2 * reach, h + 2 * reach) for x, y, w, h in boxes]
    # Faces of a still image are numbered as in the records and on the web page (from 1);
    # video faces carry their track's number instead.
    titles = [
        face_title(face, margin)
        if getattr(face, "track_id", None) is not None
        else f"#{number} {face_title(face, margin)}"
        for number, face in enumerate(faces, start=1)
    ]
    stages = []  # per face: (rows, panel size, distance from the box), most wanted first
    for face, title in zip(faces, titles, strict=True):
        classes = tuple(face.probabilities)
        compact = tuple(sorted(classes, key=lambda name: -float(face.probabilities[name])))
        wanted = [(classes, 0), (compact[:COMPACT_ROWS], 0), (compact[:COMPACT_ROWS], away)]
        wanted += [((), 0), ((), away)]
        sized = [(rows, _panel_size(style, title, rows), gap) for rows, gap in wanted]
        # A panel larger than the canvas cannot stay inside it; the title alone always tries.
        fits = [stage for stage in sized if stage[1][0] <= width and stage[1][1] <= height]
        stages.append(list(dict.fromkeys(fits or sized[-2:])))

    def spots(index: int, size: tuple[int, int], distance: int):
        return _candidates(
            keep_out[index], size, distance, 2 * reach, style.row_height, height, width
        )

    def cover(rect: Rect, index: int, panels: list[Rect]) -> tuple[int, int]:
        """Pixels of (other faces and panels, this face) under ``rect``."""
        others = sum(_overlap(rect, box) for j, box in enumerate(keep_out) if j != index)
        others += sum(_overlap(rect, panel) for panel in panels)
        return others, _overlap(rect, keep_out[index])

    def free_places(index: int) -> int:
        _rows, size, distance = stages[index][0]
        return sum(cover(rect, index, []) == (0, 0) for rect in spots(index, size, distance))

    def places(index: int, panels: list[Rect]):
        """Candidate places, stage by stage, up to the first free one."""
        for stage, (rows, size, distance) in enumerate(stages[index]):
            for rank, rect in enumerate(spots(index, size, distance)):
                place = _Place(*cover(rect, index, panels), stage, rank, rows, rect)
                yield place
                if place.others == place.own == 0:
                    return

    def place_all(order: list[int]) -> dict[int, _Place]:
        chosen: dict[int, _Place] = {}
        for index in order:
            panels = [place.rect for place in chosen.values()]
            allowance = OWN_FACE_SHARE * keep_out[index][2] * keep_out[index][3]
            chosen[index] = _choose(list(places(index, panels)), allowance)
        return chosen

    def shortfall(chosen: dict[int, _Place]) -> tuple[int, int, int]:
        values = chosen.values()
        return (
            sum(place.others for place in values),
            sum(place.stage for place in values),
            sum(place.own for place in values),
        )

    order = list(range(len(faces)))
    if len(faces) > 1:
        order.sort(key=lambda i: (free_places(i), i))
    best = place_all(order)
    # Greedy placement can let an early panel take the only spot of a later face: retry
    # with the faces that came off worst placed first, and keep the better layout.
    for _ in range(LAYOUT_RETRIES):
        if shortfall(best) == (0, 0, 0):
            break
        worse = sorted(order, key=lambda i: (-best[i].others, -best[i].stage, -best[i].own))
        if worse == order:
            break
        order = worse
        attempt = place_all(order)
        if shortfall(attempt) < shortfall(best):
            best = attempt
    return [
        PanelLayout(
            face_index=index,
            face_box=boxes[index],
            rect=best[index].rect,
            title=titles[index],
            rows=best[index].rows,
            uncertain=is_uncertain(faces[index].probabilities, margin),
            covered=best[index].others,
        )
        for index in range(len(faces))
    ]


def draw_results(
    image: np.ndarray,
    faces: Sequence[Any],
    *,
    min_side: int = 0,
    margin: float = UNCERTAIN_MARGIN,
    geometry: str | None = None,
) -> np.ndarray:
    """A copy of an RGB image with each face's box and its panel of probabilities drawn.

    Args:
        image: ``uint8`` RGB, any size.
        faces: :class:`ferkit.inference.results.FaceResult` objects.
        min_side: first upscale an image with faces so that its shorter side has at least
            this many pixels (its longer side never beyond :data:`MAX_DRAWN_SIDE`); ``0``
            keeps its size, which video writers need.
            :data:`STILL_IMAGE_MIN_SIDE` suits still images.
        margin: near-tie margin, see :func:`is_uncertain`.
        geometry: also draw each face's geometry, where it has one: one of
            :data:`GEOMETRY_DRAWINGS` (None: not drawn).

    Returns:
        The drawn ``uint8`` RGB image, the size of ``image`` unless ``min_side`` enlarged it.
    """
    import cv2

    if geometry is not None and geometry not in GEOMETRY_DRAWINGS:
        raise ValueError(f"geometry must be one of {GEOMETRY_DRAWINGS}, not {geometry!r}")
    canvas = np.ascontiguousarray(image).copy()
    height, width = canvas.shape[:2]
    scale = 1.0
    if faces and min_side and min(height, width) < min_side:
        # Never beyond MAX_DRAWN_SIDE on the longer side: a 3000x1 strip must not become
        # millions of pixels wide.
        scale = min(min_side / min(height, width), MAX_DRAWN_SIDE / max(height, width))
        scale = max(scale, 1.0)
        size = (round(width * scale), round(height * scale))
        canvas = cv2.resize(canvas, size, interpolation=cv2.INTER_CUBIC)
    panels = layout_panels(canvas.shape, faces, margin=margin, scale=scale)
    style = panel_style(canvas.shape[0], canvas.shape[1])
    if geometry is not None:  # under the boxes and panels
        for face in faces:
            if getattr(face, "geometry", None) is not None:
                draw_geometry(canvas, face.geometry, geometry, scale)
    # All boxes and leaders first, so that no line is drawn over a panel.
    for face, panel in zip(faces, panels, strict=True):
        x, y, w, h = panel.face_box
        color = class_color(face.label)
        if panel.uncertain:
            _dashed_rectangle(canvas, (x, y, w, h), color, style.line_thickness)
        else:
            cv2.rectangle(canvas, (x, y), (x + w, y + h), color, style.line_thickness)
        # A panel set apart from its box is tied to it by a line between their nearest points.
        start, end = _nearest_points(panel.rect, panel.face_box)
        if max(abs(start[0] - end[0]), abs(start[1] - end[1])) > 2 * style.gap:
            cv2.line(canvas, start, end, color, max(1, style.line_thickness // 2), cv2.LINE_AA)
    for face, panel in zip(faces, panels, strict=True):
        _draw_panel(canvas, face, panel, style)
    return canvas


def draw_geometry(canvas: np.ndarray, geometry: Any, drawing: str, scale: float = 1.0) -> None:
    """Draw one face's geometry (:class:`ferkit.geometry.FaceGeometry`) onto an RGB
    canvas in place: ``drawing`` is one of :data:`GEOMETRY_DRAWINGS`; ``scale`` maps the
    geometry's pixels to the canvas's."""
    import cv2

    from ferkit.geometry import FACE_CONTOURS, mesh_edges, rotation_matrix

    points = geometry.landmarks[:, :2].astype(np.float64) * scale
    face_size = float(np.ptp(points[:, 0]) + np.ptp(points[:, 1])) / 2.0
    # Lines in whole pixels, with 4 bits of sub-pixel precision (OpenCV's shift).
    fixed = np.round(points * 16).astype(np.int32)
    thickness = max(1, round(face_size / 250))
    if drawing == "mesh":
        # Thin lines half blended into the picture, so the face shows through.
        layer = canvas.copy()
        edges = fixed[mesh_edges()]
        cv2.polylines(layer, list(edges), False, _MESH_COLOR, thickness, cv2.LINE_AA, shift=4)
        cv2.addWeighted(layer, 0.55, canvas, 0.45, 0, dst=canvas)
    elif drawing == "contours":
        for feature, chains in FACE_CONTOURS.items():
            lines = [fixed[list(chain)] for chain in chains]
            color = _CONTOUR_COLORS[feature]
            cv2.polylines(canvas, lines, False, color, thickness + 1, cv2.LINE_AA, shift=4)
    else:
        rotation = rotation_matrix(geometry.yaw, geometry.pitch, geometry.roll)
        nose = points[1]
        length = 0.45 * face_size
        for axis, color in zip(rotation.T, _AXIS_COLORS, strict=True):
            # The camera's y points up, the image's down.
            tip = nose + length * np.array([axis[0], -axis[1]])
            cv2.arrowedLine(
                canvas, tuple(np.round(nose).astype(int)), tuple(np.round(tip).astype(int)),
                color, thickness + 2, cv2.LINE_AA, tipLength=0.15,
            )  # fmt: skip


def _dashed_rectangle(
    canvas: np.ndarray, box: Rect, color: tuple[int, int, int], thickness: int
) -> None:
    """A box outlined in dashes (the look of a face too close to call)."""
    import itertools

    import cv2

    x, y, w, h = box
    dash, gap = (max(3, n * thickness) for n in UNCERTAIN_DASH)
    corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)]
    for (x0, y0), (x1, y1) in itertools.pairwise(corners):
        length = max(abs(x1 - x0), abs(y1 - y0))
        for start in range(0, length, dash + gap):
            end = min(start + dash, length)
            a = (x0 + (x1 - x0) * start // max(length, 1), y0 + (y1 - y0) * start // max(length, 1))
            b = (x0 + (x1 - x0) * end // max(length, 1), y0 + (y1 - y0) * end // max(length, 1))
            cv2.line(canvas, a, b, color, thickness)


def _nearest_points(a: Rect, b: Rect) -> tuple[tuple[int, int], tuple[int, int]]:
    """A point on rectangle ``a`` and one on ``b`` that are closest to each other."""

    def span(start_a: int, size_a: int, start_b: int, size_b: int) -> tuple[int, int]:
        low, high = max(start_a, start_b), min(start_a + size_a, start_b + size_b)
        if low <= high:  # the spans overlap: meet halfway along the shared stretch
            return (low + high) // 2, (low + high) // 2
        if start_a + size_a < start_b:
            return start_a + size_a, start_b
        return start_a, start_b + size_b

    ax, bx = span(a[0], a[2], b[0], b[2])
    ay, by = span(a[1], a[3], b[1], b[3])
    return (ax, ay), (bx, by)


def _ink_on(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black text on light colours, white on dark ones."""
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _draw_panel(canvas: np.ndarray, face: Any, panel: PanelLayout, style: PanelStyle) -> None:
    """The title row in the face's colour, then per class its name, value and bar."""
    import cv2

    def put(text: str, left: int, baseline: int, color: tuple[int, int, int]) -> None:
        cv2.putText(
            canvas,
            text,
            (left, baseline),
            cv2.FONT_HERSHEY_SIMPLEX,
            style.font_scale,
            color,
            style.text_thickness,
            cv2.LINE_AA,
        )

    x, y, w, h = panel.rect
    row, pad_x = style.row_height, style.pad_x
    color = class_color(face.label)
    cv2.rectangle(canvas, (x, y), (x + w - 1, y + row - 1), color, -1)
    put(panel.title, x + pad_x, y + style.pad + style.text_height, _ink_on(color))
    if not panel.rows:
        return
    cv2.rectangle(canvas, (x, y + row), (x + w - 1, y + h - 1), _PANEL_COLOR, -1)

    def text_width(text: str) -> int:
        return _text_width(text, style.font_scale, style.text_thickness)

    value_right = x + pad_x + max(map(text_width, panel.rows)) + pad_x + text_width("100%")
    bar_left = value_right + pad_x
    bar_width = x + w - pad_x - bar_left
    for number, name in enumerate(panel.rows, start=1):
        top = y + number * row
        baseline = top + style.pad + style.text_height
        probability = min(1.0, max(0.0, float(face.probabilities[name])))
        value = f"{probability:.0%}"
        put(name, x + pad_x, baseline, _TEXT_COLOR)
        put(value, value_right - text_width(value), baseline, _TEXT_COLOR)
        bar_top = top + style.pad
        cv2.rectangle(
            canvas, (bar_left, bar_top), (bar_left + bar_width, baseline), _TRACK_COLOR, -1
        )
        filled = round(bar_width * probability)
        if filled > 0:
            cv2.rectangle(
                canvas, (bar_left, bar_top), (bar_left + filled, baseline), class_color(name), -1
            )


def plot_emotions_over_time(
    times: dict[int, list[float]],
    probabilities: dict[int, list[np.ndarray]],
    classes: list[str],
    shares: dict[int, dict[str, float]],
    title: str = "",
    activity: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """Smoothed probability of each class over time for each track, and time shares.

    Args:
        times, probabilities: per track id, the timestamps and smoothed probabilities.
        shares: per track id, the share of its frames spent in each label.
        activity: with face geometry, per track id (as text) the blinks, smile and head
            turns of :func:`ferkit.inference.face_events.track_activity`: blinks are
            drawn as ticks under the curves, head turns as shaded spans, and the counts
            go in the track's title.

    Returns:
        The Matplotlib figure.
    """
    from ferkit.plots import subplots

    tracks = sorted(times) or [-1]
    fig, axes = subplots(
        len(tracks),
        2,
        figsize=(12, 3.2 * len(tracks)),
        squeeze=False,
        gridspec_kw={"width_ratios": [3, 1]},
    )
    for row, track in enumerate(tracks):
        line_ax, bar_ax = axes[row]
        if track in times:
            values = np.asarray(probabilities[track])
            for index, name in enumerate(classes):
                line_ax.plot(
                    times[track],
                    values[:, index],
                    label=name,
                    color=np.array(class_color(name)) / 255,
                )
            share = shares.get(track, {})
            bar_ax.barh(
                classes,
                [share.get(name, 0.0) for name in classes],
                color=[np.array(class_color(name)) / 255 for name in classes],
            )
        line_ax.set_ylim(0, 1)
        line_ax.set_xlabel("time (s)")
        line_ax.set_ylabel("probability (smoothed)")
        heading = f"{title} track {track}" if track >= 0 else f"{title}: no faces"
        events = (activity or {}).get(str(track))
        if events:
            heading += _draw_activity(line_ax, events)
        line_ax.set_title(heading)
        bar_ax.set_xlim(0, 1)
        bar_ax.set_title("share of time")
        if row == 0:
            line_ax.legend(loc="upper right", fontsize=7, ncol=4)
    fig.tight_layout()
    return fig


def _draw_activity(ax: Any, events: dict[str, Any]) -> str:
    """Blinks as ticks along the bottom and head turns as shaded spans on ``ax``; returns
    the words for the track's title."""
    for turn in events.get("head_turns", []):
        ax.axvspan(turn["start_s"], turn["end_s"], color="0.5", alpha=0.15, lw=0)
        ax.text(
            turn["start_s"], 0.97, f"turn {turn['direction']}", fontsize=7, va="top", color="0.3"
        )
    times = events.get("blink_times_s", [])
    if times:
        ax.plot(times, [0.05] * len(times), "|", color="black", markersize=16, mew=2, label="blink")
    blinks = events.get("blinks", 0)
    words = [f"{blinks} blink{'' if blinks == 1 else 's'}"]
    if events.get("blink_rate_per_min") is not None:
        words[0] += f" ({events['blink_rate_per_min']:g}/min)"
    if events.get("smile_mean") is not None:
        words.append(f"smile {events['smile_mean']:.2f}")
    turns = len(events.get("head_turns", []))
    words.append(f"{turns} head turn{'' if turns == 1 else 's'}")
    return "  |  " + ", ".join(words)
