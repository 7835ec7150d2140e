"""``ferkit predict``: recognise expressions in files, folders, globs, videos and a webcam.

:func:`predict` expands the inputs, runs an :class:`~ferkit.recognize.EmotionRecognizer`
over each, and streams one record per face into ``predictions.csv|json|jsonl`` (video
records carry the frame index, timestamp and track id, and both smoothed and raw
probabilities). Every input also gets a status: ``ok``, ``no_face`` (an image without a
face: an empty result, not an error), ``error`` (with the reason: unreadable, not an
image or video, missing) or ``skipped``. Those rows go into the same file, and
``summary.json`` repeats them with per-video shares of time per emotion, so a batch never
loses work on one bad file. ``--annotate`` writes images and videos with boxes, labels
and probability bars, and an emotion-over-time plot per video.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ferkit.images import IMAGE_EXTENSIONS, ImageReadError, read_image
from ferkit.video import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("csv", "json", "jsonl")


@dataclass
class Source:
    """One input to predict on: a file (image or video), a camera, or a bad input."""

    name: str  # as shown in the output
    kind: str  # image, video, camera, unknown
    path: Path | None = None
    camera: int | None = None
    error: str | None = None  # set when the input is already known to be unusable
    opened: Any = None  # a camera's (capture, info), opened once up front


def expand_inputs(inputs: list[str]) -> list[Source]:
    """Files, folders (recursive, sorted, hidden files ignored) and globs, in order.

    Inputs that do not exist, globs that match nothing and files that are neither image
    nor video (by extension, or by content when the extension is unknown) are returned
    with ``error`` set rather than raised, so they end up in the output.
    """
    sources: list[Source] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                sources.append(Source(given, "unknown", path, error="folder holds no files"))
            sources.extend(_file_source(p) for p in files)
        elif path.is_file():
            sources.append(_file_source(path))
        elif any(char in given for char in "*?["):
            matches = sorted(glob.glob(given, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            if not files:
                sources.append(Source(given, "unknown", error="the pattern matched no file"))
            sources.extend(_file_source(p) for p in files)
        else:
            sources.append(Source(given, "unknown", path, error="no such file or folder"))
    return sources


def _file_source(path: Path) -> Source:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return Source(str(path), "image", path)
    if suffix in VIDEO_EXTENSIONS:
        return Source(str(path), "video", path)
    return Source(str(path), "unknown", path)


@dataclass
class PredictSummary:
    """What a prediction run did; also written to ``summary.json``."""

    out: Path | None
    sources: list[dict[str, Any]] = field(default_factory=list)
    faces: int = 0
    frames: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return dict(Counter(source["status"] for source in self.sources))


class RecordWriter:
    """Streams records to CSV, a JSON array or JSON lines, so memory stays flat."""

    def __init__(self, path: Path, fmt: str, columns: list[str]) -> None:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, not {fmt!r}")
        self.fmt = fmt
        self.handle: TextIO = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.count = 0
        if fmt == "csv":
            self._csv = csv.DictWriter(self.handle, fieldnames=columns, restval="")
            self._csv.writeheader()
        elif fmt == "json":
            self.handle.write("[\n")

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "csv":
            self._csv.writerow(record)
        else:
            text = json.dumps(record)
            if self.fmt == "json":
                text = ("" if self.count == 0 else ",\n") + text
            else:
                text += "\n"
            self.handle.write(text)
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            self.handle.write("\n]\n")
        self.handle.close()


def record_columns(classes: list[str]) -> list[str]:
    """The columns of a prediction record, in order."""
    return [
        "source",
        "kind",
        "status",
        "reason",
        "frame",
        "time_s",
        "face",
        "track_id",
        "x",
        "y",
        "width",
        "height",
        "detector_confidence",
        "label",
        *[f"p_{name}" for name in classes],
        "raw_label",
        *[f"raw_p_{name}" for name in classes],
    ]


def _unique_name(folder: Path, stem: str, suffix: str, used: set[str]) -> Path:
    name, counter = f"{stem}{suffix}", 2
    while name in used:
        name, counter = f"{stem}_{counter}{suffix}", counter + 1
    used.add(name)
    return folder / name


def predict(
    inputs: list[str],
    out: str | os.PathLike[str] | None = "results/predictions",
    *,
    fmt: str = "csv",
    annotate: bool = False,
    camera: int | None = None,
    model: str | os.PathLike[str] | None = None,
    detector: str | None = None,
    backend: str = "auto",
    every: int = 1,
    detect_every: int = 1,
    smoothing_s: float = 0.5,
    max_frames: int | None = None,
    recognizer: Any = None,
    progress: bool = True,
    echo: Any = None,
) -> PredictSummary:
    """Run recognition over inputs and write the records.

    Args:
        inputs: image/video files, folders, globs.
        out: output folder (``predictions.<fmt>``, ``summary.json``, ``annotated/``).
        camera: also read this webcam index until ``max_frames`` or Ctrl-C.
        recognizer: an existing :class:`EmotionRecognizer` (else one is built from
            ``model``, ``detector`` and ``backend``).
        echo: callable that receives one human-readable line per input (``print``).

    Raises:
        ValueError: the camera cannot be opened, or there is nothing to do.
    """
    from tqdm import tqdm

    from ferkit.recognize import EmotionRecognizer
    from ferkit.video import open_video

    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, not {fmt!r}")
    sources = expand_inputs(list(inputs))
    if camera is not None:
        # Opened now so that a missing camera is an error before any work, and kept open.
        opened = open_video(camera)
        sources.append(Source(f"camera:{camera}", "camera", camera=camera, opened=opened))
    if not sources:
        raise ValueError("nothing to predict on: give image/video files, folders or --camera N")
    if recognizer is None:
        kwargs = {"detector": detector} if detector else {}
        recognizer = EmotionRecognizer(model, backend=backend, **kwargs)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    writer = (
        RecordWriter(out_dir / f"predictions.{fmt}", fmt, record_columns(recognizer.classes))
        if out_dir
        else None
    )
    summary = PredictSummary(out=out_dir)
    used_names: set[str] = set()
    echo = echo or (lambda line: None)
    started = time.perf_counter()
    try:
        bar = tqdm(sources, desc="predict", unit="input", disable=not progress or len(sources) < 2)
        for source in bar:
            if source.kind in ("video", "camera"):
                entry = _predict_video(
                    recognizer, source, writer, out_dir, annotate, used_names, progress,
                    every=every, detect_every=detect_every, smoothing_s=smoothing_s,
                    max_frames=max_frames,
                )  # fmt: skip
                summary.frames += entry.get("frames", 0)
            else:
                entry = _predict_image(recognizer, source, writer, out_dir, annotate, used_names)
            summary.faces += entry.get("faces", 0)
            summary.sources.append(entry)
            echo(describe(entry))
    finally:
        if writer is not None:
            writer.close()
        summary.seconds = time.perf_counter() - started
        if out_dir is not None:
            (out_dir / "summary.json").write_text(
                json.dumps(
                    {
                        "model": str(recognizer.model.source),
                        "detector": recognizer.detector.name,
                        "classes": recognizer.classes,
                        "counts": summary.counts(),
                        "faces": summary.faces,
                        "frames": summary.frames,
                        "seconds": round(summary.seconds, 3),
                        "sources": summary.sources,
                    },
                    indent=2,
                )
                + "\n"
            )
    return summary


def _error_entry(source: Source, reason: str, writer: RecordWriter | None, status: str = "error"):
    if writer is not None:
        writer.write(
            {"source": source.name, "kind": source.kind, "status": status, "reason": reason}
        )
    return {"source": source.name, "kind": source.kind, "status": status, "reason": reason}


def _predict_image(
    recognizer: Any,
    source: Source,
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool,
    used_names: set[str],
) -> dict[str, Any]:
    from PIL import Image

    from ferkit.annotate import draw_results

    if source.error:
        return _error_entry(source, source.error, writer)
    try:
        rgb = read_image(source.path, color=True)
    except ImageReadError as error:
        reason = error.reason
        if source.kind == "unknown":
            reason = f"not an image or video ({error.reason})"
        return _error_entry(source, reason, writer)
    except OSError as error:
        return _error_entry(source, f"unreadable: {error.strerror or error}", writer)
    source.kind = "image"
    faces = recognizer.predict(rgb)
    if writer is not None:
        if not faces:
            writer.write({"source": source.name, "kind": "image", "status": "no_face"})
        for index, face in enumerate(faces):
            writer.write(
                {
                    "source": source.name,
                    "kind": "image",
                    "status": "ok",
                    "face": index,
                    **face.as_dict(),
                }
            )
    entry: dict[str, Any] = {
        "source": source.name,
        "kind": "image",
        "status": "ok" if faces else "no_face",
        "faces": len(faces),
        "labels": [face.label for face in faces],
        "confidence": [round(face.probabilities[face.label], 4) for face in faces],
    }
    if annotate and out_dir is not None:
        folder = out_dir / "annotated"
        folder.mkdir(exist_ok=True)
        suffix = ".jpg" if source.path.suffix.lower() in (".jpg", ".jpeg") else ".png"
        target = _unique_name(folder, source.path.stem, suffix, used_names)
        Image.fromarray(draw_results(rgb, faces)).save(target, quality=92)
        entry["annotated"] = str(target)
    return entry


def _predict_video(
    recognizer: Any,
    source: Source,
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool,
    used_names: set[str],
    progress: bool,
    **options: Any,
) -> dict[str, Any]:
    import cv2
    from tqdm import tqdm

    from ferkit.annotate import draw_results, plot_emotions_over_time
    from ferkit.video import iter_video_results, open_video

    target = source.camera if source.kind == "camera" else source.path
    try:
        opened = source.opened or open_video(target)
    except (FileNotFoundError, ValueError) as error:
        return _error_entry(source, str(error).split(": ", 1)[-1], writer)
    info = opened[1]
    video_writer, annotated_path = None, None
    if annotate and out_dir is not None:
        folder = out_dir / "annotated"
        folder.mkdir(exist_ok=True)
        stem = source.path.stem if source.path else f"camera{source.camera}"
        annotated_path = _unique_name(folder, stem, ".mp4", used_names)
        video_writer = cv2.VideoWriter(
            str(annotated_path),
            cv2.VideoWriter_fourcc(*"mp4v"),
            info.fps,
            (info.width, info.height),
        )
    times: dict[int, list[float]] = defaultdict(list)
    smoothed: dict[int, list[np.ndarray]] = defaultdict(list)
    labels: dict[int, Counter] = defaultdict(Counter)
    frames_read = frames_processed = frames_with_face = faces_total = 0
    last_faces: list[Any] = []
    bar = tqdm(
        total=info.frame_count if options.get("max_frames") is None else options["max_frames"],
        desc=Path(source.name).name,
        unit="frame",
        disable=not progress,
        leave=False,
    )
    interrupted = False
    try:
        results = iter_video_results(
            recognizer,
            target,
            keep_frames=video_writer is not None,
            include_skipped=True,
            **options,
        )
        for frame in results:
            frames_read += 1
            bar.update(1)
            if frame.processed:
                frames_processed += 1
                last_faces = frame.faces
                frames_with_face += bool(frame.faces)
                for index, face in enumerate(frame.faces):
                    faces_total += 1
                    times[face.track_id].append(frame.time_s)
                    smoothed[face.track_id].append(
                        np.array([face.probabilities[c] for c in recognizer.classes], np.float32)
                    )
                    labels[face.track_id][face.label] += 1
                    if writer is not None:
                        writer.write(
                            {
                                "source": source.name,
                                "kind": source.kind,
                                "status": "ok",
                                "frame": frame.index,
                                "time_s": round(frame.time_s, 4),
                                "face": index,
                                **face.as_dict(),
                            }
                        )
            if video_writer is not None:
                drawn = draw_results(frame.image, last_faces)
                video_writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    except KeyboardInterrupt:
        if source.kind != "camera":
            raise
        interrupted = True  # Ctrl-C ends a webcam session; what was seen is kept
    finally:
        bar.close()
        if video_writer is not None:
            video_writer.release()
    shares = {
        track: {name: count / sum(counter.values()) for name, count in counter.most_common()}
        for track, counter in labels.items()
    }
    overall = Counter()
    for counter in labels.values():
        overall.update(counter)
    entry: dict[str, Any] = {
        "source": source.name,
        "kind": source.kind,
        "status": "ok" if faces_total else "no_face",
        "frames": frames_read,
        "frames_processed": frames_processed,
        "frames_with_face": frames_with_face,
        "faces": faces_total,
        "tracks": len(labels),
        "fps": info.fps,
        "share_of_time": {
            name: round(count / sum(overall.values()), 4) for name, count in overall.most_common()
        },
        "share_of_time_per_track": {
            str(track): {name: round(v, 4) for name, v in share.items()}
            for track, share in shares.items()
        },
    }
    if (
        info.frame_count is not None
        and frames_read < info.frame_count
        and not options.get("max_frames")
    ):
        entry["reason"] = (
            f"stream ended at frame {frames_read} of the {info.frame_count} the file announces "
            "(truncated or corrupt frames)"
        )
    if interrupted:
        entry["reason"] = "stopped by Ctrl-C"
    if not faces_total and writer is not None:
        writer.write(
            {
                "source": source.name,
                "kind": source.kind,
                "status": "no_face",
                "reason": entry.get("reason", ""),
            }
        )
    if annotated_path is not None:
        entry["annotated"] = str(annotated_path)
        figure = plot_emotions_over_time(
            times, smoothed, recognizer.classes, shares, Path(source.name).name
        )
        plot_path = annotated_path.with_name(annotated_path.stem + "_emotions.png")
        figure.savefig(plot_path, dpi=100)
        import matplotlib.pyplot as plt

        plt.close(figure)
        entry["emotion_plot"] = str(plot_path)
    return entry


def describe(entry: dict[str, Any]) -> str:
    """One readable line about an input's outcome."""
    name = entry["source"]
    if entry["status"] in ("error", "skipped"):
        return f"{name}: {entry['status'].upper()} {entry.get('reason', '')}"
    if entry["kind"] == "image":
        if not entry["faces"]:
            return f"{name}: no face"
        found = ", ".join(
            f"{label} ({p:.0%})"
            for label, p in zip(entry["labels"], entry["confidence"], strict=True)
        )
        return f"{name}: {entry['faces']} face{'s' * (entry['faces'] > 1)}: {found}"
    shares = ", ".join(f"{label} {share:.0%}" for label, share in entry["share_of_time"].items())
    line = (
        f"{name}: {entry['frames']} frames, face on {entry['frames_with_face']}, "
        f"{entry['tracks']} track{'s' * (entry['tracks'] != 1)}; time per emotion: {shares or 'n/a'}"
    )
    return line + (f" [{entry['reason']}]" if entry.get("reason") else "")
