"""One video or webcam input of ``ferkit predict``, frame by frame.

:func:`predict_video_source` reads every frame of a video file or camera through
:func:`ferkit.inference.video.iter_video_results` (tracking and smoothing included) and
writes one record per face as it comes, with the frame index, timestamp and track id.
What the frames add up to (frames read and with a face, per-track shares of time per
emotion, blinks, smile and head turns where geometry is on, ``partial`` when the stream
ends before the frames it announces) becomes the video's summary entry. With
``annotate``, every frame is also drawn into ``annotated/NAME.webm|mp4``
(:data:`ANNOTATED_VIDEO_FORMATS`), with an emotion-over-time plot beside it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.inference.records import RecordWriter, error_entry, geometry_drawing, unique_name
from ferkit.inference.sources import Source
from ferkit.outputs import path_text

#: Containers of annotated videos and their OpenCV codecs: ``webm`` (VP8, the default:
#: web browsers and desktop players play it) or ``mp4`` (MPEG-4 part 2, which browsers
#: do not play).
ANNOTATED_VIDEO_FORMATS = {"mp4": "mp4v", "webm": "VP80"}


def predict_video_source(
    recognizer: Any,
    source: Source,
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
    progress: bool,
    *,
    annotated_video: str = "webm",
    on_frame: Callable[[str, int, int | None], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Every frame of a video file or camera: records per face, the summary entry, and
    with ``annotate`` the annotated video (``annotated_video`` container) and its
    emotion-over-time plot. The source is opened once (a camera already was, up front)
    and released whatever happens; ``on_frame`` hears of every frame read."""
    from ferkit.inference.video import iter_video_results, open_video
    from ferkit.outputs import progress_bar

    target = source.camera if source.kind == "camera" else source.path
    try:
        opened = source.opened or open_video(target)
    except (FileNotFoundError, ValueError) as error:
        return error_entry(source, str(error).split(": ", 1)[-1], writer)
    capture, info = opened
    tally = _VideoTally(source, recognizer.classes, writer)
    try:
        annotated = (
            _AnnotatedVideo.open(
                source, info, out_dir, used_names, annotated_video, geometry_drawing(annotate)
            )
            if annotate
            else None
        )
    except BaseException:
        capture.release()
        raise
    limits = [n for n in (info.frame_count, options.get("max_frames")) if n is not None]
    expected = min(limits) if limits else None
    bar = progress_bar(total=expected, desc=Path(source.name).name, unit="frame",
               disable=not progress, leave=False)  # fmt: skip
    interrupted = False
    frames = None
    try:
        frames = iter_video_results(
            recognizer, target, keep_frames=annotated is not None, include_skipped=True,
            opened=opened, **options,
        )  # fmt: skip
        for frame in frames:
            bar.update(1)
            tally.add(frame)
            if on_frame is not None:
                on_frame(source.name, tally.frames_read, expected)
            if annotated is not None:
                annotated.write(frame.image, tally.last_faces)
    except KeyboardInterrupt:
        # Ctrl-C ends a webcam session, or the run in the middle of a video: what was
        # seen is kept and said to be partial.
        interrupted = True
    finally:
        bar.close()
        if frames is not None:
            frames.close()  # stops the decoding and detection threads before the release
        capture.release()  # also when the frames never started (released twice is harmless)
        if annotated is not None:
            annotated.close()
    entry = tally.entry(info, interrupted, options.get("max_frames"))
    if annotated is not None:
        entry.update(annotated.finish(tally, recognizer.classes, Path(source.name).name))
    return entry


class _VideoTally:
    """What a video's frames add up to: one record per face (written as they come), and
    per track the times, smoothed probabilities and labels seen."""

    def __init__(self, source: Source, classes: list[str], writer: RecordWriter | None) -> None:
        from ferkit.inference.face_events import ActivityTally

        self.source, self.classes, self.writer = source, classes, writer
        self.activity = ActivityTally()  # blinks, smile, head turns: faces with geometry
        self.times: dict[int, list[float]] = defaultdict(list)
        self.smoothed: dict[int, list[np.ndarray]] = defaultdict(list)
        self.labels: dict[int, Counter] = defaultdict(Counter)
        self.frames_read = self.frames_processed = self.frames_with_face = self.faces = 0
        self.last_faces: list[Any] = []

    def add(self, frame: Any) -> None:
        self.frames_read += 1
        if not frame.processed:
            return
        self.frames_processed += 1
        self.last_faces = frame.faces
        self.frames_with_face += bool(frame.faces)
        for index, face in enumerate(frame.faces, start=1):
            self.faces += 1
            self.times[face.track_id].append(frame.time_s)
            self.smoothed[face.track_id].append(
                np.array([face.probabilities[c] for c in self.classes], np.float32)
            )
            self.labels[face.track_id][face.label] += 1
            if face.geometry is not None:
                self.activity.add(face.track_id, frame.time_s, face.geometry)
            if self.writer is not None:
                self.writer.write(
                    {"source": self.source.name, "kind": self.source.kind, "status": "ok",
                     "frame": frame.index, "time_s": round(frame.time_s, 4), "face": index,
                     **face.as_dict(getattr(self.writer, "digits", 4))}
                )  # fmt: skip

    def shares(self) -> dict[int, dict[str, float]]:
        """Each track's share of time per label."""
        return {
            track: {name: count / sum(counter.values()) for name, count in counter.most_common()}
            for track, counter in self.labels.items()
        }

    def entry(self, info: Any, interrupted: bool, max_frames: int | None) -> dict[str, Any]:
        """The video's summary entry, and its ``partial`` record when its stream ended
        before the frames it announces (or before ``max_frames`` of them), else its
        ``no_face`` record if it had no face."""
        overall = Counter()
        for counter in self.labels.values():
            overall.update(counter)
        entry: dict[str, Any] = {
            "source": self.source.name,
            "kind": self.source.kind,
            "status": "ok" if self.faces else "no_face",
            "frames": self.frames_read,
            "frames_announced": info.frame_count,
            "frames_processed": self.frames_processed,
            "frames_with_face": self.frames_with_face,
            "faces": self.faces,
            "tracks": len(self.labels),
            "fps": info.fps,
            "share_of_time": {
                name: round(count / sum(overall.values()), 4)
                for name, count in overall.most_common()
            },
            "share_of_time_per_track": {
                str(track): {name: round(v, 4) for name, v in share.items()}
                for track, share in self.shares().items()
            },
        }
        if self.activity.samples:  # with geometry: blinks, smile and head turns per track
            entry["geometry_per_track"] = self.activity.summary()
        wanted = min(info.frame_count, max_frames or info.frame_count) if info.frame_count else 0
        if self.frames_read < wanted and not interrupted:
            # Truncated or corrupt: what was read is kept, and the video is not called ok.
            entry["status"] = "partial"
            entry["reason"] = (
                f"stream ended at frame {self.frames_read} of the {info.frame_count} the file "
                "announces (truncated or corrupt); the results cover the frames read"
            )
        if interrupted:
            of = f" of {info.frame_count}" if info.frame_count else ""
            entry["reason"] = f"stopped by Ctrl-C after {self.frames_read}{of} frames"
            entry["interrupted"] = self.source.kind != "camera"  # a webcam ends this way
        if (entry["status"] == "partial" or not self.faces) and self.writer is not None:
            self.writer.write(
                {"source": self.source.name, "kind": self.source.kind,
                 "status": "partial" if entry["status"] == "partial" else "no_face",
                 "reason": entry.get("reason", "")}
            )  # fmt: skip
        return entry


class _AnnotatedVideo:
    """``annotated/NAME.mp4``: every frame with the last faces drawn, and afterwards the
    emotion-over-time plot beside it."""

    def __init__(self, path: Path, writer: Any, drawing: str | None = None) -> None:
        self.path, self.writer, self.drawing = path, writer, drawing

    @classmethod
    def open(
        cls,
        source: Source,
        info: Any,
        out_dir: Path | None,
        used_names: set[str],
        container: str = "mp4",
        drawing: str | None = None,
    ) -> _AnnotatedVideo | None:
        import cv2

        from ferkit.extras import native_stderr_silenced

        if out_dir is None:
            return None
        folder = out_dir / "annotated"
        folder.mkdir(exist_ok=True)
        stem = path_text(source.path.stem) if source.path else f"camera{source.camera}"
        path = unique_name(folder, stem, f".{container}", used_names)
        codec = cv2.VideoWriter_fourcc(*ANNOTATED_VIDEO_FORMATS[container])
        with native_stderr_silenced():  # FFmpeg names the tag it maps the codec to
            writer = cv2.VideoWriter(str(path), codec, info.fps, (info.width, info.height))
        if not writer.isOpened():
            raise ValueError(
                f"this OpenCV build cannot write {container} videos; annotate as "
                f"{'webm' if container == 'mp4' else 'mp4'} instead"
            )
        return cls(path, writer, drawing)

    def write(self, rgb: np.ndarray, faces: list[Any]) -> None:
        import cv2

        from ferkit.inference.annotate import draw_results

        drawn = draw_results(rgb, faces, geometry=self.drawing)
        self.writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()

    def finish(self, tally: _VideoTally, classes: list[str], title: str) -> dict[str, str]:
        from ferkit.extras import has_matplotlib, missing_extra
        from ferkit.inference.annotate import plot_emotions_over_time

        written = {"annotated": f"annotated/{self.path.name}"}
        if not has_matplotlib():  # the video is written; its chart needs the report extra
            written["emotion_plot_skipped"] = str(
                missing_extra("Matplotlib", "report", "the emotion chart")
            )
            return written
        activity = tally.activity.summary() if tally.activity.samples else None
        figure = plot_emotions_over_time(
            tally.times, tally.smoothed, classes, tally.shares(), title, activity
        )
        plot_path = self.path.with_name(self.path.stem + "_emotions.png")
        figure.savefig(plot_path, dpi=100)
        return {**written, "emotion_plot": f"annotated/{plot_path.name}"}
