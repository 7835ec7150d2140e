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
    assert [i for i, _ in ids[0]] == [1, 2]  # numbered from 1, as everywhere
    assert [i for i, _ in ids[1]] == [2, 1]
    assert [i for i, _ in ids[2]] == [1, 3]


def test_tracker_forgets_after_max_missed():
    tracker = IoUTracker(max_missed=2)
    tracker.update([_face(0, 0)], np.ones((1, 2)) / 2, 0.0)
    for step in range(3):
        tracker.update([], np.zeros((0, 2)), 0.1 * (step + 1))
    assert tracker.update([_face(0, 0)], np.ones((1, 2)) / 2, 0.5)[0][0] == 2


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
        assert {face.track_id for f in frames for face in f.faces} == {1}
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


# -- the pipelined reader and the detection plan -------------------------------------


def test_prefetch_yields_in_order_raises_the_threads_error_and_stops_when_closed():
    from ferkit.inference.video import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("the disk went away")

    reader = prefetch(broken())
    assert next(reader) == 1
    with pytest.raises(OSError, match="the disk went away"):
        next(reader)

    closed = []

    def endless():
        try:
            yield from itertools.count()
        finally:
            closed.append(True)

    reader = prefetch(endless(), depth=2)
    assert next(reader) == 0
    reader.close()  # the thread stops and closes the source
    assert closed == [True]


def test_detection_plan_every_n_and_auto():
    from ferkit.inference.video import AUTO_LAG, DetectionPlan, check_detect_every

    plan = DetectionPlan(3)
    assert [plan.wants_detection() for _ in range(7)] == [1, 0, 0, 1, 0, 0, 1]
    for bad in (0, -1, "sometimes", 1.5, True):
        with pytest.raises(ValueError, match="detect_every"):
            check_detect_every(bad)

    from ferkit.inference.results import FaceResult

    def result(p_top):
        probabilities = {"happy": p_top, "sad": 1 - p_top}
        return FaceResult(box=(0, 0, 50, 50), detector_confidence=0.9, label="happy",
                          probabilities=probabilities)  # fmt: skip

    auto = DetectionPlan("auto")
    decisions = []
    for frame in range(12):
        detect = auto.wants_detection()
        decisions.append(detect)
        if detect:
            auto.seen([_face(100 + frame, 100)])  # moving by a pixel: stable
        auto.classified([result(0.9 if frame < 6 else 0.55)])  # clear, then near a tie
    # detection on the first frames, then every other frame while the label is clear
    # (known AUTO_LAG frames later), then on every frame again once it is near a tie
    assert decisions[:2] == [True, True]
    assert False in decisions[: 6 + AUTO_LAG]
    assert all(decisions[6 + AUTO_LAG :])

    moving = DetectionPlan("auto")
    for frame in range(10):
        assert moving.wants_detection()
        moving.seen([_face(100 + 40 * frame, 100)])  # moves by most of its size
        moving.classified([result(0.99)])


@pytest.mark.real_data
@pytest.mark.slow
def test_auto_detection_keeps_the_labels_of_detection_on_every_frame(recognizer):
    """On a real video ``detect_every="auto"`` skips detection on some frames, gives the
    same labels as detection on every frame on at least 98% of frames, and the same
    results on every run (the detector thread's timing does not matter)."""
    calls = {"n": 0}
    detect = recognizer.detector.detect

    def counted(*args, **kwargs):
        calls["n"] += 1
        return detect(*args, **kwargs)

    video = require_shared("samples", "woman2.mp4")
    every = [
        [f.label for f in frame.faces] for frame in recognizer.predict_video(video, detect_every=1)
    ]
    recognizer.detector.detect = counted
    try:
        runs = [
            [
                [(f.label, f.probabilities) for f in frame.faces]
                for frame in recognizer.predict_video(video)
            ]
            for _ in range(2)
        ]
    finally:
        recognizer.detector.detect = detect
    assert runs[0] == runs[1]
    labels = [[label for label, _ in frame] for frame in runs[0]]
    agreement = np.mean([a == b for a, b in zip(labels, every, strict=True)])
    assert agreement >= 0.98
    runs_frames = 2 * len(every)
    assert calls["n"] < 0.95 * runs_frames, "auto detected on (nearly) every frame"


def test_detection_plan_waits_for_the_lagged_frame_and_close_releases_it():
    import threading

    from ferkit.inference.video import AUTO_LAG, DetectionPlan

    plan = DetectionPlan("auto")
    for _ in range(AUTO_LAG):
        assert plan.wants_detection()  # nothing to wait for yet
    answers: list[bool] = []
    waiting = threading.Thread(target=lambda: answers.append(plan.wants_detection()))
    waiting.start()
    waiting.join(timeout=0.3)
    assert waiting.is_alive(), "it should wait for the first frame's labels"
    plan.close()  # the consumer went away
    waiting.join(timeout=5)
    assert not waiting.is_alive() and answers == [True]
