"""Face geometry (ferkit.geometry): the vendored MediaPipe files are intact and small, head
pose follows its stated convention on synthetic faces, and on a real face the landmarks,
blendshapes and pose reach every interface (API, DataFrame, predict's CSV/JSON) only when
asked for: with geometry off, records are what they were. Over time: blinks (with
hysteresis against a track's baseline) and head turns on synthetic series, and woman2.mp4's
six blinks through predict's summary. Drawing: the mesh, contours and pose axes land on
the face, point the right way, and leave --annotate's own drawing as it was."""

from __future__ import annotations

import csv
import json
import math
import shutil

import cv2
import numpy as np
import pytest

from ferkit import geometry
from ferkit.cli import main
from ferkit.geometry import (
    BLENDSHAPE_LANDMARKS,
    BLENDSHAPE_NAMES,
    LANDMARK_COUNT,
    FaceGeometryEstimator,
    canonical_face_model,
    head_pose,
    mediapipe_model_path,
)
from tests.conftest import require_shared

# What the three files add to the package (3,527,278 bytes); the licence, README and
# checksums add about 13 KB.
ASSET_BUDGET_BYTES = int(3.4 * 2**20)


def test_vendored_files_are_intact_licensed_and_within_budget():
    checksums = json.loads((geometry.MEDIAPIPE_DIR / "checksums.json").read_text())
    assert set(checksums) == {
        "face_landmarks_detector.tflite",
        "face_blendshapes.tflite",
        "geometry_pipeline_metadata_landmarks.binarypb",
    }
    for name in checksums:
        assert mediapipe_model_path(name).is_file()
    total = sum(path.stat().st_size for path in geometry.MEDIAPIPE_DIR.iterdir())
    assert total < ASSET_BUDGET_BYTES, f"{total / 2**20:.2f} MB"
    assert "Apache License" in (geometry.MEDIAPIPE_DIR / "LICENSE").read_text()[:200]


def test_damaged_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "mediapipe"
    shutil.copytree(geometry.MEDIAPIPE_DIR, copy)
    data = bytearray((copy / "face_blendshapes.tflite").read_bytes())
    data[1000] ^= 0xFF
    (copy / "face_blendshapes.tflite").write_bytes(bytes(data))
    monkeypatch.setattr(geometry, "MEDIAPIPE_DIR", copy)
    with pytest.raises(RuntimeError, match=r"damaged.*reinstall"):
        mediapipe_model_path("face_blendshapes.tflite")
    (copy / "face_blendshapes.tflite").unlink()
    with pytest.raises(RuntimeError, match="cannot be read"):
        mediapipe_model_path("face_blendshapes.tflite")


def test_canonical_model_and_tables():
    mesh, indices, weights = canonical_face_model()
    assert mesh.shape == (468, 3) and np.isfinite(mesh).all()
    assert len(indices) == len(weights) > 10 and indices.max() < 468 and (weights > 0).all()
    # The model looks at the viewer: the nose tip (landmark 1) is its front-most point.
    assert mesh[1, 2] == pytest.approx(mesh[:, 2].max(), abs=0.5)
    assert len(BLENDSHAPE_NAMES) == 52 and BLENDSHAPE_NAMES[0] == "_neutral"
    assert len(BLENDSHAPE_LANDMARKS) == 146 and BLENDSHAPE_LANDMARKS.max() == LANDMARK_COUNT - 1


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``Ry(yaw) Rx(-pitch) Rz(roll)``, the module's convention, in degrees."""
    a, b, c = (math.radians(v) for v in (yaw, -pitch, roll))
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return ry @ rx @ rz


def _synthetic_landmarks(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The canonical face turned by the given angles, 50 cm in front of a 640x480 camera
    with MediaPipe's 63 degree vertical field of view, as the mesh network reports it."""
    mesh, _, _ = canonical_face_model()
    width, height, distance = 640, 480, 50.0
    near_height = 2 * math.tan(math.radians(geometry.VERTICAL_FIELD_OF_VIEW / 2))
    near_width = near_height * width / height
    depth = distance - (mesh @ _rotation(yaw, pitch, roll).T)[:, 2]  # along the view
    turned = mesh @ _rotation(yaw, pitch, roll).T
    pixels = np.zeros((LANDMARK_COUNT, 3), dtype=np.float32)
    pixels[:468, 0] = (turned[:, 0] / depth / near_width + 0.5) * width
    pixels[:468, 1] = (0.5 - turned[:, 1] / depth / near_height) * height
    pixels[:468, 2] = (depth - distance) * width / (near_width * distance)
    return pixels


@pytest.mark.parametrize(
    "yaw, pitch, roll", [(0, 0, 0), (25, 0, 0), (-25, 0, 0), (0, 15, 0), (0, -15, 0),
                         (0, 0, 20), (0, 0, -20), (20, -10, 15)],
)  # fmt: skip
def test_head_pose_recovers_turned_synthetic_faces(yaw, pitch, roll):
    landmarks = _synthetic_landmarks(yaw, pitch, roll)
    found = head_pose(landmarks, (640, 480))
    assert found == pytest.approx((yaw, pitch, roll), abs=1.5)
    # The nose tip (landmark 1) against its place on the face looking at the camera.
    nose, frontal = landmarks[1], _synthetic_landmarks(0, 0, 0)[1]
    if yaw:  # yaw > 0: the face turns towards the image's right
        assert np.sign(nose[0] - frontal[0]) == np.sign(yaw)
    if pitch and not yaw:  # pitch > 0: chin up, the nose rises in the image
        assert np.sign(frontal[1] - nose[1]) == np.sign(pitch)


@pytest.fixture(scope="module")
def justin():
    path = require_shared("samples", "justin.jpg")
    return path, cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def estimator():
    return FaceGeometryEstimator()


def _largest_face(rgb):
    from ferkit.faces import make_detector

    return make_detector("blazeface-full").detect(rgb, thorough=True)[0]


@pytest.mark.real_data
def test_real_face_landmarks_blendshapes_and_pose(justin, estimator):
    _, rgb = justin
    face = _largest_face(rgb)
    result = estimator.estimate_face(rgb, face)
    assert result.landmarks.shape == (478, 3) and result.landmarks.dtype == np.float32
    assert np.isfinite(result.landmarks).all()
    x, y, w, h = face.box
    inside = (
        (result.landmarks[:, 0] > x - 0.2 * w) & (result.landmarks[:, 0] < x + 1.2 * w)
        & (result.landmarks[:, 1] > y - 0.2 * h) & (result.landmarks[:, 1] < y + 1.2 * h)
    )  # fmt: skip
    assert inside.all()
    assert list(result.blendshapes) == list(BLENDSHAPE_NAMES)
    assert all(0.0 <= score <= 1.0 for score in result.blendshapes.values())
    # The reference gives 0.80, 0.71 and 0.59 (tests/test_geometry_reference.py).
    assert result.blendshapes["mouthSmileRight"] > 0.7
    assert result.blendshapes["mouthSmileLeft"] > 0.6
    assert result.blendshapes["eyeSquintLeft"] > 0.45
    assert result.blendshapes["jawOpen"] < 0.3
    assert max(abs(result.yaw), abs(result.pitch), abs(result.roll)) < 10  # near-frontal
    assert result.presence > 0.9


@pytest.mark.real_data
def test_real_face_turned_and_mirrored_follows_the_convention(justin, estimator):
    _, rgb = justin
    upright = estimator.estimate_face(rgb, _largest_face(rgb))
    height, width = rgb.shape[:2]
    # OpenCV's positive angle turns the picture counter-clockwise as displayed.
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), 20, 1.0)
    turned_rgb = cv2.warpAffine(rgb, turn, (width, height), borderMode=cv2.BORDER_REFLECT)
    turned = estimator.estimate_face(turned_rgb, _largest_face(turned_rgb))
    assert turned.roll - upright.roll == pytest.approx(20, abs=3)
    assert turned.yaw == pytest.approx(upright.yaw, abs=3)
    mirrored_rgb = np.ascontiguousarray(rgb[:, ::-1])
    mirrored = estimator.estimate_face(mirrored_rgb, _largest_face(mirrored_rgb))
    assert mirrored.yaw == pytest.approx(-upright.yaw, abs=2)
    assert mirrored.roll == pytest.approx(-upright.roll, abs=2)
    assert mirrored.pitch == pytest.approx(upright.pitch, abs=2)
    # The subject's left becomes their right.
    left, right = upright.blendshapes["mouthSmileLeft"], upright.blendshapes["mouthSmileRight"]
    assert mirrored.blendshapes["mouthSmileRight"] == pytest.approx(left, abs=0.1)
    assert mirrored.blendshapes["mouthSmileLeft"] == pytest.approx(right, abs=0.1)


@pytest.mark.real_data
def test_recognizer_and_dataframe_carry_geometry_only_when_asked(justin):
    from ferkit import EmotionRecognizer, results_to_dataframe

    path, _ = justin
    plain = EmotionRecognizer().predict(path)
    assert plain[0].geometry is None
    assert not any(key.startswith("bs_") or key == "yaw" for key in plain[0].as_dict())
    faces = EmotionRecognizer(geometry=True).predict(path)
    assert faces[0].geometry is not None and faces[0].label == plain[0].label
    assert faces[0].probabilities == plain[0].probabilities
    frame = results_to_dataframe(faces)
    assert {"bs_mouthSmileLeft", "bs_jawOpen", "yaw", "pitch", "roll"} <= set(frame.columns)
    assert len(frame.loc[0, "landmarks"]) == 478
    assert frame.loc[0, "bs_mouthSmileRight"] > 0.7


@pytest.mark.real_data
def test_video_frames_carry_geometry():
    from ferkit import EmotionRecognizer

    video = require_shared("samples", "woman2.mp4")
    frames = list(EmotionRecognizer(geometry=True).predict_video(video, max_frames=3))
    faces = [face for frame in frames for face in frame.faces]
    assert faces and all(face.geometry is not None for face in faces)
    assert all(face.geometry.landmarks.shape == (478, 3) for face in faces)


@pytest.mark.real_data
def test_predict_geometry_columns_json_landmarks_and_untouched_records(justin, tmp_path):
    path, _ = justin
    argv = ["predict", str(path), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "json"), "--format", "json", "--geometry"]) == 0
    [record] = json.loads((tmp_path / "json" / "predictions.json").read_text())
    assert len(record["landmarks"]) == 478 and all(len(p) == 3 for p in record["landmarks"])
    assert [key[3:] for key in record if key.startswith("bs_")] == list(BLENDSHAPE_NAMES)
    assert record["bs_mouthSmileRight"] > 0.7 and abs(record["yaw"]) < 10

    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert main([*argv, "--out", str(tmp_path / "geometry"), "--geometry"]) == 0
    with open(tmp_path / "geometry" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    added = [f"bs_{name}" for name in BLENDSHAPE_NAMES] + ["yaw", "pitch", "roll"]
    assert list(rows[0])[-len(added) :] == added and "landmarks" not in rows[0]
    # Geometry only adds columns: without them the CSV is the one predict writes without it.
    plain = (tmp_path / "plain" / "predictions.csv").read_text()
    with open(tmp_path / "geometry" / "predictions.csv", newline="") as handle:
        reader = csv.reader(handle)
        trimmed = [row[: -len(added)] for row in reader]
    rewritten = tmp_path / "trimmed.csv"
    with open(rewritten, "w", newline="") as handle:
        csv.writer(handle).writerows(trimmed)
    assert rewritten.read_text() == plain


# -- over time: blinks, smile, head turns ------------------------------------------------


def _blinking(times, peaks, baseline=0.05, height=0.4, frames=3):
    """Blink scores at ``times`` (30 frames/s): ``baseline`` with a blink of ``frames``
    frames peaking at ``height`` above it at each of ``peaks`` seconds."""
    scores = np.full(len(times), baseline)
    for peak in peaks:
        index = round(peak * 30)
        scores[index - frames // 2 : index - frames // 2 + frames] = baseline + height
    return scores


def test_blinks_are_counted_with_hysteresis_against_the_baseline():
    from ferkit.inference.face_events import blink_times

    times = np.arange(0, 10, 1 / 30)
    assert blink_times(times, _blinking(times, [1, 3, 5.5])) == pytest.approx([1, 3, 5.5], abs=0.05)
    # A face whose scores stay high (looking down, laughing) blinks above its own baseline.
    high = _blinking(times, [2, 7], baseline=0.55, height=0.3)
    assert len(blink_times(times, high)) == 2
    assert blink_times(times, np.full(len(times), 0.6)) == []
    # Jitter that crosses the onset but not back below the offset is one blink, not two.
    jitter = _blinking(times, [4], height=0.3, frames=6)
    jitter[120] = 0.05 + 0.15  # dips, but stays above the fall threshold
    assert len(blink_times(times, jitter)) == 1
    # Eyes closed for 1.5 s are not a blink; a blink cut by a gap in the track is dropped.
    assert blink_times(times, _blinking(times, [5], frames=45)) == []
    gapped = times.copy()
    gapped[151:] += 1.0  # the track is lost for a second in the middle of the blink
    assert blink_times(gapped, _blinking(times, [5])) == []


def test_head_turns_last_long_enough_and_name_the_subjects_side():
    from ferkit.inference.face_events import HEAD_TURN_DEGREES, head_turns

    times = np.arange(0, 10, 1 / 30)
    yaw = np.zeros(len(times))
    yaw[60:120] = 30  # 2 s towards the image's right: the subject's own left
    yaw[200:215] = -35  # half a second: too short
    yaw[240:300] = -HEAD_TURN_DEGREES - 2
    yaw[270] = -HEAD_TURN_DEGREES + 2  # within the return margin: still one turn
    turns = head_turns(times, yaw)
    assert [turn["direction"] for turn in turns] == ["left", "right"]
    assert turns[0]["start_s"] == pytest.approx(2.0) and turns[0]["end_s"] == pytest.approx(4.0)
    assert turns[0]["peak_yaw"] == 30 and turns[1]["start_s"] == pytest.approx(8.0)


def test_the_emotion_chart_marks_blinks_and_head_turns():
    from ferkit.inference.annotate import plot_emotions_over_time
    from ferkit.inference.face_events import track_activity

    classes = ["happy", "neutral"]
    times = np.arange(0, 10, 1 / 30)
    blink = np.zeros(len(times))
    for start in (30, 120, 240):  # three blinks of 0.2 s
        blink[start : start + 6] = 0.9
    yaw = np.zeros(len(times))
    yaw[60:120] = 30
    activity = {"1": track_activity(times, blink, np.full(len(times), 0.3), yaw)}
    assert activity["1"]["blinks"] == 3 and len(activity["1"]["head_turns"]) == 1
    probabilities = {1: [np.array([0.7, 0.3])] * len(times)}
    figure = plot_emotions_over_time(
        {1: list(times)}, probabilities, classes, {1: {}}, "v", activity
    )
    line_ax = figure.axes[0]
    assert "3 blinks" in line_ax.get_title() and line_ax.get_title().endswith("1 head turn")
    [ticks] = [line for line in line_ax.get_lines() if line.get_label() == "blink"]
    assert list(ticks.get_xdata()) == pytest.approx(activity["1"]["blink_times_s"])
    assert len(line_ax.patches) == 1  # the head turn's span
    plain = plot_emotions_over_time({1: list(times)}, probabilities, classes, {1: {}}, "v")
    assert "blinks" not in plain.axes[0].get_title() and not plain.axes[0].patches


@pytest.mark.real_data
def test_predict_video_summary_counts_the_blinks_of_woman2(tmp_path):
    """woman2.mp4 blinks six times (frames 9, 147, 279, 308, 327 and 457, each checked by
    eye), smiles now and then, and keeps her head within 6 degrees of frontal."""
    video = require_shared("samples", "woman2.mp4")
    out = tmp_path / "out"
    assert main(["predict", str(video), "--geometry", "--quiet", "--out", str(out)]) == 0
    [entry] = json.loads((out / "summary.json").read_text())["sources"]
    activity = entry["geometry_per_track"]["1"]
    frames = [9, 147, 279, 308, 327, 457]
    assert activity["blink_times_s"] == pytest.approx([f / 29.97 for f in frames], abs=0.05)
    assert activity["blink_rate_per_min"] == pytest.approx(6 / (464 / 29.97) * 60, abs=0.5)
    assert 0.2 < activity["smile_mean"] < 0.45 and activity["head_turns"] == []
    plain = tmp_path / "plain"
    assert main(["predict", str(video), "--quiet", "--max-frames", "5", "--out", str(plain)]) == 0
    assert (
        "geometry_per_track" not in json.loads((plain / "summary.json").read_text())["sources"][0]
    )


# -- drawing -----------------------------------------------------------------------------


def test_mesh_edges_and_contours_index_the_landmarks():
    from ferkit.geometry import FACE_CONTOURS, mesh_edges

    edges = mesh_edges()
    assert edges.shape[1] == 2 and len(edges) > 1300 and edges.max() < 468
    assert (edges[:, 0] < edges[:, 1]).all() and not edges.flags.writeable
    indices = {i for chains in FACE_CONTOURS.values() for chain in chains for i in chain}
    assert max(indices) < LANDMARK_COUNT and {"lips", "left_eye", "face_oval"} <= set(FACE_CONTOURS)


def test_rotation_matrix_is_the_documented_convention():
    from ferkit.geometry import rotation_matrix

    for angles in [(0, 0, 0), (25, -10, 15), (-40, 20, -5)]:
        assert np.allclose(rotation_matrix(*angles), _rotation(*angles))


def _face_with_geometry(yaw: float = 0.0):
    from ferkit.geometry import FaceGeometry
    from ferkit.inference.results import FaceResult

    points = _synthetic_landmarks(yaw, 0, 0)
    geometry = FaceGeometry(points, dict.fromkeys(BLENDSHAPE_NAMES, 0.1), yaw, 0.0, 0.0, 1.0)
    x, y = points[:, 0].min(), points[:, 1].min()
    width, height = np.ptp(points[:, 0]), np.ptp(points[:, 1])
    face = FaceResult(
        box=(int(x), int(y), int(width), int(height)), detector_confidence=0.9,
        label="happy", probabilities={"happy": 0.9, "sad": 0.1}, geometry=geometry,
    )  # fmt: skip
    return face


@pytest.mark.parametrize("drawing", ["mesh", "contours", "axes"])
def test_geometry_drawings_draw_on_the_face_and_leave_the_default_alone(drawing):
    from ferkit.inference.annotate import draw_results

    face = _face_with_geometry()
    canvas = np.full((480, 640, 3), 60, np.uint8)
    plain = draw_results(canvas, [face])
    drawn = draw_results(canvas, [face], geometry=drawing)
    changed = np.argwhere((drawn != plain).any(axis=2))
    assert len(changed) > 200
    x, y, w, h = face.box
    assert (changed[:, 1] >= x - 0.5 * w).all() and (changed[:, 1] <= x + 1.5 * w).all()
    assert (changed[:, 0] >= y - 0.5 * h).all() and (changed[:, 0] <= y + 1.5 * h).all()
    # Faces that carry geometry are drawn as before unless a drawing is asked for.
    bare = _face_with_geometry()
    object.__setattr__(bare, "geometry", None)
    assert np.array_equal(plain, draw_results(canvas, [bare]))
    with pytest.raises(ValueError, match="geometry must be one of"):
        draw_results(canvas, [face], geometry="wireframe")


def test_pose_axes_point_the_way_the_head_turns():
    from ferkit.inference.annotate import draw_results

    canvas = np.zeros((480, 640, 3), np.uint8)
    for yaw, side in [(30, 1), (-30, -1)]:
        face = _face_with_geometry(yaw)
        drawn = draw_results(canvas, [face], geometry="axes")
        blue = np.argwhere((drawn[:, :, 2] > 200) & (drawn[:, :, 0] < 120) & (drawn[:, :, 1] < 160))
        nose = face.geometry.landmarks[1]
        # The forward (blue) axis leans towards the image's side the face turns to.
        assert np.sign(blue[:, 1].mean() - nose[0]) == side


@pytest.mark.real_data
def test_annotate_geometry_draws_photos_and_videos_and_keeps_plain_annotation(justin, tmp_path):
    path, _ = justin
    video = require_shared("samples", "test.mp4")
    argv = ["predict", str(path), "--quiet", "--annotate"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert main([*argv, "--geometry", "--out", str(tmp_path / "with")]) == 0
    # Computing geometry changes nothing drawn by --annotate alone.
    plain = (tmp_path / "plain" / "annotated" / "justin.jpg").read_bytes()
    assert plain == (tmp_path / "with" / "annotated" / "justin.jpg").read_bytes()
    out = tmp_path / "mesh"
    command = ["predict", str(path), str(video), "--quiet", "--max-frames", "10",
               "--annotate-geometry", "contours", "--out", str(out)]  # fmt: skip
    assert main(command) == 0
    drawn = cv2.imread(str(out / "annotated" / "justin.jpg"))
    assert drawn.shape == cv2.imread(str(tmp_path / "plain" / "annotated" / "justin.jpg")).shape
    assert (
        np.abs(
            drawn.astype(int) - cv2.imread(str(tmp_path / "plain" / "annotated" / "justin.jpg"))
        ).mean()
        > 0.5
    )
    with open(out / "predictions.csv", newline="") as handle:
        assert "bs_jawOpen" in next(csv.reader(handle))  # --annotate-geometry computes it
    capture = cv2.VideoCapture(str(out / "annotated" / "test.webm"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) in (10, 0) or capture.read()[0]
    capture.release()
    with pytest.raises(SystemExit):
        main(["predict", str(path), "--annotate-geometry", "wireframe"])
