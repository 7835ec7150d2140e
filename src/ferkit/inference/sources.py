"""The inputs of ``ferkit predict``: files, folders, globs, manifests and URLs, each made
into a :class:`Source`.

:func:`expand_inputs` turns what a user names into sources in order: folders recursively
(hidden files ignored; notes, documents and other plainly non-media files skipped),
globs, manifests (:func:`read_manifest`: ``.txt``, ``.csv`` or ``.parquet`` lists of paths
or URIs), ``file://`` URIs as local paths, http(s) URLs (fetched later by
:func:`download`, bounded in size and time) and other URIs (read by the Ray engine through
:func:`read_uri`). An input that cannot be used becomes a source with its ``error`` set,
never an exception, so the run records it and goes on. :func:`read_paths` says what a run
reads, so its output folder can be checked against it.
"""

from __future__ import annotations

import glob
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferkit.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from ferkit.outputs import path_text

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


def _csv_entries(data: bytes) -> list[str]:
    """The entries of a CSV manifest: the first column named one of
    :data:`MANIFEST_COLUMNS`, else the first column; a first row whose first cell reads
    as a path is an entry, not a header."""
    import csv
    import io

    text = data.decode("utf-8-sig")
    try:  # newline="": any line ending (Excel for Mac writes bare CRs), quoted ones kept
        rows = csv.reader(io.StringIO(text, newline=""), strict=True)
        rows = [row for row in rows if any(cell.strip() for cell in row)]
    except csv.Error as error:  # an unterminated quote, a cell over the module's limit
        raise ValueError(f"not a well-formed CSV file ({error})") from None
    if not rows:
        raise ValueError("it has no column")
    header = [cell.strip().lower() for cell in rows[0]]
    named = [index for index, name in enumerate(header) if name in MANIFEST_COLUMNS]
    if named:
        column, body = named[0], rows[1:]
    else:
        column = 0
        body = rows if _looks_like_path(rows[0][0].strip()) else rows[1:]
    return [row[column].strip() for row in body if len(row) > column and row[column].strip()]


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
        elif suffix == ".csv":
            entries = _csv_entries(data)
        else:
            import importlib.util

            from ferkit.extras import import_pandas, missing_extra

            pd = import_pandas("a .parquet manifest")
            if importlib.util.find_spec("pyarrow") is None:
                raise missing_extra("pyarrow", "ray", "a .parquet manifest")
            table = pd.read_parquet(io.BytesIO(data))
            if table.columns.empty:
                raise ValueError("it has no column")
            named = [c for c in table.columns if str(c).strip().lower() in MANIFEST_COLUMNS]
            column = named[0] if named else table.columns[0]
            entries = [str(v).strip() for v in table[column].dropna() if str(v).strip()]
    except ImportError as error:  # a library of an extra: its message says which
        raise ValueError(f"manifest {path_text(given)}: cannot be read: {error}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
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
