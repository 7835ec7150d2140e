"""Video and webcam: stream frames, track faces across them, smooth labels over time.

Frames are decoded one at a time with OpenCV and results are yielded as they are made,
so memory does not grow with the length of a video. :class:`IoUTracker` gives each face
a track id by matching boxes frame to frame, and smooths each track's probabilities with
an exponential moving average whose time constant is in seconds (so it behaves the same
at 15 or 60 frames/s) — labels stop flickering while the raw values stay available.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.faces import Face, iou_matrix
from ferkit.images import VIDEO_EXTENSIONS  # noqa: F401  (ferkit.inference.video.VIDEO_EXTENSIONS)
from ferkit.inference.results import FaceResult


@dataclass
class FrameResult:
    """What one processed video frame shows."""

    index: int  # frame number in the video, from 0
    time_s: float  # timestamp from the frame rate (camera: seconds since start)
    faces: list[Any]  # FaceResult, with track_id and raw values set
    image: np.ndarray | None = field(default=None, repr=False)  # the RGB frame
    processed: bool = True  # False for frames skipped by ``every`` (faces is empty)


@dataclass
class VideoInfo:
    fps: float
    frame_count: int | None  # None for a camera or when the container does not say
    width: int
    height: int


@dataclass
class _Track:
    track_id: int
    box: tuple[int, int, int, int]
    face: Face
    probabilities: np.ndarray
    last_time: float
    missed: int = 0


class IoUTracker:
    """Greedy IoU matching of faces between frames, with time-based smoothing.

    Args:
        min_iou: a detection continues a track when their boxes overlap at least this.
        max_missed: a track is dropped after this many processed frames without a match.
        smoothing_s: time constant of the exponential moving average of probabilities;
            0 turns smoothing off.
    """

    def __init__(self, min_iou: float = 0.3, max_missed: int = 15, smoothing_s: float = 0.5):
        self.min_iou = min_iou
        self.max_missed = max_missed
        self.smoothing_s = smoothing_s
        self.tracks: list[_Track] = []
        self._next_id = 1  # faces are numbered from 1 everywhere (records, images, page)

    def update(
        self, faces: list[Face], probabilities: np.ndarray, time_s: float
    ) -> list[tuple[int, np.ndarray]]:
        """Match this frame's faces to tracks.

        Returns:
            ``(track_id, smoothed_probabilities)`` for each face, in the order given.
        """
        assignment: dict[int, _Track] = {}
        if faces and self.tracks:
            boxes = np.array([_corners(face.box) for face in faces], dtype=np.float64)
            track_boxes = np.array([_corners(track.box) for track in self.tracks])
            overlaps = iou_matrix(boxes, track_boxes)
            pairs = sorted(np.argwhere(overlaps >= self.min_iou), key=lambda p: -overlaps[tuple(p)])
            used_tracks: set[int] = set()
            for face_index, track_index in pairs:
                if face_index in assignment or track_index in used_tracks:
                    continue
                assignment[int(face_index)] = self.tracks[track_index]
                used_tracks.add(int(track_index))
        results = []
        matched = set()
        for index, (face, row) in enumerate(zip(faces, probabilities, strict=True)):
            track = assignment.get(index)
            if track is None:
                track = _Track(self._next_id, face.box, face, row.copy(), time_s)
                self._next_id += 1
                self.tracks.append(track)
            else:
                weight = self._weight(time_s - track.last_time)
                track.probabilities = weight * row + (1.0 - weight) * track.probabilities
                track.box, track.face, track.last_time, track.missed = face.box, face, time_s, 0
            matched.add(track.track_id)
            results.append((track.track_id, track.probabilities.copy()))
        for track in self.tracks:
            if track.track_id not in matched:
                track.missed += 1
        self.tracks = [track for track in self.tracks if track.missed <= self.max_missed]
        return results

    def _weight(self, elapsed_s: float) -> float:
        if self.smoothing_s <= 0:
            return 1.0
        return 1.0 - math.exp(-max(elapsed_s, 0.0) / self.smoothing_s)

    def current_faces(self) -> list[Face]:
        """The faces of tracks seen on the last processed frame (to skip detection)."""
        return [track.face for track in self.tracks if track.missed == 0]


def _corners(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    x, y, w, h = box
    return (x, y, x + w, y + h)


def _capture_file(cv2: Any, path: Path) -> Any:
    """``cv2.VideoCapture`` of a file, also when its name is not valid UTF-8 (which
    OpenCV cannot take: it is opened through a temporary link with a plain name)."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ferkit-video-") as folder:
            link = Path(folder) / f"video{path.suffix.encode('ascii', 'ignore').decode()}"
            try:
                link.symlink_to(path.resolve())
            except OSError:
                raise ValueError(
                    f"{path}: the file name is not valid UTF-8, which OpenCV cannot open; "
                    "rename the file"
                ) from None
            return cv2.VideoCapture(str(link))  # the open file outlives the link
    return cv2.VideoCapture(str(path))


def open_video(source: str | os.PathLike[str] | int) -> tuple[Any, VideoInfo]:
    """Open a video file or camera index with OpenCV.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: OpenCV cannot read it as a video, or the camera cannot be opened.
    """
    import cv2

    if isinstance(source, int):
        if source < 0:
            raise ValueError(f"camera index must be 0 or more (0 is the first), not {source}")
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise ValueError(
                f"camera {source} could not be opened: no such device, or it is in use; "
                "check the index (0 is the first camera) and that no other program holds it"
            )
        fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        frame_count = None
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such video file")
        capture = _capture_file(cv2, path)
        ok = capture.isOpened() and capture.get(cv2.CAP_PROP_FRAME_WIDTH) > 0
        if not ok:
            capture.release()
            raise ValueError(
                f"{path}: not a readable video (corrupt, or a codec OpenCV's FFmpeg lacks); "
                "re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4"
            )
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        frame_count = count if count > 0 else None
    info = VideoInfo(
        fps=float(fps) if fps and fps > 0 else 30.0,
        frame_count=frame_count,
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    return capture, info


def iter_frames(
    capture: Any, info: VideoInfo, *, live: bool = False, max_frames: int | None = None
) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(index, time_s, rgb_frame)`` for every frame of an opened capture, decoded one
    at a time; the capture is released at the end. ``live`` (a camera) stamps frames with
    the seconds since the first, a file with ``index / fps``."""
    import time

    import cv2

    start = time.monotonic()
    try:
        index = 0
        while max_frames is None or index < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            time_s = time.monotonic() - start if live else index / info.fps
            yield index, time_s, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


#: ``detect_every="auto"``: once two detections in a row find the same faces (each box
#: overlapping its match by at least :data:`AUTO_MIN_IOU`) and every face's label leads
#: the runner-up by at least :data:`SETTLED_MARGIN` (smoothed probabilities), the boxes
#: are reused for :data:`AUTO_REUSE` frame(s) before the next detection; faces that move,
#: appear or vanish, and labels near a tie, bring detection back on every frame. On the
#: sample videos it keeps the labels of detection on every frame on 100% of the frames of
#: woman2.mp4 and test.mp4.
AUTO_REUSE = 1
AUTO_MIN_IOU = 0.7
SETTLED_MARGIN = 0.4
AUTO_LAG = 3


def check_detect_every(detect_every: int | str) -> None:
    """Refuse a ``detect_every`` that is neither ``"auto"`` nor a whole number >= 1."""
    if detect_every == "auto":
        return
    if isinstance(detect_every, bool) or not isinstance(detect_every, int) or detect_every < 1:
        raise ValueError(f"detect_every must be 'auto' or at least 1, not {detect_every!r}")


class DetectionPlan:
    """Which processed frames run the detector: every N-th (``detect_every=N``), or
    ``auto`` (see :data:`AUTO_REUSE`).

    The detector runs ahead of classification, on another thread, so ``auto`` decides
    on the labels of the frame :data:`AUTO_LAG` processed frames back (the caller
    reports each with :meth:`classified`), waiting for it if need be: the decisions, and
    so the results, do not depend on how the threads happen to run.
    """

    def __init__(self, detect_every: int | str) -> None:
        import threading

        check_detect_every(detect_every)
        self.detect_every = detect_every
        self.frames = 0
        self.reused = 0
        self.previous: np.ndarray | None = None
        self.stable = False
        self._settled: dict[int, bool] = {}
        self._classified = 0
        self._closed = False
        self._condition = threading.Condition()

    def wants_detection(self) -> bool:
        """Whether the next processed frame runs the detector (then call :meth:`seen`)."""
        frame, self.frames = self.frames, self.frames + 1
        if self.detect_every != "auto":
            return frame % self.detect_every == 0
        settled = self._settled_at(frame - AUTO_LAG)
        if self.stable and settled and self.reused < AUTO_REUSE:
            self.reused += 1
            return False
        self.reused = 0
        return True

    def seen(self, faces: list[Face]) -> None:
        """The faces the detector found on the frame it was asked for."""
        boxes = np.array([_corners(face.box) for face in faces], dtype=np.float64).reshape(-1, 4)
        previous, self.previous = self.previous, boxes
        self.stable = False
        if previous is None or len(boxes) == 0 or len(boxes) != len(previous):
            return
        overlaps = iou_matrix(boxes, previous)
        self.stable = bool((overlaps.max(axis=1) >= AUTO_MIN_IOU).all()) and bool(
            (overlaps.max(axis=0) >= AUTO_MIN_IOU).all()
        )

    def classified(self, faces: list[FaceResult]) -> None:
        """Report the next processed frame's results (in order)."""
        if self.detect_every != "auto":
            return
        settled = all(_margin(face) >= SETTLED_MARGIN for face in faces)
        with self._condition:
            self._settled[self._classified] = settled
            self._classified += 1
            self._condition.notify_all()

    def close(self) -> None:
        """Release a detector thread waiting for a report that will not come."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def _settled_at(self, frame: int) -> bool:
        if frame < 0:
            return False
        with self._condition:
            self._condition.wait_for(lambda: self._classified > frame or self._closed)
            return self._settled.pop(frame, False)


def _margin(face: FaceResult) -> float:
    """How far a face's label leads the runner-up (smoothed probabilities)."""
    top = sorted(face.probabilities.values(), reverse=True)
    return top[0] - top[1] if len(top) > 1 else 1.0


def prefetch(items: Iterator[Any], depth: int = 4, name: str = "ferkit-prefetch") -> Iterator[Any]:
    """The items of ``items``, produced on a thread of their own up to ``depth`` ahead of
    the caller (worth it where the producer releases the GIL: OpenCV, LiteRT, ONNX
    Runtime). Errors of the thread are raised here; closing this generator stops the
    thread and closes ``items``."""
    import queue
    import threading

    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    break
            put(done)
        except BaseException as error:  # handed to the caller, raised there
            put(error)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _detected(
    frames: Iterator[tuple[int, float, np.ndarray]],
    detector: Any,
    every: int,
    plan: DetectionPlan,
) -> Iterator[tuple[int, float, np.ndarray, list[Face] | None]]:
    """``(index, time_s, rgb, faces)`` for each frame, ``faces`` None where the plan
    reuses the tracked boxes or ``every`` skips the frame."""
    try:
        for index, time_s, rgb in frames:
            faces = None
            if index % every == 0 and plan.wants_detection():
                faces = detector.detect(rgb)
                plan.seen(faces)
            yield index, time_s, rgb, faces
    finally:
        frames.close()


def _ahead(
    frames: Iterator[tuple[int, float, np.ndarray]],
    detector: Any,
    every: int,
    plan: DetectionPlan,
) -> Iterator[tuple[int, float, np.ndarray, list[Face] | None]]:
    """Decoding on one thread and detection on another, ahead of the caller, which
    classifies: the three overlap, since OpenCV, LiteRT and ONNX Runtime release the GIL."""
    decoded = prefetch(frames, name="ferkit-video-decode")
    return prefetch(_detected(decoded, detector, every, plan), name="ferkit-video-detect")


def iter_video_results(
    recognizer: Any,
    source: str | os.PathLike[str] | int,
    *,
    every: int = 1,
    detect_every: int | str = "auto",
    smoothing_s: float = 0.5,
    max_frames: int | None = None,
    keep_frames: bool = False,
    include_skipped: bool = False,
    opened: tuple[Any, VideoInfo] | None = None,
) -> Iterator[FrameResult]:
    """The generator behind :meth:`ferkit.EmotionRecognizer.predict_video`.

    The source is opened here, before the first ``next()``, so a bad one fails at the
    call; ``opened`` hands over a capture already opened with :func:`open_video` (a
    camera is then opened once). ``keep_frames`` attaches each RGB frame;
    ``include_skipped`` also yields the frames that ``every`` skips
    (``processed=False``), for writers that need every frame.
    """
    if every < 1:
        raise ValueError(f"every must be at least 1, not {every}")
    check_detect_every(detect_every)
    if not math.isfinite(smoothing_s) or smoothing_s < 0:
        raise ValueError(f"smoothing_s must be a number of seconds, 0 or more, not {smoothing_s}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, not {max_frames}")
    capture, info = opened or open_video(source)
    frames = iter_frames(capture, info, live=isinstance(source, int), max_frames=max_frames)
    return _generate_results(
        recognizer, frames, every, detect_every, smoothing_s, keep_frames, include_skipped
    )


class FrameStream:
    """Faces of consecutive frames of one stream (a video, a camera, a browser's camera
    over a socket): detection, classification, tracking and smoothing, frame by frame.

    The stream holds the tracks; the recogniser that detects and classifies is passed
    to each :meth:`process` call, so that a server can lend a stream whichever of its
    recognisers is free.

    Args:
        detect_every: run the detector on every N-th frame and reuse the tracked boxes in
            between.
        smoothing_s: time constant of the smoothing of each track's probabilities.
        geometry: whether faces get their geometry (default: when the recogniser
            computes it).
        geometry_thread: compute the geometry of each frame's faces on a thread of its
            own while the same faces are classified (ONNX Runtime releases the GIL as it
            classifies), rather than after; :meth:`close` ends the thread. For a video's
            frames, where a core may be free for it; a server's streams share its cores.
    """

    def __init__(
        self,
        *,
        detect_every: int = 1,
        smoothing_s: float = 0.5,
        geometry: bool | None = None,
        geometry_thread: bool = False,
    ) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be at least 1, not {detect_every}")
        if not math.isfinite(smoothing_s) or smoothing_s < 0:
            raise ValueError(
                f"smoothing_s must be a number of seconds, 0 or more, not {smoothing_s}"
            )
        self.detect_every = detect_every
        self.tracker = IoUTracker(smoothing_s=smoothing_s)
        self.frames = 0
        self.geometry = geometry
        self.geometry_thread = geometry_thread
        self._worker: Any = None  # the geometry thread, made when first needed

    def process(
        self,
        recognizer: Any,
        rgb: np.ndarray,
        time_s: float,
        detected: list[Face] | None = None,
        reuse: bool | None = None,
    ) -> list[FaceResult]:
        """The faces of the next frame (RGB ``uint8``) taken at ``time_s`` seconds, found
        and classified by ``recognizer`` (an :class:`~ferkit.inference.recognizer.
        EmotionRecognizer`), with track ids, smoothed probabilities and the frame's raw
        ones. ``detected``: the frame's faces when the caller ran the detector already;
        ``reuse``: whether to take the tracked boxes instead (default: the stream's
        ``detect_every``)."""
        if reuse is None:
            reuse = detected is None and self.frames % self.detect_every != 0
        if detected is None and not reuse:
            detected = recognizer.detector.detect(rgb)
        faces = self.tracker.current_faces() if reuse else detected
        wanted = getattr(recognizer, "geometry", False) if self.geometry is None else self.geometry
        pending = None
        if wanted and faces and self.geometry_thread:
            if self._worker is None:
                from concurrent.futures import ThreadPoolExecutor

                self._worker = ThreadPoolExecutor(1, thread_name_prefix="ferkit-geometry")
            pending = self._worker.submit(recognizer.face_geometry, rgb, faces, True)
        try:
            faces, crops = recognizer.crop_faces(rgb, faces)
            model = getattr(recognizer, "frame_model", recognizer.model)
            raw = model.predict_proba(crops, batch_size=max(1, len(crops)))
        finally:
            geometries = pending.result() if pending is not None else None
        tracked = self.tracker.update(faces, raw, time_s)
        self.frames += 1
        if geometries is None:
            geometries = (
                recognizer.face_geometry(rgb, faces, geometry=True)
                if wanted
                else [None] * len(faces)
            )
        return [
            FaceResult.of(
                face, recognizer.classes, row, raw=raw_row, track_id=track_id, geometry=geometry
            )
            for face, raw_row, (track_id, row), geometry in zip(
                faces, raw, tracked, geometries, strict=True
            )
        ]

    def close(self) -> None:
        """End the geometry thread, if one was started."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None


def _generate_results(
    recognizer: Any,
    frames: Iterator[tuple[int, float, np.ndarray]],
    every: int,
    detect_every: int | str,
    smoothing_s: float,
    keep_frames: bool,
    include_skipped: bool,
) -> Iterator[FrameResult]:
    stream = FrameStream(smoothing_s=smoothing_s, geometry_thread=True)
    plan = DetectionPlan(detect_every)
    ahead = _ahead(frames, recognizer.detector, every, plan)
    try:
        for index, time_s, rgb, detected in ahead:
            if index % every:
                if include_skipped:
                    yield FrameResult(index, time_s, [], rgb if keep_frames else None, False)
                continue
            results = stream.process(
                recognizer, rgb, time_s, detected=detected, reuse=detected is None
            )
            plan.classified(results)
            yield FrameResult(index, time_s, results, rgb if keep_frames else None)
    finally:
        plan.close()
        ahead.close()
        stream.close()
