"""Face detection on group photos (the still-image mode), on video frames, and on images
too small or too thin to hold a face."""

import tracemalloc

import numpy as np
import pytest
from conftest import require_shared

from ferkit.faces import DEFAULT_DETECTOR, DETECTOR_NAMES, iou_matrix, make_detector
from ferkit.images import read_image


@pytest.fixture(scope="module")
def samples():
    return require_shared("samples")


@pytest.fixture(scope="module")
def detectors():
    """Every detector, built once (MTCNN takes seconds to build)."""
    return {name: make_detector(name) for name in DETECTOR_NAMES}


def _corners(faces):
    return np.array([[x, y, x + w, y + h] for x, y, w, h in (face.box for face in faces)], float)


@pytest.mark.real_data
def test_still_mode_finds_the_group_selfie(detectors, samples):
    # Seven faces; three of them cut by the frame, which one search misses.
    image = read_image(samples / "selfie-many-people.jpg")
    detector = detectors[DEFAULT_DETECTOR]
    single = detector.detect(image)
    faces = detector.detect(image, thorough=True)
    assert len(faces) >= 6
    assert {face.box for face in single} <= {face.box for face in faces}
    overlap = iou_matrix(_corners(faces), _corners(faces))
    assert (overlap[~np.eye(len(faces), dtype=bool)] < 0.3).all()  # no face twice


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("photo", "count"), [("justin.jpg", 1), ("couple.jpg", 2), ("no-faces.jpg", 0)]
)
def test_still_mode_adds_no_false_faces(detectors, samples, photo, count):
    image = read_image(samples / photo)
    detector = detectors[DEFAULT_DETECTOR]
    assert len(detector.detect(image, thorough=True)) == count
    assert len(detector.detect(image)) == count


@pytest.mark.real_data
@pytest.mark.parametrize("side", ["left", "top"])
def test_still_mode_finds_a_face_the_frame_cuts_in_half(detectors, samples, side):
    image = read_image(samples / "justin.jpg")
    detector = detectors[DEFAULT_DETECTOR]
    (whole,) = detector.detect(image)
    x, y, w, h = whole.box
    cut = image[:, x + w // 2 :] if side == "left" else image[y + h // 2 :]
    (face,) = detector.detect(np.ascontiguousarray(cut), thorough=True)
    assert face.box[0 if side == "left" else 1] == 0


@pytest.mark.real_data
@pytest.mark.parametrize("video", ["woman2.mp4", "test.mp4"])
def test_video_frames_keep_one_face(detectors, samples, video):
    import cv2

    capture = cv2.VideoCapture(str(samples / video))
    frames = []
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % 20 == 0:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        index += 1
    capture.release()
    assert len(frames) >= 6
    detector = detectors[DEFAULT_DETECTOR]
    assert [len(detector.detect(frame)) for frame in frames] == [1] * len(frames)


@pytest.mark.parametrize("name", DETECTOR_NAMES)
@pytest.mark.parametrize(
    "shape", [(3000, 1), (1, 3000), (2, 5000), (5000, 2), (1, 1), (3, 3), (0, 40), (25, 5000)]
)
@pytest.mark.parametrize("channels", [3, 1, None])
def test_extreme_shapes_have_no_face(detectors, name, shape, channels):
    image = np.full(shape if channels is None else (*shape, channels), 128, np.uint8)
    detector = detectors[name]
    assert detector.detect(image) == []
    assert detector.detect(image, thorough=True) == []


@pytest.mark.parametrize("name", ["blazeface", "blazeface-full"])
def test_panorama_is_not_letterboxed_at_full_size(detectors, name):
    # A square letterbox of the full 40x40000 image would take 4.8 GB.
    image = np.full((40, 40000, 3), 128, np.uint8)
    tracemalloc.start()
    faces = detectors[name].detect(image, thorough=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert faces == []
    assert peak < 200 * 2**20
