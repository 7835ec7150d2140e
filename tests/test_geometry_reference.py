"""ferkit's face geometry against an independent reference: the ``mediapipe`` package
(dev environment only) running the same Face Landmarker bundle through its Tasks API, on
the shared sample photos.

Two comparisons, with their tolerances:

- Same crop: ferkit's pipeline given the box of MediaPipe's own detector, so both crop the
  face alike. This checks the reimplementation itself (crop, landmark mapping, the
  blendshape network's input, the pose fit): landmarks within 0.5% of the face's width on
  average, blendshapes within 0.03 on faces over 150 px (a 100 px face's scores move by up
  to 0.16 with a sub-pixel change of crop), and the pose read from MediaPipe's own
  landmarks within 1 degree of its transformation matrix.
- ferkit's own detector, as ``predict --geometry`` runs it: faces matched by position;
  landmarks within 2% of the face's width on average, blendshapes within 0.04 on average
  and head pose within 4 degrees.
"""

from __future__ import annotations

import itertools
import math
import zipfile

import cv2
import numpy as np
import pytest

from ferkit.faces import Face, make_detector
from ferkit.geometry import (
    BLENDSHAPE_NAMES,
    CROP_SCALE,
    CROP_SHIFT,
    FaceGeometryEstimator,
    head_pose,
)
from tests.conftest import require_shared

pytestmark = pytest.mark.real_data
mediapipe = pytest.importorskip("mediapipe", reason="the reference: pip install mediapipe")

PHOTOS = ("justin.jpg", "couple.jpg", "selfie-many-people.jpg")


@pytest.fixture(scope="module")
def bundle():
    return require_shared("models", "mediapipe", "face_landmarker.task")


@pytest.fixture(scope="module")
def reference(bundle, tmp_path_factory):
    """For each photo: its RGB pixels, and per face found by MediaPipe its landmarks (in
    pixels), blendshapes, pose (from its transformation matrix, in ferkit's convention)
    and its detector's box and eye points."""
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    folder = tmp_path_factory.mktemp("mediapipe")
    with zipfile.ZipFile(bundle) as archive:
        detector_path = archive.extract("face_detector.tflite", folder)
    landmarker = vision.FaceLandmarker.create_from_options(
        vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(bundle)),
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
            num_faces=10,
        )
    )
    detector = vision.FaceDetector.create_from_options(
        vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=detector_path))
    )
    photos = {}
    for name in PHOTOS:
        rgb = cv2.cvtColor(cv2.imread(str(require_shared("samples", name))), cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        image = mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=rgb)
        found = landmarker.detect(image)
        detections = detector.detect(image).detections
        faces = []
        for points, scores, matrix in zip(
            found.face_landmarks, found.face_blendshapes,
            found.facial_transformation_matrixes, strict=True,
        ):  # fmt: skip
            landmarks = np.array([[p.x * width, p.y * height, p.z * width] for p in points])
            rotation = np.asarray(matrix)[:3, :3]
            pose = (
                math.degrees(math.atan2(rotation[0, 2], rotation[2, 2])),
                math.degrees(math.asin(rotation[1, 2])),
                math.degrees(math.atan2(rotation[1, 0], rotation[1, 1])),
            )
            centre = landmarks[:, :2].mean(axis=0)
            detection = min(detections, key=lambda d: _distance(_box_centre(d), centre))
            box = detection.bounding_box
            eyes = [(k.x * width, k.y * height) for k in detection.keypoints[:2]]
            faces.append(
                {
                    "landmarks": landmarks,
                    "blendshapes": {s.category_name: s.score for s in scores},
                    "pose": pose,
                    "box": (box.origin_x, box.origin_y, box.width, box.height),
                    "eyes": eyes,
                    "width": float(np.ptp(landmarks[:, 0])),
                }
            )
        photos[name] = (rgb, faces)
    landmarker.close()
    detector.close()
    return photos


def _box_centre(detection) -> np.ndarray:
    box = detection.bounding_box
    return np.array([box.origin_x + box.width / 2, box.origin_y + box.height / 2])


def _face_centre(face: Face) -> np.ndarray:
    x, y, width, height = face.box
    return np.array([x + width / 2, y + height / 2])


def _distance(a, b) -> float:
    return float(np.hypot(*(np.asarray(a) - np.asarray(b))))


def _as_ferkit_face(reference_face: dict) -> Face:
    """A ferkit face whose crop (:func:`ferkit.geometry.face_crop`) is the one MediaPipe
    takes around its own detector's box: that box enlarged 1.5 times about its centre."""
    x, y, width, height = reference_face["box"]
    side = 1.5 * max(width, height) / CROP_SCALE
    centre_x, centre_y = x + width / 2, y + height / 2 - CROP_SHIFT * side
    left, right = reference_face["eyes"]
    return Face(
        box=(centre_x - side / 2, centre_y - side / 2, side, side),
        confidence=1.0,
        landmarks={"left_eye": left, "right_eye": right},
    )


def _mean_distance(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.linalg.norm(ours[:, :2] - theirs[:, :2], axis=1).mean())


def _blendshape_errors(ours: dict, theirs: dict) -> np.ndarray:
    assert list(ours) == list(theirs) == list(BLENDSHAPE_NAMES)
    return np.array([abs(ours[name] - theirs[name]) for name in BLENDSHAPE_NAMES])


@pytest.fixture(scope="module")
def estimator():
    return FaceGeometryEstimator()


def test_reference_finds_the_faces_and_the_issue_s_smile(reference):
    assert [len(reference[name][1]) for name in PHOTOS] == [1, 2, 3]
    scores = reference["justin.jpg"][1][0]["blendshapes"]
    assert scores["mouthSmileRight"] == pytest.approx(0.80, abs=0.02)
    assert scores["mouthSmileLeft"] == pytest.approx(0.71, abs=0.02)
    assert scores["eyeSquintLeft"] == pytest.approx(0.59, abs=0.02)


@pytest.mark.parametrize("name", PHOTOS)
def test_same_crop_reproduces_the_reference(reference, estimator, name):
    rgb, faces = reference[name]
    for theirs in faces:
        ours = estimator.estimate_face(rgb, _as_ferkit_face(theirs))
        width = theirs["width"]
        assert _mean_distance(ours.landmarks, theirs["landmarks"]) < 0.005 * width
        depth = np.abs(ours.landmarks[:, 2] - theirs["landmarks"][:, 2]).mean()
        assert depth < 0.005 * width
        errors = _blendshape_errors(ours.blendshapes, theirs["blendshapes"])
        assert errors.mean() < 0.02
        if max(theirs["box"][2:]) >= 150:
            assert errors.max() < 0.03, BLENDSHAPE_NAMES[int(errors.argmax())]
        assert (ours.yaw, ours.pitch, ours.roll) == pytest.approx(theirs["pose"], abs=2)


@pytest.mark.parametrize("name", PHOTOS)
def test_pose_fit_matches_the_reference_matrix(reference, estimator, name):
    rgb, faces = reference[name]
    size = (rgb.shape[1], rgb.shape[0])
    for theirs in faces:
        assert head_pose(theirs["landmarks"], size) == pytest.approx(theirs["pose"], abs=1.0)
        # The blendshape network given MediaPipe's own landmarks gives its scores.
        ours = estimator.blendshapes(theirs["landmarks"].astype(np.float32))
        assert _blendshape_errors(ours, theirs["blendshapes"]).max() < 1e-3


@pytest.mark.parametrize("name", PHOTOS)
def test_ferkit_detector_agrees_with_the_reference(reference, estimator, name):
    rgb, faces = reference[name]
    found = make_detector("blazeface-full").detect(rgb, thorough=True)
    for theirs in faces:
        centre = theirs["landmarks"][:, :2].mean(axis=0)
        face = min(found, key=lambda f: _distance(_face_centre(f), centre))
        ours = estimator.estimate_face(rgb, face)
        assert _mean_distance(ours.landmarks, theirs["landmarks"]) < 0.02 * theirs["width"]
        assert _blendshape_errors(ours.blendshapes, theirs["blendshapes"]).mean() < 0.04
        assert (ours.yaw, ours.pitch, ours.roll) == pytest.approx(theirs["pose"], abs=4)
    if name == "justin.jpg":
        for key in ("mouthSmileRight", "mouthSmileLeft", "eyeSquintLeft"):
            assert ours.blendshapes[key] == pytest.approx(theirs["blendshapes"][key], abs=0.05)


def test_contours_and_mesh_are_mediapipes():
    """The outlines ferkit draws are MediaPipe's contours and irises, edge for edge; the
    mesh (the canonical model's triangles) shares most of its edges with MediaPipe's
    drawing tessellation (the two split some quadrilaterals along other diagonals)."""
    from mediapipe.tasks.python.vision.face_landmarker import FaceLandmarksConnections as C

    from ferkit.geometry import FACE_CONTOURS, mesh_edges

    def edges(chains) -> set[tuple[int, int]]:
        return {tuple(sorted(pair)) for chain in chains for pair in itertools.pairwise(chain)}

    def theirs(connections) -> set[tuple[int, int]]:
        return {tuple(sorted((c.start, c.end))) for c in connections}

    outlines = [chain for name, chains in FACE_CONTOURS.items() if "iris" not in name for chain in chains]  # fmt: skip
    assert edges(outlines) == theirs(C.FACE_LANDMARKS_CONTOURS)
    assert edges(FACE_CONTOURS["left_iris"]) == theirs(C.FACE_LANDMARKS_LEFT_IRIS)
    assert edges(FACE_CONTOURS["right_iris"]) == theirs(C.FACE_LANDMARKS_RIGHT_IRIS)
    assert edges(FACE_CONTOURS["lips"]) == theirs(C.FACE_LANDMARKS_LIPS)
    mesh = {tuple(edge) for edge in mesh_edges().tolist()}
    tessellation = theirs(C.FACE_LANDMARKS_TESSELATION)
    assert len(mesh & tessellation) > 0.8 * len(tessellation)
