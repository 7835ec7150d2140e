"""Tracking, smoothing and streaming video prediction."""

import itertools
import math
import tracemalloc

import numpy as np
import pytest
from conftest import require_shared

from ferkit.faces import Face
from ferkit.inference.video import IoUTracker


def _face(x, y, side=50):
    return Face(box=(x, y, side, side), confidence=0.9)


def test_tracker_keeps_ids_while_faces_move_and_new_faces_get_new_ids():
    tracker = IoUTracker(smoothing_s=0)
    probs = np.eye(2)
    ids = [tracker.update([_face(0, 0), _face(200, 0)], probs, 0.0)]
    ids.append(tracker.update([_face(205, 0), _face(5, 2)], probs[::-1], 0.1))  # swapped order
    ids.append(tracker.update([_face(10, 4), _face(400, 400)], probs, 0.2))
    assert [i for i, _ in ids[0]] == [0, 1]
    assert [i for i, _ in ids[1]] == [1, 0]
    assert [i for i, _ in ids[2]] == [0, 2]


def test_tracker_forgets_after_max_missed():
    tracker = IoUTracker(max_missed=2)
    tracker.update([_face(0, 0)], np.ones((1, 2)) / 2, 0.0)
    for step in range(3):
        tracker.update([], np.zeros((0, 2)), 0.1 * (step + 1))
    assert tracker.update([_face(0, 0)], np.ones((1, 2)) / 2, 0.5)[0][0] == 1


def test_smoothing_is_an_exponential_average_in_seconds():
    tracker = IoUTracker(smoothing_s=0.5)
    tracker.update([_face(0, 0)], np.array([[1.0, 0.0]]), 0.0)
    ((_, smoothed),) = tracker.update([_face(0, 0)], np.array([[0.0, 1.0]]), 0.1)
    weight = 1 - math.exp(-0.1 / 0.5)
    assert smoothed == pytest.approx([1 - weight, weight])
    raw = IoUTracker(smoothing_s=0)
    raw.update([_face(0, 0)], np.array([[1.0, 0.0]]), 0.0)
    assert raw.update([_face(0, 0)], np.array([[0.0, 1.0]]), 0.1)[0][1] == pytest.approx([0, 1])


@pytest.fixture(scope="module")
def recognizer():
    from ferkit import EmotionRecognizer

    return EmotionRecognizer()


@pytest.fixture(scope="module")
def woman2(recognizer):
    """woman2.mp4 (464 frames) through predict_video once for this module: the first
    frame taken alone, then the rest streamed under tracemalloc. Returns the frame
    results (without pixels) and the stream's peak traced memory in bytes."""
    video = require_shared("samples", "woman2.mp4")
    stream = recognizer.predict_video(video)
    first = next(stream)  # a generator: the first frame comes before the rest is read
    tracemalloc.start()
    try:
        rest = list(stream)  # small results only: the frames themselves are not kept
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return [first, *rest], peak


@pytest.mark.real_data
@pytest.mark.slow
class TestVideo:
    @pytest.fixture(scope="class")
    def frames(self, woman2):
        return woman2[0]

    def test_one_face_one_track_through_the_clip(self, frames):
        assert len(frames) == 464
        assert [f.index for f in frames] == list(range(464))
        with_one = sum(len(f.faces) == 1 for f in frames)
        assert with_one >= 0.95 * len(frames)
        assert {face.track_id for f in frames for face in f.faces} == {0}
        assert frames[30].time_s == pytest.approx(30 / 29.97, abs=1e-3)

    def test_dataframe_of_frames(self, frames):
        from ferkit import results_to_dataframe

        table = results_to_dataframe(frames[:20])
        assert len(table) == sum(len(f.faces) for f in frames[:20])
        assert {"frame", "time_s", "track_id", "label", "raw_label", "p_happy"} <= set(
            table.columns
        )
        assert table["frame"].tolist() == sorted(table["frame"])

    def test_smoothing_reduces_flicker_and_keeps_raw(self, frames):
        faces = [f.faces[0] for f in frames if f.faces]
        smooth_changes = sum(a.label != b.label for a, b in itertools.pairwise(faces))
        raw_changes = sum(a.raw_label != b.raw_label for a, b in itertools.pairwise(faces))
        assert smooth_changes < raw_changes
        assert all(
            sum(face.raw_probabilities.values()) == pytest.approx(1, abs=1e-4) for face in faces
        )

    def test_streams_lazily_with_flat_memory(self, woman2):
        frames, peak = woman2
        assert frames[0].index == 0 and len(frames) - 1 == 463
        assert all(frame.image is None for frame in frames)  # pixels only when asked
        # Holding the 463 decoded frames would take 463 * 596 * 336 * 3 bytes = 278 MB;
        # the stream held one frame at a time, and its results are small.
        assert peak < 20 * 2**20

    def test_every_and_detect_every(self, recognizer):
        video = require_shared("samples", "woman2.mp4")
        every = list(recognizer.predict_video(video, every=5, max_frames=100))
        assert [f.index for f in every] == list(range(0, 100, 5))
        reused = list(recognizer.predict_video(video, detect_every=4, max_frames=40))
        assert all(len(f.faces) == 1 for f in reused)

    def test_bad_sources_are_clear_errors(self, recognizer, tmp_path):
        broken = tmp_path / "broken.mp4"
        broken.write_bytes(b"not a video at all")
        with pytest.raises(ValueError, match="not a readable video"):
            recognizer.predict_video(broken)
        with pytest.raises(FileNotFoundError, match="no such video"):
            recognizer.predict_video(tmp_path / "missing.mp4")
        with pytest.raises(ValueError, match="camera 9 could not be opened"):
            recognizer.predict_video(9)
