"""``ferkit predict --engine ray``: the prediction pipeline on a Ray cluster.

The same detection, classification, tracking and smoothing as :func:`ferkit.inference.
predict.predict`, spread over the CPUs of a Ray cluster (``pip install -e '.[ray]'``;
without ``address`` a local one is started on this machine):

- **Images** (files, folders, globs, manifests of paths or URIs): a Ray Data pipeline in
  which tasks read and decode the images and find their faces, and a pool of actors,
  each loading the model once, classifies the faces in batches and writes the records of
  each batch as one Parquet file.
- **Videos**: one Ray task per video streams its frames exactly as the local engine does
  (memory per worker stays flat) and writes one Parquet file.

Outputs under ``out``: ``predictions/part-*.parquet`` (the columns of
``predictions.csv``, probabilities at full precision; with ``geometry``, the blendshape
and head-pose columns too and each face's 478 landmarks as a list column; every input
has at least one row, its status), ``summary.json`` and ``run.json`` (the settings).
Each Parquet file is written under a temporary name and renamed when complete, and
carries the summary entries of its inputs in its metadata, so ``resume=True`` skips every input already
written: a killed job loses only the files in flight. A worker that dies is restarted
by Ray and its batch retried.

Inputs that are not local files are read through pyarrow's file systems (``s3://``,
``gs://``, ``hdfs://``, ``file://``: whatever pyarrow reaches with the credentials of
the machine); http(s) URLs are downloaded as by the local engine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ferkit.faces import DEFAULT_DETECTOR
from ferkit.images import DEFAULT_MAX_PIXELS, VIDEO_EXTENSIONS, decode_image
from ferkit.inference.predict import (
    check_options,
    detection_failure,
    predict_source,
    read_source_image,
)
from ferkit.inference.records import (
    PredictSummary,
    describe,
    hints_for,
    image_records,
    record_columns,
    with_exact_name,
)
from ferkit.inference.sources import Source, expand_inputs, read_paths, read_uri
from ferkit.outputs import (
    MARKER,
    OutputExistsError,
    check_not_overlapping,
    locked,
    path_text,
    peak_memory_mb,
    write_atomic,
    write_marker,
    written_by,
)

logger = logging.getLogger(__name__)

#: The command recorded in the output's marker (``--overwrite`` and ``--resume`` check it).
COMMAND = "predict-ray"

PARTS = "predictions"
RUN_FILE = "run.json"
ENTRIES_KEY = b"ferkit_entries"

#: CPUs asked by each decode-and-detect task and by each classifier actor.
TASK_CPUS = 0.5

#: Times Ray runs a video's task again after its process died.
VIDEO_RETRIES = 3


def _require_ray() -> Any:
    from ferkit.extras import missing_extra

    try:
        import ray
        import ray.data
    except ImportError:
        raise missing_extra("Ray Data", "ray", "ferkit predict --engine ray") from None
    return ray


def record_schema(classes: list[str], geometry: bool = False) -> Any:
    """The Arrow schema of the prediction records: the columns of ``predictions.csv``
    and, with ``geometry``, ``landmarks`` (per face, 478 ``[x, y, z]`` lists)."""
    import pyarrow as pa

    types = {
        "source": pa.string(), "kind": pa.string(), "status": pa.string(),
        "reason": pa.string(), "label": pa.string(), "raw_label": pa.string(),
        "frame": pa.int64(), "face": pa.int64(), "track_id": pa.int64(), "x": pa.int64(),
        "y": pa.int64(), "width": pa.int64(), "height": pa.int64(),
    }  # fmt: skip
    fields = [(name, types.get(name, pa.float64())) for name in record_columns(classes, geometry)]
    if geometry:
        fields.append(("landmarks", pa.list_(pa.list_(pa.float32()))))
    return pa.schema(fields)


def _publish(temporary: Path, target: Path) -> None:
    """Flush a finished file to disk and rename it into place (then the folder), so a
    part is complete or absent even after a power cut."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _write_part(folder: Path, name: str, table: Any, entries: list[dict[str, Any]]) -> None:
    """One Parquet file, written under a temporary name and renamed when complete; its
    inputs' summary entries go into its metadata."""
    import pyarrow.parquet as pq

    metadata = {**(table.schema.metadata or {}), ENTRIES_KEY: json.dumps(entries).encode()}
    table = table.replace_schema_metadata(metadata)
    temporary = folder / f".{name}.tmp-{os.getpid()}"
    try:
        pq.write_table(table, temporary)
        _publish(temporary, folder / name)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class ParquetRecordWriter:
    """Collects one input's records and writes them as one Parquet file on :meth:`close`
    (a video's rows go to disk in row groups as they come, so memory stays flat)."""

    digits = None  # full precision
    ROW_GROUP = 4096

    def __init__(self, folder: Path, name: str, classes: list[str], geometry: bool = False) -> None:
        import pyarrow.parquet as pq

        self.folder, self.name = folder, name
        self.schema = record_schema(classes, geometry)
        self.temporary = folder / f".{name}.tmp-{os.getpid()}"
        self._writer = pq.ParquetWriter(self.temporary, self.schema)
        self._rows: list[dict[str, Any]] = []
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self._rows.append(record)
        self.count += 1
        if len(self._rows) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def close(self, entries: list[dict[str, Any]]) -> None:
        """Finish the file and publish it under its name with the inputs' ``entries``."""
        try:
            self._flush()
            self._writer.add_key_value_metadata({ENTRIES_KEY: json.dumps(entries).encode()})
            self._writer.close()
            _publish(self.temporary, self.folder / self.name)
        finally:
            self.temporary.unlink(missing_ok=True)

    def abort(self) -> None:
        self._writer.close()
        self.temporary.unlink(missing_ok=True)


def _part_name(prefix: str, keys: list[str]) -> str:
    digest = hashlib.sha1("\n".join(keys).encode("utf-8", "surrogateescape")).hexdigest()
    return f"part-{prefix}-{digest[:20]}.parquet"


@functools.lru_cache(maxsize=4)
def _recognizer(settings_json: str) -> Any:
    """The recogniser of a worker process, built once per settings (one thread each: the
    parallelism comes from the workers)."""
    from ferkit.inference.recognizer import EmotionRecognizer

    settings = json.loads(settings_json)
    kwargs: dict[str, Any] = {"detector": settings["detector"]} if settings["detector"] else {}
    if settings["max_pixels"] is not None:
        kwargs["max_pixels"] = settings["max_pixels"]
    return EmotionRecognizer(
        settings["model"], backend=settings["backend"], faces=settings["faces"], threads=1,
        tta=settings.get("tta", False), geometry=settings.get("geometry", False), **kwargs,
    )  # fmt: skip


def encode_geometries(geometries: list[Any]) -> bytes:
    """The geometry of an image's faces as bytes, to pass from the task that sees the
    image to the actor that classifies its faces: per face, its landmarks (float32) then
    its blendshapes, pose and presence (float64), at full precision."""
    from ferkit.geometry import LANDMARK_COUNT

    parts = []
    for geometry in geometries:
        if geometry is None:
            continue
        values = [*geometry.blendshapes.values(), geometry.yaw, geometry.pitch, geometry.roll,
                  geometry.presence]  # fmt: skip
        landmarks = np.ascontiguousarray(geometry.landmarks, np.float32).reshape(LANDMARK_COUNT, 3)
        parts += [landmarks.tobytes(), np.asarray(values, np.float64).tobytes()]
    return b"".join(parts)


def decode_geometries(data: bytes, count: int) -> list[Any]:
    """:func:`encode_geometries`' faces back (``count`` Nones when it holds none)."""
    from ferkit.geometry import BLENDSHAPE_NAMES, LANDMARK_COUNT, FaceGeometry

    if not data:
        return [None] * count
    landmark_bytes = LANDMARK_COUNT * 3 * 4
    value_bytes = (len(BLENDSHAPE_NAMES) + 4) * 8
    found = []
    for index in range(count):
        start = index * (landmark_bytes + value_bytes)
        landmarks = np.frombuffer(data, np.float32, LANDMARK_COUNT * 3, start)
        values = np.frombuffer(data, np.float64, len(BLENDSHAPE_NAMES) + 4, start + landmark_bytes)
        *scores, yaw, pitch, roll, presence = values.tolist()
        blendshapes = dict(zip(BLENDSHAPE_NAMES, scores, strict=True))
        found.append(
            FaceGeometry(
                landmarks.reshape(LANDMARK_COUNT, 3).copy(), blendshapes, yaw, pitch, roll, presence
            )
        )
    return found


def _copy_uri(uri: str, target: Path) -> Path:
    """Copy a file that pyarrow's file systems reach to ``target``, a block at a time."""
    import pyarrow.fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as stream, open(target, "wb") as handle:
            while block := stream.read(1 << 20):
                handle.write(block)
    except FileNotFoundError:
        raise OSError("no such file") from None
    except (ValueError, TypeError) as error:
        raise OSError(f"cannot be read through pyarrow ({error})") from None
    return target


def _source(item: dict[str, Any]) -> Source:
    path = item["path"]  # the file name's bytes: any name the file system allows
    return Source(
        item["source"], item["kind"], Path(os.fsdecode(bytes(path))) if path else None,
        url=item["url"] or None, error=item["error"] or None,
    )  # fmt: skip


def _read_image(source: Source, max_pixels: int, scratch: Path) -> tuple[Any, str]:
    """As the local engine reads an input it takes for an image (downloads included)."""
    from ferkit.images import ImageReadError
    from ferkit.inference.sources import download

    if source.kind == "url" and source.error is None:
        try:
            source.path = download(source.url, scratch)
        except ValueError as error:
            return None, str(error)
        source.kind = "unknown"
    elif source.kind == "uri" and source.error is None:
        try:
            data = read_uri(source.url)
            return decode_image(data, color=True, source=source.url, max_pixels=max_pixels), ""
        except ImageReadError as error:
            if error.kind == "not_image":
                return None, f"not an image or video ({error.reason})"
            return None, error.reason
        except OSError as error:
            return None, f"unreadable: {error}"
    return read_source_image(source, max_pixels)


def decode_and_detect(batch: dict[str, np.ndarray], settings: str) -> dict[str, list[Any]]:
    """Ray Data task: read and decode each image of ``batch`` and find its faces.

    Each row comes out with its status (``error`` with the reason when the image cannot
    be used), the face mode, the boxes (JSON), the face crops (bytes) and, where the
    recogniser computes it, the faces' geometry (:func:`encode_geometries`)."""
    recognizer = _recognizer(settings)
    columns = ("index", "source", "kind", "path", "status", "reason", "face_mode", "faces")
    rows: dict[str, list[Any]] = {name: [] for name in (*columns, "crops", "geometry")}
    with tempfile.TemporaryDirectory(prefix="ferkit-ray-") as scratch:
        for position in range(len(batch["source"])):
            item = {name: batch[name][position] for name in batch}
            source = _source(item)
            try:
                rgb, reason = _read_image(source, recognizer.max_pixels, Path(scratch))
            except (KeyboardInterrupt, SystemExit, MemoryError):
                raise
            except Exception as error:  # recorded, as the local engine records any input's
                logger.debug("%s failed", source.name, exc_info=True)
                rgb, reason = None, f"failed: {type(error).__name__}: {error}"
            faces: list[list[Any]] = []
            crops = geometry = b""
            mode = ""
            if rgb is not None:
                try:
                    mode, found, cut = recognizer.find_faces(rgb)
                    faces = [[*map(int, f.box), f.confidence] for f in found]
                    crops = np.ascontiguousarray(cut).tobytes()
                    geometry = encode_geometries(recognizer.face_geometry(rgb, found))
                except Exception as error:  # a detector failing on one odd image
                    logger.debug("%s failed", source.name, exc_info=True)
                    reason = detection_failure(error)
                    rgb = None
            values = (
                item["index"], source.name, source.kind if rgb is None else "image",
                item["path"],
                "skipped" if source.kind == "skipped" else "error" if rgb is None else "ok",
                reason, mode, json.dumps(faces),
            )  # fmt: skip
            for name, value in zip(columns, values, strict=True):
                rows[name].append(value)
            rows["crops"].append(crops)
            rows["geometry"].append(geometry)
    return rows


class FaceClassifier:
    """Ray Data actor: loads the model once, classifies the faces of a batch of images
    in one call, and writes the batch's records as one Parquet file."""

    def __init__(self, settings: str, parts: str) -> None:
        self.recognizer = _recognizer(settings)
        self.parts = Path(parts)
        self.schema = record_schema(self.recognizer.classes, self.recognizer.geometry)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        import pyarrow as pa

        from ferkit.faces import Face
        from ferkit.inference.results import ImageResult

        recognizer = self.recognizer
        shape = recognizer.crop_shape
        found = [
            [Face(box=tuple(f[:4]), confidence=f[4]) for f in json.loads(text)]
            for text in batch["faces"]
        ]
        crops = [
            np.frombuffer(data, np.uint8).reshape(len(faces), *shape)
            for data, faces in zip(batch["crops"], found, strict=True)
        ]
        stacked = np.concatenate(crops) if crops else np.zeros((0, *shape), np.uint8)
        failed = ""
        try:
            probabilities = recognizer.classify_faces(stacked) if len(stacked) else stacked
        except Exception as error:  # the batch's images are recorded as failed
            logger.debug("classifying a batch failed", exc_info=True)
            failed = f"failed: {type(error).__name__}: {error}"
        records: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        start = 0
        for position, name in enumerate(batch["source"]):
            path = batch["path"][position]
            local = Path(os.fsdecode(bytes(path))) if path else None
            source = Source(name, batch["kind"][position], local)
            status = batch["status"][position]
            if status in ("error", "skipped") or failed:
                record = {"source": name, "kind": source.kind,
                          "status": "skipped" if status == "skipped" else "error",
                          "reason": batch["reason"][position] or failed}  # fmt: skip
                records.append(record)
                entries.append(with_exact_name(record, source))
                continue
            faces = found[position]
            geometries = decode_geometries(bytes(batch["geometry"][position]), len(faces))
            result = ImageResult(face_mode=batch["face_mode"][position])
            scores = probabilities[start : start + len(faces)]
            result.extend(recognizer.face_results(faces, scores, geometries))
            start += len(faces)
            rows, entry = image_records(name, result, digits=None)
            records.extend(rows)
            entries.append(with_exact_name(entry, source))
        for entry, index in zip(entries, batch["index"], strict=True):
            entry["index"] = int(index)
        keys = [f"{i}:{n}" for i, n in zip(batch["index"], batch["source"], strict=True)]
        table = pa.Table.from_pylist(records, schema=self.schema)
        _write_part(self.parts, _part_name("images", keys), table, entries)
        return {"entry": [json.dumps(entry) for entry in entries]}


def predict_video_task(item: dict[str, Any], settings: str, parts: str) -> dict[str, Any]:
    """Ray task: one video, frame by frame as the local engine reads it, into one Parquet
    file; returns its summary entry."""
    from ferkit.inference.sources import download

    recognizer = _recognizer(settings)
    options = json.loads(settings)["video"]
    source = _source(item)
    name = _part_name("video", [f"{item['index']}:{source.name}"])
    writer = ParquetRecordWriter(Path(parts), name, recognizer.classes, recognizer.geometry)
    try:
        with tempfile.TemporaryDirectory(prefix="ferkit-ray-") as scratch:
            if source.kind in ("url", "uri") and source.error is None:
                suffix = Path(source.url.split("?")[0]).suffix
                try:
                    if source.kind == "url":
                        source.path = download(source.url, Path(scratch))
                    else:
                        source.path = _copy_uri(source.url, Path(scratch) / f"video{suffix}")
                    source.kind = "video"
                except (OSError, ValueError) as error:
                    source.error = str(error)
                    source.kind = "video"
            if source.error:
                record = {"source": source.name, "kind": source.kind, "status": "error",
                          "reason": source.error}  # fmt: skip
                writer.write(record)
                entry = with_exact_name(record, source)
            else:
                entry = predict_source(
                    recognizer, source, writer, None, False, set(), False, Path(scratch),
                    options,
                )  # fmt: skip
                entry.pop("interrupted", None)
        entry["index"] = int(item["index"])
        writer.close([entry])
    except BaseException:
        writer.abort()
        raise
    return entry


def _is_video(source: Source) -> bool:
    if source.kind == "video":
        return True
    if source.kind in ("url", "uri") and source.url:
        return Path(source.url.split("?")[0]).suffix.lower() in VIDEO_EXTENSIONS
    return False


def _done_entries(parts: Path) -> list[dict[str, Any]]:
    """The summary entries of the inputs already written under ``parts``."""
    import pyarrow.parquet as pq

    entries: list[dict[str, Any]] = []
    for part in sorted(parts.glob("part-*.parquet")):
        try:
            metadata = pq.read_metadata(part).metadata or {}
            entries.extend(json.loads(metadata[ENTRIES_KEY]))
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(
                f"{part}: not a complete ferkit partition ({error}); it was not written by "
                "ferkit predict --engine ray: move it out of the folder"
            ) from None
    return entries


def _is_part(path: Path) -> bool:
    """Whether ``path`` is a finished Parquet file of this engine (its metadata says so)."""
    import pyarrow.parquet as pq

    try:
        return ENTRIES_KEY in (pq.read_metadata(path).metadata or {})
    except (OSError, ValueError):
        return False


def _own_files(out: Path) -> list[str]:
    """The files under ``out`` that a ``predict --engine ray`` run writes: its marker,
    ``run.json``, ``summary.json``, its Parquet files, and the temporary files of a run
    that was killed while writing one of them.

    Raises:
        OutputExistsError: ``out`` holds anything else (named).
    """
    own_top = (MARKER, RUN_FILE, "summary.json")
    names = []
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(out).as_posix()
        folder, _, name = relative.rpartition("/")
        temporary = name.startswith(".") and ".tmp-" in name
        if folder == "":
            own = name in own_top or (temporary and name[1:].split(".tmp-")[0] in own_top)
        elif folder == PARTS:
            own = (temporary and name.startswith(".part-")) or (
                name.startswith("part-") and name.endswith(".parquet") and _is_part(path)
            )
        else:
            own = False
        if not own:
            raise OutputExistsError(
                f"--out {out} holds files that 'ferkit predict --engine ray' did not write "
                f"({relative}); move them out, or choose another --out"
            )
        names.append(relative)
    return names


def _prepare_out(out: Path, settings: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Check ``out`` against the policy of :mod:`ferkit.outputs` (plus resuming), and
    leave it ready: marker, ``run.json``, an empty or resumable ``predictions/``."""
    if out.is_symlink():
        raise OutputExistsError(f"--out {out} is a symbolic link; give the real folder path")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; give a folder path")
    holds = out.is_dir() and any(out.iterdir())
    ours = holds and written_by(out) == COMMAND
    if resume:
        if not ours:
            raise ValueError(
                f"--resume: {out} holds no earlier 'ferkit predict --engine ray' output; "
                "start without --resume"
            )
        try:
            earlier = json.loads((out / RUN_FILE).read_text())
        except (OSError, ValueError):
            raise ValueError(f"--resume: {out / RUN_FILE} is missing or damaged") from None
        changed = sorted(k for k in settings if earlier.get(k) != settings[k])
        if changed:
            raise ValueError(
                f"--resume: the settings differ from the earlier run's ({', '.join(changed)}); "
                "run again with the same settings, or start a new --out"
            )
        for name in _own_files(out):
            if name.rpartition("/")[2].startswith("."):
                (out / name).unlink(missing_ok=True)  # in flight when the run was killed
        return
    if holds:
        if not overwrite:
            raise OutputExistsError(
                f"--out {out} already holds files; choose another --out, pass --resume to "
                "finish an earlier 'ferkit predict --engine ray' run there, or --overwrite "
                "to replace it"
            )
        if not ours:
            raise OutputExistsError(
                f"--out {out} holds files ferkit predict --engine ray did not write; "
                "--overwrite replaces only its own output. Choose another --out"
            )
        for name in _own_files(out):
            (out / name).unlink(missing_ok=True)
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    write_marker(out, COMMAND)
    write_atomic(out / RUN_FILE, json.dumps(settings, indent=2) + "\n")


#: Ray's switch for a node address of this machine's loopback, with which a local
#: cluster listens on 127.0.0.1 alone: Ray turns it off on macOS and Windows, while on
#: Linux a local cluster takes the machine's network address and listens on every
#: interface (``ray.init(_node_ip_address="127.0.0.1")`` is turned back into the network
#: address). Ray reads it when imported, into ``ray._private.ray_constants``, and its
#: processes read it from the environment.
_LOOPBACK_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _on_loopback() -> Iterator[None]:
    """While a local cluster starts, give it this machine's loopback as its address; the
    process's settings are restored afterwards (a later ``ray.init(address=...)`` to
    another machine's cluster needs this machine's network address)."""
    import importlib

    constants = importlib.import_module("ray._private.ray_constants")
    saved = os.environ.get(_LOOPBACK_NODE_ENV), constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_NODE_ENV] = "0"
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(_LOOPBACK_NODE_ENV, None)
        else:
            os.environ[_LOOPBACK_NODE_ENV] = saved[0]
        constants.ENABLE_RAY_CLUSTER = saved[1]


def _start_ray(address: str | None, workers: int | None) -> tuple[Any, bool]:
    """Ray, connected to the cluster at ``address`` or to a local one started here (on
    this machine's loopback only, with Ray's token authentication); whether it was
    started here.

    Raises:
        RuntimeError: the local cluster would not listen on loopback alone.
    """
    ray = _require_ray()
    for name in ("ray", "ray.data"):  # their progress lines, not every step
        logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        return ray, False
    options: dict[str, Any] = {
        "include_dashboard": False, "logging_level": logging.WARNING,
        "configure_logging": True, "log_to_driver": True,
    }  # fmt: skip
    if address:
        ray.init(address=address, **options)
        return ray, True
    with _on_loopback():
        ray.init(num_cpus=workers or os.cpu_count() or 1, **options)
    node = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node.strip("[]")).is_loopback:
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray cluster took the address {node}, which other machines reach, "
            "though ferkit asked for loopback (a Ray version that no longer takes "
            f"{_LOOPBACK_NODE_ENV}?); start a cluster yourself ('ray start --head') and "
            "pass --address"
        )
    return ray, True


def predict_ray(
    inputs: list[str],
    out: str | os.PathLike[str],
    *,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = 256,
    resume: bool = False,
    overwrite: bool = False,
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
    progress: bool = True,
    echo: Any = None,
) -> PredictSummary:
    """Predict on ``inputs`` with Ray Data; the records go to ``out/predictions/`` as
    Parquet files, the summary to ``out/summary.json``.

    Args:
        address: the Ray cluster (``auto``: the one ``ray start`` made on this machine;
            ``ray://HOST:10001``: a remote one); None starts a local one with
            ``workers`` CPUs (default: all).
        workers: decode-and-detect tasks and classifier actors, each (default: the
            cluster's CPUs).
        batch_size: images per classifier call (and per Parquet file).
        resume: skip the inputs an earlier run into ``out`` already wrote.
        Others: as for :func:`ferkit.inference.predict.predict`.

    Raises:
        ImportError: Ray Data is not installed.
        ValueError: bad options, nothing to predict on, or ``resume`` without an earlier
            run (or with other settings).
        FileExistsError: ``out`` holds files and neither ``resume`` nor ``overwrite``.
    """
    from ferkit.inference.runtimes import load_classifier

    check_options(faces, every, detect_every, smoothing_s, max_frames, max_pixels)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    _require_ray()
    echo = echo or (lambda line: None)
    sources = expand_inputs(list(inputs))
    if not sources:
        raise ValueError("nothing to predict on: give image/video files, folders or manifests")
    out = Path(out).absolute()  # workers elsewhere, or in another folder, write there too
    check_not_overlapping(out, read_paths(list(inputs), sources))
    classifier = load_classifier(model, backend)  # a bad model fails here, before any work
    detector = detector or DEFAULT_DETECTOR
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    if model is not None and Path(model).exists():
        model = os.path.abspath(model)
    keys = "\n".join(f"{i}:{s.name}" for i, s in enumerate(sources))
    settings = {
        "model": None if model is None else os.fspath(model),
        "model_sha256": hashlib.sha256(Path(classifier.source).read_bytes()).hexdigest(),
        "detector": detector, "backend": backend, "faces": faces, "max_pixels": max_pixels,
        "tta": bool(tta), "classes": classifier.classes,
        "video": {"every": every, "detect_every": detect_every, "smoothing_s": smoothing_s,
                  "max_frames": max_frames},
        "inputs_sha256": hashlib.sha256(keys.encode("utf-8", "surrogateescape")).hexdigest(),
    }  # fmt: skip
    if geometry:  # only when on: a run without it resumes as before
        settings["geometry"] = True
    with locked(out):
        _prepare_out(out, settings, resume, overwrite)
        parts = out / PARTS
        earlier = _done_entries(parts) if resume else []
        done = {entry["source"] for entry in earlier}
        todo = [(i, s) for i, s in enumerate(sources) if s.name not in done]
        if resume:
            echo(f"resume: {len(done)} input(s) already written, {len(todo)} to do")
        started = time.perf_counter()
        ray, started_ray = _start_ray(address, workers)
        try:
            workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            entries = _run(ray, todo, json.dumps(settings), parts, workers, batch_size, progress)
        finally:
            if started_ray:
                ray.shutdown()
        for stale in parts.glob(".part-*"):  # left by attempts that Ray ran again
            stale.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
        summary = _finish(out, sources, earlier + entries, faces, seconds, echo)
        document = {
            "engine": "ray", "workers": workers, "model": path_text(classifier.source),
            "detector": detector, "faces_mode": faces, "classes": classifier.classes,
            "counts": summary.counts(), "failed": len(summary.failed),
            "exit_status": summary.exit_status(), "interrupted": False, "resumed": len(done),
            "faces": summary.faces, "frames": summary.frames, "seconds": round(seconds, 3),
            "peak_memory_mb": summary.peak_memory_mb, "hints": summary.hints,
            "sources": summary.sources,
        }  # fmt: skip
        write_atomic(out / "summary.json", json.dumps(document, indent=2) + "\n")
        write_marker(out, COMMAND)
    return summary


def _finish(
    out: Path,
    sources: list[Source],
    entries: list[dict[str, Any]],
    faces_mode: str,
    seconds: float,
    echo: Any,
) -> PredictSummary:
    """The run's summary from every input's entry, in the order of the inputs."""
    order = {s.name: i for i, s in enumerate(sources)}
    entries = sorted(entries, key=lambda e: e.get("index", order.get(e["source"], 0)))
    summary = PredictSummary(
        out=out, sources=[{k: v for k, v in e.items() if k != "index"} for e in entries]
    )
    summary.faces = sum(entry.get("faces", 0) for entry in summary.sources)
    summary.frames = sum(entry.get("frames", 0) for entry in summary.sources)
    summary.seconds = seconds
    for entry in summary.sources:
        echo(describe(entry))
    summary.hints = hints_for(summary, SimpleNamespace(faces=faces_mode))
    for hint in summary.hints:
        echo(f"hint: {hint}")
    summary.peak_memory_mb = peak_memory_mb()
    return summary


def _run(
    ray: Any,
    todo: list[tuple[int, Source]],
    settings: str,
    parts: Path,
    workers: int,
    batch_size: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Images through Ray Data, videos as Ray tasks (each waits for a free CPU); their
    entries."""
    from ferkit.outputs import progress_bar

    items = [
        {"index": i, "source": s.name, "kind": s.kind,
         "path": b"" if s.path is None else os.fsencode(s.path.absolute()), "url": s.url or "",
         "error": s.error or ""}
        for i, s in todo
    ]  # fmt: skip
    videos = [item for item, (_, s) in zip(items, todo, strict=True) if _is_video(s)]
    images = [item for item, (_, s) in zip(items, todo, strict=True) if not _is_video(s)]
    video_task = ray.remote(predict_video_task).options(num_cpus=1, max_retries=VIDEO_RETRIES)
    launched = {video_task.remote(item, settings, os.fspath(parts)): item for item in videos}
    pending = list(launched)
    entries: list[dict[str, Any]] = []
    if images:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        blocks = max(min(len(images), 2 * workers), -(-len(images) // batch_size))
        workers = min(workers, blocks)
        dataset = ray.data.from_items(images, override_num_blocks=blocks)
        dataset = dataset.map_batches(
            decode_and_detect, fn_kwargs={"settings": settings}, batch_size=min(64, batch_size),
            batch_format="numpy", num_cpus=TASK_CPUS,
            compute=ray.data.TaskPoolStrategy(size=workers),
        ).map_batches(
            FaceClassifier, fn_constructor_kwargs={"settings": settings, "parts": os.fspath(parts)},
            batch_size=batch_size, batch_format="numpy", num_cpus=TASK_CPUS,
            compute=ray.data.ActorPoolStrategy(size=workers),
        )  # fmt: skip
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            entries.extend(json.loads(text) for text in batch["entry"])
    bar = progress_bar(
        total=len(pending), desc="videos", unit="video", disable=not progress or not pending
    )
    options = json.loads(settings)
    schema = record_schema(options["classes"], options.get("geometry", False))
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            entries.append(ray.get(ready[0]))
        except ray.exceptions.RayError as error:  # crashed on every attempt: recorded
            entries.append(_failed_video(launched[ready[0]], error, parts, schema))
        bar.update(1)
    bar.close()
    return entries


def _failed_video(
    item: dict[str, Any], error: BaseException, parts: Path, schema: Any
) -> dict[str, Any]:
    """The error entry (and Parquet file) of a video whose task failed every attempt."""
    import pyarrow as pa

    summary = str(error).strip().splitlines()[-1] if str(error).strip() else ""
    reason = (
        f"failed: the video's task ended {VIDEO_RETRIES + 1} times "
        f"({type(error).__name__}: {summary[:300]})"
    )
    source = _source(item)
    record = {"source": source.name, "kind": "video", "status": "error", "reason": reason}
    entry = {**with_exact_name(record, source), "index": int(item["index"])}
    table = pa.Table.from_pylist([record], schema=schema)
    _write_part(parts, _part_name("video", [f"{item['index']}:{source.name}"]), table, [entry])
    return entry
