"""What ``ferkit predict`` writes and reports: its records, its summary and its exit status.

Each face becomes one record (:func:`record_columns` names the columns; :func:`image_records`
makes an image's), streamed by :class:`RecordWriter` into ``predictions.csv|json|jsonl``
so memory stays flat; an image without a face gets one ``no_face`` row, and an input that
failed or was skipped one row with its reason (:func:`error_entry`). :class:`PredictSummary`
gathers every input's summary entry and gives the run's exit status, and
:func:`write_summary` writes it as ``summary.json``; :func:`describe` is the line printed
per input, :func:`hints_for` the advice printed after the run. Annotated files are named
here too, one per input (:func:`unique_name`), with the geometry that ``annotate`` asks
drawn on them (:func:`geometry_drawing`).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ferkit.inference.sources import Source
from ferkit.outputs import path_hex, path_text

OUTPUT_FORMATS = ("csv", "json", "jsonl")


#: Exit status of a run in which some inputs failed (each is listed in the summary).
EXIT_COMPLETED_WITH_ERRORS = 3


@dataclass
class PredictSummary:
    """What a prediction run did; also written to ``summary.json``."""

    out: Path | None
    sources: list[dict[str, Any]] = field(default_factory=list)
    faces: int = 0
    frames: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    hints: list[str] = field(default_factory=list)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return dict(Counter(source["status"] for source in self.sources))

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The inputs that could not be used, each with its reason."""
        return [source for source in self.sources if source["status"] == "error"]

    @property
    def partial(self) -> list[dict[str, Any]]:
        """The videos read only in part (their stream ended early), each with its reason."""
        return [source for source in self.sources if source["status"] == "partial"]

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """Files of a folder that are plainly not images or videos (not failures)."""
        return [source for source in self.sources if source["status"] == "skipped"]

    def exit_status(self) -> int:
        """0: every input was processed (an image without a face is not a failure);
        3: the run completed but some inputs failed or were read only in part (a video
        whose stream ends before the frames it announces); 130: interrupted by Ctrl-C."""
        if self.interrupted:
            return 130
        return EXIT_COMPLETED_WITH_ERRORS if self.failed or self.partial else 0


class RecordWriter:
    """Streams records to CSV, a JSON array or JSON lines, so memory stays flat."""

    def __init__(self, path: Path, fmt: str, columns: list[str]) -> None:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, not {fmt!r}")
        self.fmt = fmt
        # backslashreplace: a name that slipped through unescaped can never stop the run
        self.handle: TextIO = open(  # noqa: SIM115
            path, "w", newline="", encoding="utf-8", errors="backslashreplace"
        )
        self.count = 0
        if fmt == "csv":
            # extrasaction: the geometry's landmarks (a list per face) stay out of CSV
            self._csv = csv.DictWriter(
                self.handle, fieldnames=columns, restval="", extrasaction="ignore"
            )
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


def record_columns(classes: list[str], geometry: bool = False) -> list[str]:
    """The columns of a prediction record, in order (``geometry``: with each face's
    blendshape scores and head pose; its landmarks go to JSON records only)."""
    from ferkit.geometry import BLENDSHAPE_NAMES, POSE_NAMES

    extra = [*[f"bs_{name}" for name in BLENDSHAPE_NAMES], *POSE_NAMES] if geometry else []
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
        *extra,
    ]


def error_entry(
    source: Source, reason: str, writer: RecordWriter | None, status: str = "error"
) -> dict[str, Any]:
    """An input's summary entry with its status and reason, its row written too."""
    record = {"source": source.name, "kind": source.kind, "status": status, "reason": reason}
    if writer is not None:
        writer.write(record)
    return with_exact_name(record, source)


def with_exact_name(entry: dict[str, Any], source: Source) -> dict[str, Any]:
    """A summary entry with the file's exact name in hex when ``source`` had to escape it."""
    exact = path_hex(source.path) if source.path is not None else None
    return {**entry, "source_bytes_hex": exact} if exact else entry


def image_records(
    name: str, faces: Any, digits: int | None = 4
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One image's records (one per face, or its ``no_face`` row) and its summary entry,
    from its :class:`~ferkit.inference.results.ImageResult`."""
    records: list[dict[str, Any]] = [
        {"source": name, "kind": "image", "status": "ok", "face": index, **face.as_dict(digits)}
        for index, face in enumerate(faces, start=1)
    ] or [{"source": name, "kind": "image", "status": "no_face"}]
    entry: dict[str, Any] = {
        "source": name,
        "kind": "image",
        "status": "ok" if faces else "no_face",
        "faces": len(faces),
        "face_mode": faces.face_mode,
        "labels": [face.label for face in faces],
        "confidence": [round(face.probabilities[face.label], 4) for face in faces],
    }
    return records, entry


def write_summary(path: Path, summary: PredictSummary, recognizer: Any) -> None:
    """``summary.json``: the settings, counts and one entry per input."""
    document = {
        "model": path_text(recognizer.model.source),
        "detector": recognizer.detector.name,
        "faces_mode": recognizer.faces,
        "classes": recognizer.classes,
        "counts": summary.counts(),
        "failed": len(summary.failed),
        "exit_status": summary.exit_status(),
        "interrupted": summary.interrupted,
        "faces": summary.faces,
        "frames": summary.frames,
        "seconds": round(summary.seconds, 3),
        "peak_memory_mb": summary.peak_memory_mb,
        "hints": summary.hints,
        "sources": summary.sources,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def hints_for(summary: PredictSummary, recognizer: Any) -> list[str]:
    """Advice when the outcome suggests a better setting."""
    images = [entry for entry in summary.sources if entry["kind"] == "image"]
    without = [entry for entry in images if entry["status"] == "no_face"]
    if recognizer.faces != "crop" and len(images) >= 2 and len(without) * 2 > len(images):
        return [
            f"no face was found in {len(without)} of {len(images)} images: if they are "
            "ready-cut face crops, run again with --faces crop"
        ]
    return []


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


def unique_name(folder: Path, stem: str, suffix: str, used: set[str]) -> Path:
    """``folder/stem + suffix``, numbered (``stem_2``...) when ``used`` holds the name;
    the name is added to ``used``."""
    name, counter = f"{stem}{suffix}", 2
    while name in used:
        name, counter = f"{stem}_{counter}{suffix}", counter + 1
    used.add(name)
    return folder / name


def geometry_drawing(annotate: bool | str) -> str | None:
    """The geometry drawing that ``annotate`` names (``--annotate-geometry``), if any."""
    return annotate if isinstance(annotate, str) else None
