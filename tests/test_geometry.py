"""Face geometry (ferkit.geometry): the vendored MediaPipe files are intact and small, head
pose follows its stated convention on synthetic faces, and on a real face the landmarks,
blendshapes and pose reach every interface (API, DataFrame, predict's CSV/JSON) only when
asked for: with geometry off, records are what they were."""

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
