"""``ferkit predict``: recognise expressions in files, folders, globs, videos and a webcam.

:func:`predict` expands the inputs, runs an :class:`~ferkit.inference.recognizer.EmotionRecognizer`
over each, and streams one record per face into ``predictions.csv|json|jsonl`` (video
records carry the frame index, timestamp and track id, and both smoothed and raw
probabilities). Every input also gets a status: ``ok``, ``no_face`` (an image without a
face: an empty result, not an error), ``error`` (with the reason: unreadable, not an
image or video, missing), ``partial`` (a video whose stream ends before the frames it
announces: its results cover the frames read) or ``skipped``. Those rows go into the same
file, and ``summary.json`` repeats them with per-video shares of time per emotion, so a
batch never loses work on one bad file. ``--annotate`` writes images and videos with
boxes, labels and probability bars, and an emotion-over-time plot per video;
``--annotate-geometry`` draws each face's mesh, contours or pose axes under them.

The output folder follows :mod:`ferkit.outputs` (refused if it holds results, unless
``overwrite``; written whole or not at all; one writer at a time). http(s) URLs are
downloaded, bounded in size and time; other URL schemes are reported with the fix.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ferkit.images import (
    FACE_MODES,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ImageReadError,
    read_image,
)
from ferkit.outputs import output_folder, path_hex, path_text, peak_memory_mb

logger = logging.getLogger(__name__)


OUTPUT_FORMATS = ("csv", "json", "jsonl")


#: Containers of annotated videos and their OpenCV codecs: ``webm`` (VP8, the default:
#: web browsers and desktop players play it) or ``mp4`` (MPEG-4 part 2, which browsers
#: do not play).
ANNOTATED_VIDEO_FORMATS = {"mp4": "mp4v", "webm": "VP80"}


#: Exit status of a run in which some inputs failed (each is listed in the summary).
EXIT_COMPLETED_WITH_ERRORS = 3


#: Largest download of an http(s) input, and the seconds it may take.
MAX_DOWNLOAD_BYTES = 200 * 2**20


DOWNLOAD_TIMEOUT_S = 60.0


@dataclass
class Source:
    """One input to predict on: a file (image or video), a camera, or a bad input."""

    name: str  # as shown in the output
    kind: str  # image, video, camera, url, unknown
    path: Path | None = None
    url: str | None = None
    camera: int | None = None
    error: str | None = None  # set when the input is already known to be unusable
    opened: Any = None  # a camera's (capture, info), opened once up front
    listed: bool = False  # named by a manifest


#: Manifests: files that list the inputs, one path or URI per row. Text: one per line
#: (blank lines and ``#`` comments skipped; each line decoded on its own); CSV and
#: Parquet: the column named ``path``, ``uri``, ``file`` or ``source``, else the first.
#: Relative paths are taken from the manifest's folder.
MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")

#: Files in a folder that are plainly not images or videos by their extension (notes,
#: documents, tables, archives, code): skipped and counted, never failed inputs. A file of
#: another unknown extension is still read, so a renamed image is found by its content.
NOT_MEDIA_SUFFIXES = frozenset({
    ".md", ".txt", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini",
    ".cfg", ".xml", ".html", ".htm", ".pdf", ".doc", ".docx", ".odt", ".rtf", ".xls", ".xlsx",
    ".ods", ".ppt", ".pptx", ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".py",
    ".ipynb", ".sh", ".log", ".db", ".sqlite", ".parquet", ".npz", ".npy", ".pkl", ".onnx",
    ".keras", ".h5", ".tflite",
})  # fmt: skip


MANIFEST_COLUMNS = ("path", "uri", "file", "source")


def read_uri(uri: str) -> bytes:
    """The bytes of a file that pyarrow's file systems reach (``s3://``, ``gs://``,
    ``hdfs://``, ``file://``), with the credentials of this machine.

    Raises:
        OSError: the file is missing or cannot be read (pyarrow's reason in the message).
    """
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise OSError("reading URIs needs pyarrow: pip install -e '.[ray]'") from None
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise OSError("no such file") from None
    except (OSError, ValueError, TypeError) as error:  # pyarrow.ArrowException is one
        raise OSError(f"cannot be read through pyarrow ({error})") from None


def _looks_like_path(text: str) -> bool:
    """Whether a CSV's first cell reads as a path rather than as a column name."""
    return url_scheme(text) is not None or "/" in text or "\\" in text or bool(Path(text).suffix)


def _text_lines(data: bytes) -> list[str]:
    """The lines of a text manifest, each decoded on its own: a line that is not UTF-8
    (a file name from a Latin-1 system, say) keeps its bytes as the file system's
    surrogate escapes, so it names that file or becomes one bad entry, never failing
    the whole manifest."""
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Notepad's)
        data = data[3:]
    return [line.decode("utf-8", "surrogateescape") for line in data.splitlines()]


def read_manifest(path: str | os.PathLike[str]) -> list[str]:
    """The entries of a manifest file or URI (see :data:`MANIFEST_SUFFIXES`), relative
    paths made relative to the manifest's folder. A CSV without a header row (its first
    cell reads as a path) is read from its first row.

    Raises:
        ValueError: the manifest cannot be read or lists nothing (the message says why).
    """
    import io

    given = os.fspath(path)
    remote = url_scheme(given) not in (None, "file")
    suffix = Path(given.split("?")[0]).suffix.lower()
    try:
        data = read_uri(given) if remote else Path(given).read_bytes()
        if suffix == ".txt":
            entries = [line.strip() for line in _text_lines(data)]
            entries = [e for e in entries if e and not e.startswith("#")]
        else:
            import pandas as pd

            if suffix == ".parquet":
                table = pd.read_parquet(io.BytesIO(data))
            else:
                table = pd.read_csv(io.BytesIO(data), dtype=str)
                named = any(str(c).strip().lower() in MANIFEST_COLUMNS for c in table.columns)
                if len(table.columns) and not named and _looks_like_path(str(table.columns[0])):
                    table = pd.read_csv(io.BytesIO(data), dtype=str, header=None)
            if table.columns.empty:
                raise ValueError("it has no column")
            named = [c for c in table.columns if str(c).strip().lower() in MANIFEST_COLUMNS]
            column = named[0] if named else table.columns[0]
            entries = [str(v).strip() for v in table[column].dropna() if str(v).strip()]
    except (OSError, UnicodeDecodeError, ValueError, ImportError) as error:
        raise ValueError(
            f"manifest {path_text(given)}: cannot be read ({type(error).__name__}: {error}); a "
            "manifest is a .txt file with one path or URI per line, or a .csv/.parquet file "
            f"with a column named {' or '.join(MANIFEST_COLUMNS)}"
        ) from None
    if not entries:
        raise ValueError(f"manifest {path_text(given)}: lists no path; add one path or URI per row")
    folder = given.rsplit("/", 1)[0] if remote else os.path.dirname(given)

    def placed(entry: str) -> str:
        if url_scheme(entry) or os.path.isabs(entry):
            return entry
        return f"{folder}/{entry}" if remote else os.path.join(folder, entry)

    return [placed(entry) for entry in entries]


def expand_inputs(inputs: list[str], *, manifests: bool = True) -> list[Source]:
    """Files, folders (recursive, sorted, hidden files ignored), globs and manifests
    (:func:`read_manifest`; when ``manifests``), in order.

    Inputs that do not exist, globs that match nothing and files that are neither image
    nor video (by extension, or by content when the extension is unknown) are returned
    with ``error`` set rather than raised, so they end up in the output. ``file://`` URIs
    are local paths; other URIs than http(s) are kept as ``uri`` sources, which only the
    Ray engine reads (:mod:`ferkit.inference.distributed`).
    """
    sources: list[Source] = []
    for given in inputs:
        given = os.fspath(given)
        scheme = url_scheme(given)
        if scheme in ("http", "https"):
            sources.append(Source(path_text(given), "url", url=given))
            continue
        listed = manifests and Path(given.split("?")[0]).suffix.lower() in MANIFEST_SUFFIXES
        if scheme == "file":
            given = _file_uri_path(given)
        elif scheme is not None and not listed:
            sources.append(Source(path_text(given), "uri", url=given))
            continue
        path = Path(given)
        if listed and (scheme not in (None, "file") or path.is_file()):
            try:
                entries = read_manifest(path)
            except ValueError as error:
                local = path if scheme in (None, "file") else None
                sources.append(Source(path_text(given), "unknown", local, error=str(error)))
                continue
            for listed in expand_inputs(entries, manifests=False):
                listed.listed = True
                sources.append(listed)
            continue
        if path.is_dir():
            visible = [
                p
                for p in path.rglob("*")
                if not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            files = sorted(p for p in visible if p.is_file())
            broken = sorted(p for p in visible if p.is_symlink() and not p.exists())
            sources.extend(
                Source(path_text(p), "unknown", p, error="broken or looping symbolic link")
                for p in broken
            )
            if not files and not broken:
                sources.append(
                    Source(path_text(given), "unknown", path, error="folder holds no files")
                )
            sources.extend(_listed_file_source(p) for p in files)
        elif path.is_file():
            sources.append(_file_source(path))
        elif any(char in given for char in "*?["):
            matches = sorted(glob.glob(given, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            if not files:
                sources.append(
                    Source(path_text(given), "unknown", error="the pattern matched no file")
                )
            sources.extend(_file_source(p) for p in files)
        else:
            reason = "broken or looping symbolic link" if path.is_symlink() else None
            sources.append(
                Source(path_text(given), "unknown", path, error=reason or _not_found(given))
            )
    return sources


def _not_found(given: str) -> str:
    if path_text(given) == given:
        return "no such file or folder"
    return (
        "no such file or folder, and the name is not UTF-8 text; if a manifest lists it, "
        "save the manifest as UTF-8"
    )


def input_roots(given: str | os.PathLike[str]) -> list[Path]:
    """What an input reads, for checking ``--out`` against it: the file or folder it
    names; for a recursive glob (``photos/**/*.jpg``) the folder before its first
    wildcard, whose whole tree it reads; for another glob, the files it matches."""
    text = os.fspath(given)
    wildcard = min((text.find(c) for c in "*?[" if c in text), default=-1)
    if wildcard < 0:
        return [Path(text)]
    if "**" in text:
        head, _, _ = text[:wildcard].rpartition("/")
        return [Path(head or ".")]
    return [Path(match) for match in glob.glob(text)]


def _file_uri_path(uri: str) -> str:
    """The local path of a ``file://`` URI."""
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(uri).path)


def read_paths(inputs: list[str], sources: list[Source]) -> list[Path]:
    """What a run reads, for checking ``--out`` against it: each local input's roots
    (:func:`input_roots`) and every path a manifest names."""
    roots = [
        root
        for given in inputs
        if url_scheme(os.fspath(given)) is None
        for root in input_roots(given)
    ]
    return roots + [source.path for source in sources if source.listed and source.path]


def url_scheme(given: str) -> str | None:
    """The scheme of an input written as a URL (``https`` of ``https://...``), else None."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]+)://", given)
    return match.group(1).lower() if match else None


def _listed_file_source(path: Path) -> Source:
    """A file found in a folder: skipped when its extension says it is no image or video."""
    if path.suffix.lower() in NOT_MEDIA_SUFFIXES:
        return Source(
            path_text(path), "skipped", path,
            error=f"not an image or video (a {path.suffix.lower()} file); skipped",
        )  # fmt: skip
    return _file_source(path)


def _file_source(path: Path) -> Source:
    suffix = path.suffix.lower()
    kind = (
        "image"
        if suffix in IMAGE_EXTENSIONS
        else "video"
        if suffix in VIDEO_EXTENSIONS
        else "unknown"
    )
    return Source(path_text(path), kind, path)


def download(url: str, folder: Path, max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Download an http(s) URL into ``folder``, bounded in size and time.

    Raises:
        ValueError: the download failed, timed out or exceeded ``max_bytes``.
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = folder / name
    started = time.monotonic()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "ferkit"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            announced = int(response.headers.get("Content-Length") or 0)
            if announced > max_bytes:
                raise ValueError(
                    f"download is {announced / 2**20:.0f} MB, over the "
                    f"{max_bytes / 2**20:.0f} MB limit; download it yourself and give the file"
                )
            received = 0
            with open(target, "wb") as handle:
                while block := response.read(1 << 16):
                    received += len(block)
                    if received > max_bytes:
                        raise ValueError(
                            f"download exceeds the {max_bytes / 2**20:.0f} MB limit; download "
                            "it yourself and give the file"
                        )
                    if time.monotonic() - started > DOWNLOAD_TIMEOUT_S:
                        raise ValueError(
                            f"download took over {DOWNLOAD_TIMEOUT_S:.0f} s; download it "
                            "yourself and give the file"
                        )
                    handle.write(block)
    except urllib.error.HTTPError as error:
        raise ValueError(f"download failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise ValueError(f"download failed ({reason}); check the URL and the network") from None
    return target


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


def _unique_name(folder: Path, stem: str, suffix: str, used: set[str]) -> Path:
    name, counter = f"{stem}{suffix}", 2
    while name in used:
        name, counter = f"{stem}_{counter}{suffix}", counter + 1
    used.add(name)
    return folder / name


def predict(
    inputs: list[str],
    out: str | os.PathLike[str] | None = None,
    *,
    fmt: str = "csv",
    annotate: bool = False,
    camera: int | None = None,
    model: str | os.PathLike[str] | None = None,
    detector: str | None = None,
    backend: str = "auto",
    faces: str = "auto",
    max_pixels: int | None = None,
    tta: bool = False,
    geometry: bool = False,
    every: int = 1,
    detect_every: int | str = "auto",
    smoothing_s: float = 0.5,
    max_frames: int | None = None,
    overwrite: bool = False,
    recognizer: Any = None,
    progress: bool = True,
    echo: Any = None,
    annotated_video: str = "webm",
    on_frame: Callable[[str, int, int | None], None] | None = None,
    annotate_geometry: str | None = None,
) -> PredictSummary:
    """Run recognition over inputs and write the records.

    Args:
        inputs: image/video files, folders, globs, http(s) URLs.
        out: output folder (``predictions.<fmt>``, ``summary.json``, ``annotated/``), or
            None to write nothing. It must not hold results already unless ``overwrite``
            (see :mod:`ferkit.outputs`).
        camera: also read this webcam index until ``max_frames`` or Ctrl-C.
        faces: ``auto``, ``crop`` or ``detect`` (see :class:`EmotionRecognizer`).
        max_pixels: pixel budget of one decoded image (default: the recogniser's).
        tta: test-time augmentation of the faces of still images (see
            :class:`EmotionRecognizer`); never for video frames.
        geometry: each face's blendshapes and head pose too (``bs_<name>``, ``yaw``,
            ``pitch``, ``roll``), and in JSON/JSONL its 478 ``landmarks`` (see
            :mod:`ferkit.geometry`).
        recognizer: an existing :class:`EmotionRecognizer` (else one is built from
            ``model``, ``detector``, ``backend``, ``faces``, ``max_pixels`` and ``tta``, which are
            then ignored in favour of the recogniser's own settings).
        echo: callable that receives one human-readable line per input (``print``).
        annotated_video: container of annotated videos, ``webm`` (VP8, which web
            browsers play) or ``mp4`` (MPEG-4 part 2, for older desktop tools).
        on_frame: called after each video frame is read with the input's name, the
            frames read so far and the frames expected (None when unknown), for progress
            reports.
        annotate_geometry: annotate, and draw each face's geometry under its box and
            panel: ``mesh``, ``contours`` or ``axes`` (see
            :data:`ferkit.inference.annotate.GEOMETRY_DRAWINGS`); turns ``annotate`` and
            ``geometry`` on.

    Returns:
        What happened to every input; :meth:`PredictSummary.exit_status` tells a script
        whether some inputs failed. Ctrl-C ends the run early, keeping what was done.

    Raises:
        ValueError: bad options, the camera cannot be opened, nothing to do, or ``out``
            overlaps an input.
        FileExistsError: ``out`` holds results and ``overwrite`` is false.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, not {fmt!r}")
    if annotated_video not in ANNOTATED_VIDEO_FORMATS:
        raise ValueError(
            f"annotated_video must be one of {tuple(ANNOTATED_VIDEO_FORMATS)}, not "
            f"{annotated_video!r}"
        )
    check_options(faces, every, detect_every, smoothing_s, max_frames, max_pixels)
    if annotate_geometry is not None:
        from ferkit.inference.annotate import GEOMETRY_DRAWINGS

        if annotate_geometry not in GEOMETRY_DRAWINGS:
            raise ValueError(
                f"annotate_geometry must be one of {GEOMETRY_DRAWINGS}, not {annotate_geometry!r}"
            )
        if recognizer is not None and not recognizer.geometry:
            raise ValueError("annotate_geometry needs a recognizer made with geometry=True")
        # From here on, annotate names the drawing (a str) or is a bool.
        annotate, geometry = annotate_geometry, True
    if camera is not None and camera < 0:
        raise ValueError(f"camera index must be 0 or more (0 is the first), not {camera}")
    sources = expand_inputs(list(inputs))
    if camera is None and not sources:
        raise ValueError("nothing to predict on: give image/video files, folders or --camera N")
    given_paths = read_paths(inputs, sources)
    run = {
        "fmt": fmt, "annotate": annotate, "camera": camera, "model": model,
        "detector": detector, "backend": backend, "faces": faces, "max_pixels": max_pixels,
        "tta": tta, "geometry": geometry, "every": every, "detect_every": detect_every,
        "smoothing_s": smoothing_s,
        "max_frames": max_frames, "recognizer": recognizer, "progress": progress, "echo": echo,
        "annotated_video": annotated_video, "on_frame": on_frame,
    }  # fmt: skip
    if out is None:
        return _predict_all(sources, None, **run)
    with output_folder(out, "predict", overwrite=overwrite, inputs=given_paths) as staging:
        summary = _predict_all(sources, staging, **run)
    summary.out = Path(out)
    return summary


def check_options(
    faces: str,
    every: int,
    detect_every: int | str,
    smoothing_s: float,
    max_frames: int | None,
    max_pixels: int | None,
) -> None:
    """Refuse prediction settings out of range, naming the setting.

    Raises:
        ValueError: a setting is out of range.
    """
    if faces not in FACE_MODES:
        raise ValueError(f"faces must be one of {FACE_MODES}, not {faces!r}")
    from ferkit.inference.video import check_detect_every

    if every < 1:
        raise ValueError(f"every must be at least 1, not {every}")
    check_detect_every(detect_every)
    if not math.isfinite(smoothing_s) or smoothing_s < 0:
        raise ValueError(f"smoothing must be a number of seconds, 0 or more, not {smoothing_s}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, not {max_frames}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, not {max_pixels}")


def _predict_all(
    sources: list[Source],
    out_dir: Path | None,
    *,
    fmt: str,
    annotate: bool | str,
    camera: int | None,
    model: Any,
    detector: str | None,
    backend: str,
    faces: str,
    max_pixels: int | None,
    tta: bool,
    geometry: bool,
    every: int,
    detect_every: int | str,
    smoothing_s: float,
    max_frames: int | None,
    recognizer: Any,
    progress: bool,
    echo: Any,
    annotated_video: str,
    on_frame: Callable[[str, int, int | None], None] | None,
) -> PredictSummary:
    from ferkit.inference.video import open_video

    echo = echo or (lambda line: None)
    camera_capture = None
    if camera is not None:
        # Opened now so that a missing camera is an error before any work; this capture is
        # the one the camera's frames are read from, and it is released whatever happens.
        opened = open_video(camera)
        camera_capture = opened[0]
        sources.append(Source(f"camera:{camera}", "camera", camera=camera, opened=opened))
    try:
        if recognizer is None:
            recognizer = _make_recognizer(
                model, detector, backend, faces, max_pixels, tta, geometry
            )
        options = {"every": every, "detect_every": detect_every, "smoothing_s": smoothing_s,
                   "max_frames": max_frames, "annotated_video": annotated_video,
                   "on_frame": on_frame}  # fmt: skip
        summary = _run_sources(
            recognizer, sources, fmt, out_dir, annotate, progress, echo, options,
        )  # fmt: skip
    finally:
        if camera_capture is not None:
            camera_capture.release()
    summary.hints = hints_for(summary, recognizer)
    for hint in summary.hints:
        echo(f"hint: {hint}")
    summary.peak_memory_mb = peak_memory_mb()
    if out_dir is not None:
        _write_summary(out_dir / "summary.json", summary, recognizer)
    return summary


def _make_recognizer(
    model: Any,
    detector: str | None,
    backend: str,
    faces: str,
    max_pixels: int | None,
    tta: bool = False,
    geometry: bool = False,
) -> Any:
    from ferkit.inference.recognizer import EmotionRecognizer

    kwargs: dict[str, Any] = {"detector": detector} if detector else {}
    if max_pixels is not None:
        kwargs["max_pixels"] = max_pixels
    if geometry:
        kwargs["geometry"] = True
    return EmotionRecognizer(model, backend=backend, faces=faces, tta=tta, **kwargs)


def _run_sources(
    recognizer: Any,
    sources: list[Source],
    fmt: str,
    out_dir: Path | None,
    annotate: bool | str,
    progress: bool,
    echo: Any,
    options: dict[str, Any],
) -> PredictSummary:
    """Each input in turn, its records written as they come; Ctrl-C (or one in the middle
    of a video) records the inputs left as skipped."""
    import tempfile

    from ferkit.outputs import progress_bar

    columns = record_columns(recognizer.classes, getattr(recognizer, "geometry", False))
    writer = RecordWriter(out_dir / f"predictions.{fmt}", fmt, columns) if out_dir else None
    summary = PredictSummary(out=out_dir)
    used_names: set[str] = set()
    started = time.perf_counter()
    downloads = tempfile.TemporaryDirectory(prefix="ferkit-download-")
    try:
        bar = progress_bar(
            total=len(sources), desc="predict", unit="input",
            disable=not progress or len(sources) < 2,
        )  # fmt: skip
        entries = _entries(
            recognizer, sources, writer, out_dir, annotate, used_names, progress,
            Path(downloads.name), options,
        )  # fmt: skip
        try:
            for entry in entries:
                bar.update(1)
                summary.frames += entry.get("frames", 0)
                summary.faces += entry.get("faces", 0)
                summary.sources.append(entry)
                echo(describe(entry))
                if entry.pop("interrupted", False):  # Ctrl-C in the middle of a video
                    summary.interrupted = True
                    _skip_rest(summary, sources[len(summary.sources) :], writer, echo)
                    break
        except KeyboardInterrupt:
            summary.interrupted = True
            _skip_rest(summary, sources[len(summary.sources) :], writer, echo)
        finally:
            entries.close()
            bar.close()
    finally:
        downloads.cleanup()
        if writer is not None:
            writer.close()
        summary.seconds = time.perf_counter() - started
    return summary


#: Images classified in one call by the local engine (fewer when annotating, since the
#: decoded images are then kept until drawn).
IMAGE_BATCH = 64
ANNOTATE_BATCH = 8


def _entries(
    recognizer: Any,
    sources: list[Source],
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
    progress: bool,
    downloads: Path,
    options: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """Each input's summary entry, in order, its records written just before it: runs of
    image files go through :func:`_predict_images` (batched), the rest one by one."""
    start = 0
    while start < len(sources):
        end = start
        while end < len(sources) and sources[end].kind in ("image", "unknown"):
            end += 1
        if end > start:
            yield from _predict_images(
                recognizer, sources[start:end], writer, out_dir, annotate, used_names
            )
            start = end
            continue
        yield predict_source(
            recognizer, sources[start], writer, out_dir, annotate, used_names, progress,
            downloads, options,
        )  # fmt: skip
        start += 1


def _found_faces(
    recognizer: Any, sources: list[Source], keep_image: bool
) -> Iterator[tuple[Source, np.ndarray | None, str, Any]]:
    """Per image file: ``(source, rgb or None, reason it failed, (mode, faces, crops,
    shape, geometries) or None)``, the image decoded and its faces found and cut out (and
    their geometry, where the recogniser computes it)."""
    for source in sources:
        try:
            rgb, reason = read_source_image(source, recognizer.max_pixels)
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as error:  # recorded, as the local engine records any input's
            logger.debug("%s failed", source.name, exc_info=True)
            rgb, reason = None, f"failed: {type(error).__name__}: {error}"
        if rgb is None:
            yield source, None, reason, None
            continue
        try:
            mode, found, crops = recognizer.find_faces(rgb)
            geometries = recognizer.face_geometry(rgb, found)
        except Exception as error:  # a detector failing on one odd image
            logger.debug("%s failed", source.name, exc_info=True)
            yield source, None, detection_failure(error), None
            continue
        yield source, (rgb if keep_image else None), "", (mode, found, crops, rgb.shape, geometries)


def _predict_images(
    recognizer: Any,
    sources: list[Source],
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
) -> Iterator[dict[str, Any]]:
    """Image files in batches: decoding and face finding on a thread of their own (PIL,
    OpenCV and LiteRT release the GIL), the faces of up to :data:`IMAGE_BATCH` images
    classified in one call; the same records and entries as :func:`_predict_image` one
    by one."""
    from ferkit.inference.video import prefetch

    size = ANNOTATE_BATCH if annotate and out_dir is not None else IMAGE_BATCH
    keep = annotate and out_dir is not None
    found = prefetch(_found_faces(recognizer, sources, keep), depth=size, name="ferkit-images")
    batch: list[tuple[Source, np.ndarray | None, str, Any]] = []
    try:
        for item in found:
            batch.append(item)
            if len(batch) >= size:
                yield from _classified(recognizer, batch, writer, out_dir, annotate, used_names)
                batch = []
        yield from _classified(recognizer, batch, writer, out_dir, annotate, used_names)
    finally:
        found.close()


def _classified(
    recognizer: Any,
    batch: list[tuple[Source, np.ndarray | None, str, Any]],
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
) -> Iterator[dict[str, Any]]:
    from ferkit.inference.results import ImageResult

    crops = [item[3][2] for item in batch if item[3] is not None]
    try:
        probabilities = recognizer.classify_faces(np.concatenate(crops)) if crops else None
    except Exception as error:  # the batch's images are recorded as failed, the run goes on
        logger.debug("classifying a batch failed", exc_info=True)
        failed = f"failed: {type(error).__name__}: {error}"
        batch = [(s, None, r or failed, None) for s, _, r, _ in batch]
    start = 0
    for source, rgb, reason, faces in batch:
        if faces is None:
            yield _error_entry(source, reason, writer)
            continue
        mode, boxes, cut, shape, geometries = faces
        rows = probabilities[start : start + len(cut)]
        start += len(cut)
        try:
            result = ImageResult(face_mode=mode, width=shape[1], height=shape[0])
            result.extend(recognizer.face_results(boxes, rows, geometries))
            records, entry = image_records(source.name, result)
            if annotate and out_dir is not None:
                entry["annotated"] = _annotate_image(
                    source, rgb, result, out_dir, used_names, _drawing(annotate)
                )
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as error:  # this image is recorded as failed, the run goes on
            logger.debug("%s failed", source.name, exc_info=True)
            yield _error_entry(source, f"failed: {type(error).__name__}: {error}", writer)
            continue
        source.kind = "image"
        if writer is not None:
            for record in records:
                writer.write(record)
        yield with_exact_name(entry, source)


def _drawing(annotate: bool | str) -> str | None:
    """The geometry drawing that ``annotate`` names (``--annotate-geometry``), if any."""
    return annotate if isinstance(annotate, str) else None


def _annotate_image(
    source: Source,
    rgb: np.ndarray,
    faces: Any,
    out_dir: Path,
    used_names: set[str],
    drawing: str | None = None,
) -> str:
    """Draw an image's faces (and their geometry: ``drawing``) into ``annotated/``;
    returns the file's path in ``out_dir``."""
    from PIL import Image

    from ferkit.inference.annotate import STILL_IMAGE_MIN_SIDE, draw_results

    folder = out_dir / "annotated"
    folder.mkdir(exist_ok=True)
    suffix = ".jpg" if source.path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    target = _unique_name(folder, path_text(source.path.stem), suffix, used_names)
    drawn = draw_results(rgb, faces, min_side=STILL_IMAGE_MIN_SIDE, geometry=drawing)
    Image.fromarray(drawn).save(target, quality=92)
    return f"annotated/{target.name}"


def _skip_rest(
    summary: PredictSummary, left: list[Source], writer: RecordWriter | None, echo: Any
) -> None:
    summary.sources.extend(
        _error_entry(s, "not processed: the run was interrupted", writer, "skipped") for s in left
    )
    if left:
        echo(f"interrupted: {len(left)} input(s) not processed")


def _write_summary(path: Path, summary: PredictSummary, recognizer: Any) -> None:
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


def predict_source(
    recognizer: Any,
    source: Source,
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
    progress: bool,
    downloads: Path,
    options: dict[str, Any],
) -> dict[str, Any]:
    """One input's records and summary entry; an unexpected failure on this input is
    recorded as its error, so the rest of the batch completes."""
    try:
        if source.kind == "skipped":
            return _error_entry(source, source.error or "skipped", writer, status="skipped")
        if source.kind == "url" and source.error is None:
            try:
                source.path = download(source.url, downloads)
            except ValueError as error:
                return _error_entry(source, str(error), writer)
            suffix = source.path.suffix.lower()
            source.kind = "video" if suffix in VIDEO_EXTENSIONS else "unknown"
        if source.kind == "uri":
            scheme = url_scheme(source.url)
            return _error_entry(
                source,
                f"{scheme}:// URLs are not read by the local engine: use --engine ray, which "
                "reads them through pyarrow's file systems, or download the file first and "
                "give its local path (http and https URLs are downloaded)",
                writer,
            )
        if source.kind in ("video", "camera"):
            entry = _predict_video(
                recognizer, source, writer, out_dir, annotate, used_names, progress, **options
            )
        else:
            entry = _predict_image(recognizer, source, writer, out_dir, annotate, used_names)
        return with_exact_name(entry, source)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as error:
        logger.debug("%s failed", source.name, exc_info=True)
        return _error_entry(source, f"failed: {type(error).__name__}: {error}", writer)


def _error_entry(source: Source, reason: str, writer: RecordWriter | None, status: str = "error"):
    record = {"source": source.name, "kind": source.kind, "status": status, "reason": reason}
    if writer is not None:
        writer.write(record)
    return with_exact_name(record, source)


def with_exact_name(entry: dict[str, Any], source: Source) -> dict[str, Any]:
    """A summary entry with the file's exact name in hex when ``source`` had to escape it."""
    exact = path_hex(source.path) if source.path is not None else None
    return {**entry, "source_bytes_hex": exact} if exact else entry


def _predict_image(
    recognizer: Any,
    source: Source,
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
) -> dict[str, Any]:

    rgb, reason = read_source_image(source, recognizer.max_pixels)
    if rgb is None:
        return _error_entry(source, reason, writer)
    source.kind = "image"
    try:
        faces = recognizer.predict(rgb)
    except Exception as error:  # a detector failing on one odd image
        logger.debug("%s failed", source.name, exc_info=True)
        return _error_entry(source, detection_failure(error), writer)
    records, entry = image_records(source.name, faces)
    if writer is not None:
        for record in records:
            writer.write(record)
    if annotate and out_dir is not None:
        entry["annotated"] = _annotate_image(
            source, rgb, faces, out_dir, used_names, _drawing(annotate)
        )
    return entry


def read_source_image(source: Source, max_pixels: int) -> tuple[np.ndarray | None, str]:
    """The RGB pixels of an image input, or None and the reason it cannot be used."""
    if source.error:
        return None, source.error
    try:
        return read_image(source.path, color=True, max_pixels=max_pixels), ""
    except ImageReadError as error:
        reason = error.reason
        if source.kind in ("unknown", "url") and error.kind == "not_image":
            reason = f"not an image or video ({error.reason})"
        return None, reason
    except OSError as error:
        return None, f"unreadable: {error.strerror or error}"


def detection_failure(error: BaseException) -> str:
    """The reason recorded for an image on which the detector raised."""
    return f"face detection failed: {type(error).__name__}: {error}"


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


def _predict_video(
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
        return _error_entry(source, str(error).split(": ", 1)[-1], writer)
    capture, info = opened
    tally = _VideoTally(source, recognizer.classes, writer)
    try:
        annotated = (
            _AnnotatedVideo.open(
                source, info, out_dir, used_names, annotated_video, _drawing(annotate)
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
        path = _unique_name(folder, stem, f".{container}", used_names)
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
        from ferkit.inference.annotate import plot_emotions_over_time

        figure = plot_emotions_over_time(
            tally.times, tally.smoothed, classes, tally.shares(), title
        )
        plot_path = self.path.with_name(self.path.stem + "_emotions.png")
        figure.savefig(plot_path, dpi=100)
        return {
            "annotated": f"annotated/{self.path.name}",
            "emotion_plot": f"annotated/{plot_path.name}",
        }


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
