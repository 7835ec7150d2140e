"""Video jobs: an uploaded video is checked, processed in the background by the same
pipeline as ``ferkit predict VIDEO --annotate`` (detection, classification, tracking,
smoothing, an annotated video), and its results kept for a while.

A job lives in a folder of its own under the jobs folder, named by a random id, with
``job.json`` (status and progress, written atomically) beside the results, so that every
worker process of a server reads the same jobs from disk. The uploaded file is removed
when its job ends, whatever happens; finished jobs are removed after their time to live.

A server without ``--jobs-dir`` keeps its jobs in a temporary folder of its own
(:func:`make_jobs_dir`), locked while it runs and removed when it stops; the folders of
a server that was killed (``kill -9``, a crash) are removed by the next server to start
(:func:`sweep_stale_jobs_dirs`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from ferkit.extras import native_stderr_silenced
from ferkit.images import VIDEO_EXTENSIONS, sniff_format
from ferkit.inference.results import FaceResult
from ferkit.outputs import write_atomic
from ferkit.serve.engine import ModelUnavailable, face_json, geometry_json

try:
    import fcntl
except ImportError:  # Windows: no sweeping of stale folders
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[0-9a-f]{32}")

#: Seconds between two progress writes of a running job.
PROGRESS_EVERY_S = 0.25

#: Annotated video of a job, relative to its folder.
ANNOTATED = "result/annotated/input.webm"

#: Frame rate up to which a video's frames are all processed: a file that claims more
#: frames a second still gets at most this many for each second of the duration limit.
MAX_FPS = 60.0


class JobStopped(RuntimeError):
    """The server is stopping: a running job ends early."""


class JobError(ValueError):
    """An upload that cannot become a job; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TooManyJobs(RuntimeError):
    """All job slots of this process are taken: answer 429 with Retry-After."""


#: Name prefix of the temporary jobs folders servers make (:func:`make_jobs_dir`).
JOBS_DIR_PREFIX = "ferkit-serve-jobs-"

#: File in such a folder that its server holds locked while it runs (and whose text is
#: the server's process id, for people).
OWNER_LOCK = "server.lock"


def make_jobs_dir() -> tuple[Path, io.TextIOWrapper]:
    """A new temporary jobs folder, locked by this process, and the open lock file.

    The lock lasts as long as the file stays open: closing it, or the process ending in
    any way (``kill -9`` included), releases it, which tells
    :func:`sweep_stale_jobs_dirs` the folder is stale.
    """
    folder = Path(tempfile.mkdtemp(prefix=JOBS_DIR_PREFIX))
    making = folder / f".{OWNER_LOCK}"  # named once locked: a sweep never sees it unlocked
    lock = open(making, "w")  # noqa: SIM115 - held open while serving
    if fcntl is not None:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    making.rename(folder / OWNER_LOCK)
    return folder, lock


def sweep_stale_jobs_dirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the temporary jobs folders under ``root`` (default: the temporary folder)
    whose server is gone: ours by name, by owner and by a lock file that no process holds.
    A folder without a lock file (another program's, or one being made) is left alone,
    as is every folder where file locks are not available. Returns the folders removed.
    """
    if fcntl is None:
        return []
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{JOBS_DIR_PREFIX}*"):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            descriptor = os.open(folder / OWNER_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        with os.fdopen(descriptor) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: its server is running
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        logger.info("removed the jobs folders of stopped servers: %s", ", ".join(map(str, removed)))
    return removed


def valid_job_id(job_id: str) -> bool:
    """Whether ``job_id`` has the form of an id this service makes (so that nothing else
    ever reaches the file system)."""
    return bool(_JOB_ID.fullmatch(job_id))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class VideoJobs:
    """The video jobs of one server process.

    Args:
        root: the jobs folder (shared by the server's processes).
        recognizer: the process's base recogniser; each job thread uses its own copy.
        recognizer_for: the base recogniser of a model a job names (default: none may
            be named).
        max_jobs: jobs processed at once; more are refused (:class:`TooManyJobs`).
        ttl_s: seconds a finished job is kept.
        max_video_s: longest video accepted; a video whose length is unknown (or whose
            frame rate is over :data:`MAX_FPS`) is cut after that many seconds' frames.
        max_pixels: largest frame (width x height) accepted.
    """

    def __init__(
        self,
        root: Path,
        recognizer: Any,
        *,
        max_jobs: int,
        ttl_s: float,
        max_video_s: float,
        max_pixels: int,
        recognizer_for: Callable[[str], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.recognizer = recognizer
        self.recognizer_for = recognizer_for
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.max_video_s = max_video_s
        self.max_pixels = max_pixels
        self._executor = ThreadPoolExecutor(max_workers=max_jobs, thread_name_prefix="ferkit-job")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._active = 0
        self._stop = threading.Event()
        self._sweeper = threading.Thread(
            target=self._sweep_loop, name="ferkit-jobs-sweep", daemon=True
        )
        self._sweeper.start()

    @property
    def active(self) -> int:
        """Jobs being checked or processed now."""
        with self._lock:
            return self._active

    # -- creating a job -------------------------------------------------------------

    def submit(
        self,
        upload: BinaryIO,
        filename: str,
        detector: str | None = None,
        model: str | None = None,
        geometry: bool = False,
    ) -> dict[str, Any]:
        """Check an uploaded video and queue it (``geometry``: its faces get their
        blendshapes, head pose and mesh, and its tracks their blinks, smile and head
        turns).

        Raises:
            TooManyJobs: every job slot is taken.
            JobError: not a video (415), or too long (413).
        """
        with self._lock:
            if self._active >= self.max_jobs:
                raise TooManyJobs(
                    f"{self._active} video jobs are being processed, the most this server "
                    "takes at once; try again when one has finished"
                )
            self._active += 1
        folder = None
        try:
            job_id = secrets.token_hex(16)
            folder = self.root / job_id
            folder.mkdir()
            suffix = Path(filename).suffix.lower()
            video = folder / f"input{suffix if suffix in VIDEO_EXTENSIONS else '.mp4'}"
            with open(video, "wb") as handle:
                shutil.copyfileobj(upload, handle, 1 << 20)
            info = self._check_video(video)
            max_frames = max(1, math.ceil(self.max_video_s * min(info.fps, MAX_FPS)))
            state = {
                "id": job_id,
                "status": "queued",
                "filename": filename,
                "created": time.time(),
                "updated": time.time(),
                "pid": os.getpid(),
                "detector": detector,
                "model": model,
                "geometry": bool(geometry),
                "video": {
                    "fps": round(info.fps, 3),
                    "frames": info.frame_count,
                    "width": info.width,
                    "height": info.height,
                    "duration_s": None
                    if info.frame_count is None
                    else round(info.frame_count / info.fps, 3),
                },
                "progress": {"frames_done": 0, "frames_total": info.frame_count, "fraction": 0.0},
            }
            self._write_state(folder, state)
            self._executor.submit(self._run, folder, video, dict(state), max_frames)
            return {key: value for key, value in state.items() if key != "pid"}
        except BaseException:
            with self._lock:
                self._active -= 1
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def _check_video(self, video: Path) -> Any:
        from ferkit.inference.video import open_video

        with open(video, "rb") as handle:
            head = handle.read(16)
        if not head:
            raise JobError("the uploaded file is empty; send a video file", 415)
        image_format = sniff_format(head)
        if image_format is not None:
            raise JobError(
                f"the upload is a {image_format} image, not a video; send photos to /v1/predict",
                415,
            )
        try:
            with native_stderr_silenced():  # FFmpeg's own lines about the broken file
                capture, info = open_video(video)
        except (FileNotFoundError, ValueError):
            raise JobError(
                "the upload is not a readable video (corrupt, or a codec this server's FFmpeg "
                "lacks); send an MP4 (H.264), WebM or AVI file",
                415,
            ) from None
        capture.release()
        if info.width * info.height > self.max_pixels:
            raise JobError(
                f"the video's frames are {info.width}x{info.height}, over this server's "
                f"limit of {self.max_pixels / 1e6:.0f} megapixels; downscale it",
                413,
            )
        if info.frame_count is not None and info.frame_count / info.fps > self.max_video_s:
            raise JobError(
                f"the video lasts {info.frame_count / info.fps:.0f} s, over this server's "
                f"limit of {self.max_video_s:g} s; cut it into shorter parts",
                413,
            )
        return info

    # -- running a job --------------------------------------------------------------

    def _thread_recognizer(self, model: str | None = None, geometry: bool = False) -> Any:
        """This job thread's own recogniser of ``model`` (``None``: the served one),
        computing face geometry or not."""
        made = self._local.__dict__.setdefault("recognizers", {})
        if (model, geometry) not in made:
            if model is not None and self.recognizer_for is None:
                raise ValueError(f"model {model!r} is not offered here")
            base = self.recognizer if model is None else self.recognizer_for(model)
            made[model, geometry] = base.with_detector(geometry=geometry)
        return made[model, geometry]

    def _run(self, folder: Path, video: Path, state: dict[str, Any], max_frames: int) -> None:
        from ferkit.inference.predict import predict

        try:
            recognizer = self._thread_recognizer(state.get("model"), state.get("geometry", False))
            if state["detector"]:
                recognizer = recognizer.with_detector(state["detector"])
            state.update(status="running", updated=time.time())
            self._write_state(folder, state)
            last_write = [0.0]

            def on_frame(_name: str, done: int, total: int | None) -> None:
                if self._stop.is_set():
                    raise JobStopped("the server stopped before the job finished")
                now = time.monotonic()
                if now - last_write[0] < PROGRESS_EVERY_S:
                    return
                last_write[0] = now
                total = total or state["progress"]["frames_total"]
                fraction = min(done / total, 1.0) if total else None
                state["progress"] = {"frames_done": done, "frames_total": total,
                                     "fraction": None if fraction is None else round(fraction, 4)}  # fmt: skip
                state["updated"] = time.time()
                self._write_state(folder, state)

            summary = predict(
                [str(video)], folder / "result", fmt="jsonl", annotate=True,
                annotated_video="webm", recognizer=recognizer, progress=False,
                max_frames=max_frames, on_frame=on_frame,
            )  # fmt: skip
            entry = summary.sources[0]
            if self._stop.is_set():
                raise JobStopped("the server stopped before the job finished")
            if entry["status"] == "error":
                raise JobError(entry.get("reason", "the video could not be processed"), 415)
            result = _result_document(folder / "result", entry, max_frames)
            write_atomic(folder / "result.json", json.dumps(result))
            frames = entry.get("frames", 0)
            state["progress"] = {"frames_done": frames, "frames_total": frames, "fraction": 1.0}
            if entry["status"] == "partial":  # done, with what it covers said
                announced = entry["frames_announced"]
                state["note"] = entry["reason"]
                state["progress"] = {"frames_done": frames, "frames_total": announced,
                                     "fraction": round(frames / announced, 4)}  # fmt: skip
            state.update(status="done", updated=time.time())
        except Exception as error:  # the job fails, the server goes on
            logger.warning("video job %s failed", folder.name, exc_info=True)
            known = isinstance(error, JobError | JobStopped | ModelUnavailable)
            reason = str(error) if known else f"processing failed ({type(error).__name__})"
            state.update(status="failed", error=reason, updated=time.time())
        finally:
            video.unlink(missing_ok=True)
            with self._lock:
                self._active -= 1
        if folder.exists():
            self._write_state(folder, state)

    @staticmethod
    def _write_state(folder: Path, state: dict[str, Any]) -> None:
        with contextlib.suppress(FileNotFoundError):  # the job was removed meanwhile
            write_atomic(folder / "job.json", json.dumps(state))

    # -- reading jobs ---------------------------------------------------------------

    def folder(self, job_id: str) -> Path | None:
        """The folder of a job, or None when there is no such job."""
        if not valid_job_id(job_id):
            return None
        folder = self.root / job_id
        return folder if (folder / "job.json").is_file() else None

    def status(self, job_id: str) -> dict[str, Any] | None:
        """A job's status and progress, with its results when done; None: no such job."""
        folder = self.folder(job_id)
        if folder is None:
            return None
        try:
            state = json.loads((folder / "job.json").read_text())
        except (OSError, ValueError):
            return None
        if state["status"] in ("queued", "running") and not _process_alive(state["pid"]):
            state.update(status="failed", error="the server process handling it stopped")
        state.pop("pid", None)
        if state["status"] == "done":
            try:
                state["result"] = json.loads((folder / "result.json").read_text())
            except (OSError, ValueError):
                return None
        return state

    def annotated(self, job_id: str) -> Path | None:
        """The annotated video of a finished job, or None."""
        folder = self.folder(job_id)
        if folder is None or not (folder / "result.json").is_file():
            return None
        path = folder / ANNOTATED
        return path if path.is_file() else None

    # -- removing jobs --------------------------------------------------------------

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove the jobs that ended over ``ttl_s`` ago, and those whose process
        stopped; returns their ids."""
        now = time.time() if now is None else now
        removed = []
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            if not valid_job_id(folder.name):
                continue
            try:
                state = json.loads((folder / "job.json").read_text())
            except (OSError, ValueError):
                # A job being created has no state yet; a folder that never gets one is old.
                if now - folder.stat().st_mtime < self.ttl_s:
                    continue
                state = {"status": "failed", "updated": 0}
            ended = state["status"] in ("done", "failed") or not _process_alive(state.get("pid", 0))
            if ended and now - state["updated"] >= self.ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

    def _sweep_loop(self) -> None:
        while not self._stop.wait(min(60.0, max(self.ttl_s / 4, 0.5))):
            try:
                self.sweep()
            except OSError:
                logger.warning("sweeping the video jobs failed", exc_info=True)

    def close(self) -> None:
        """Stop the sweeper, end the running jobs at their next frame, and mark the
        queued ones failed (their uploads removed)."""
        self._stop.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            try:
                state = json.loads((folder / "job.json").read_text())
            except (OSError, ValueError):
                continue
            if state["status"] == "queued" and state.get("pid") == os.getpid():
                for upload in folder.glob("input*"):
                    upload.unlink(missing_ok=True)
                state.update(status="failed", error="the server stopped before the job ran",
                             updated=time.time())  # fmt: skip
                self._write_state(folder, state)


def _result_document(out: Path, entry: dict[str, Any], max_frames: int) -> dict[str, Any]:
    """A finished job's results: the summary of ``ferkit predict`` for the video and its
    per-frame faces, read back from the records it wrote."""
    frames: dict[int, dict[str, Any]] = {}
    classes = json.loads((out / "summary.json").read_text())["classes"]
    with open(out / "predictions.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("status") != "ok":
                continue
            frame = frames.setdefault(
                record["frame"], {"index": record["frame"], "time_s": record["time_s"], "faces": []}
            )
            face = face_json(_record_face(record, classes))
            if "landmarks" in record:  # the job asked for geometry
                blendshapes = {
                    key[3:]: value for key, value in record.items() if key.startswith("bs_")
                }
                pose = record["yaw"], record["pitch"], record["roll"]
                face.update(geometry_json(blendshapes, *pose, record["landmarks"]))
            frame["faces"].append(face)
    return {
        "classes": classes,
        "frames_read": entry.get("frames", 0),
        "frames_announced": entry.get("frames_announced"),
        "partial": entry["status"] == "partial",
        "frames_with_face": entry.get("frames_with_face", 0),
        "tracks": entry.get("tracks", 0),
        "share_of_time": entry.get("share_of_time", {}),
        "share_of_time_per_track": entry.get("share_of_time_per_track", {}),
        **(
            {"geometry_per_track": entry["geometry_per_track"]}
            if "geometry_per_track" in entry
            else {}
        ),
        "cut_at_limit": entry.get("frames", 0) >= max_frames,
        "note": entry.get("reason"),
        "frames": [frames[index] for index in sorted(frames)],
    }


def _record_face(record: dict[str, Any], classes: list[str]) -> FaceResult:
    """A video face read back from its prediction record."""
    return FaceResult(
        box=(record["x"], record["y"], record["width"], record["height"]),
        detector_confidence=record.get("detector_confidence"),
        label=record["label"],
        probabilities={name: record[f"p_{name}"] for name in classes},
        track_id=record.get("track_id"),
        raw_label=record.get("raw_label"),
        raw_probabilities={name: record[f"raw_p_{name}"] for name in classes},
    )
