"""How ferkit writes its output folders: whole or not at all, and never over a user's files.

Every command that writes a folder of results (``prepare``, ``predict``, ``evaluate``,
``compare``, ``export``, ``soft-labels``) follows one policy, implemented here:

- **Refuse, don't replace.** If ``--out`` exists and holds anything, the command stops
  before any work (exit status 2) unless ``--overwrite`` is given. ``--overwrite``
  replaces only a folder that the same ferkit command wrote (it holds the marker file
  :data:`MARKER`), never anything else.
- **Never inside the inputs.** An output folder that is, contains, or lies inside one of
  the command's inputs (a dataset, a folder of photos, a model) is refused, so a run can
  neither delete its own source nor read its previous results as new inputs.
- **Atomic.** Results are written into a hidden staging folder beside ``--out``
  (``.NAME.tmp-*``) and renamed into place when complete: a crash, a kill or a full
  disk never leaves a half-written folder that looks finished. Staging folders left by a
  killed run are removed by the next run into the same ``--out``.
- **One writer.** A lock (``.NAME.lock`` beside ``--out``) makes a second run into the
  same folder fail at once with a clear message instead of interleaving two runs.

``ferkit train`` keeps a run folder that grows epoch by epoch; it takes the same lock,
writes each file atomically (:func:`write_atomic`) and refuses a folder that holds a run
unless told ``--resume`` or ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MARKER = ".ferkit-output.json"

#: Prepared datasets written before the marker existed are still recognised by their
#: manifest, which names the ferkit version that wrote it.
_MANIFEST_COMMANDS = ("prepare", "soft-labels")


class OutputExistsError(FileExistsError):
    """``--out`` holds something that the command may not replace."""


class OutputLockedError(RuntimeError):
    """Another process is writing the same output folder."""


def path_text(path: str | os.PathLike[str]) -> str:
    """A file name as readable text for reports, CSV and JSON, whatever its bytes.

    Names that are valid UTF-8 come back unchanged. Bytes that are not (a file copied from
    an old Latin-1 system, say) are written as ``\\xNN`` escapes, the form ``$'...'`` takes
    in bash, so the text stays printable and the file can still be found.
    """
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def path_hex(path: str | os.PathLike[str]) -> str | None:
    """The exact bytes of a name in hex when :func:`path_text` had to escape it, else None."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.hex()
    return None


def overlapping(out: Path, inputs: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The first input that ``out`` is, contains or lies inside, if any."""
    out = Path(out).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if out == source or out in source.parents or source in out.parents:
            return Path(given)
    return None


def check_not_overlapping(
    out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]
) -> None:
    """Refuse an output folder that is, contains or lies inside an input.

    Raises:
        ValueError: naming both paths.
    """
    clash = overlapping(Path(out), inputs)
    if clash is not None:
        out_abs, clash_abs = Path(out).resolve(), clash.resolve()
        how = (
            "is"
            if out_abs == clash_abs
            else ("contains" if out_abs in clash_abs.parents else "lies inside")
        )
        raise ValueError(
            f"--out {out} {how} the input {clash}: writing there could destroy or re-read "
            "the input; choose an --out outside it"
        )


def written_by(folder: Path) -> str | None:
    """The ferkit command that wrote ``folder`` (from its marker), else None."""
    marker = folder / MARKER
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text())["command"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return None


def _looks_written_by(folder: Path, command: str) -> bool:
    if written_by(folder) == command:
        return True
    if command not in _MANIFEST_COMMANDS or (folder / MARKER).exists():
        return False
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "ferkit_version" in manifest and "splits" in manifest


def _files(folder: Path) -> set[str]:
    """Every file and link below ``folder``, as paths relative to it."""
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() or path.is_symlink()
    }


def _written_files(folder: Path) -> set[str]:
    """The files an earlier ferkit output recorded as its own (with its marker)."""
    try:
        recorded = json.loads((folder / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, list):
        return {str(name) for name in recorded} | {MARKER}
    # a prepared dataset from before the marker: its manifest and split files
    return {"manifest.json", MARKER} | {p.name for p in folder.glob("*.npz")}


def check_replaceable(out: str | os.PathLike[str], command: str, overwrite: bool) -> None:
    """Refuse ``out`` when it holds something this command may not replace.

    Raises:
        OutputExistsError: ``out`` is a file; or it holds files and ``overwrite`` is
            false; or it holds files that ``ferkit <command>`` did not write.
    """
    out = Path(out)
    if out.is_symlink():
        raise OutputExistsError(
            f"--out {out} is a symbolic link; give the real folder path ({os.path.realpath(out)})"
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; give a folder path")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"--out {out} already holds files; choose another --out, or pass --overwrite "
            f"to replace the results of an earlier 'ferkit {command}' there"
        )
    if not _looks_written_by(out, command):
        other = written_by(out)
        what = f"the output of 'ferkit {other}'" if other else "files ferkit did not write"
        raise OutputExistsError(
            f"--out {out} holds {what}; --overwrite replaces only an earlier "
            f"'ferkit {command}' output. Choose another --out"
        )
    foreign = sorted(_files(out) - _written_files(out))
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise OutputExistsError(
            f"--out {out} holds files that the earlier 'ferkit {command}' did not write "
            f"({shown}); --overwrite would delete them. Move them out, or choose another --out"
        )


@contextlib.contextmanager
def locked(out: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of an output folder (``.NAME.lock`` beside it) for the block.

    Raises:
        OutputLockedError: another process holds it.
    """
    out = Path(out).absolute()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"--out {out}: cannot create {out.parent} ({error.strerror}); choose a writable "
            "location"
        ) from None
    lock_path = out.parent / f".{out.name}.lock"
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: no protection, but no error
        yield
        return
    while True:
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
        except OSError as error:
            raise OSError(
                f"--out {out}: cannot write in {out.parent} ({error.strerror}); choose a "
                "writable location"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise OutputLockedError(
                f"{out}: another ferkit process{f' (pid {holder})' if holder else ''} is "
                "writing there now; wait for it to finish or choose another --out"
            ) from None
        # The file may have been removed by the previous holder between our open and lock.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        handle.close()


def remove_stale(out: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging folders that killed runs left beside ``out``.

    Call it only while holding :func:`locked` for ``out``: any staging folder then
    belongs to a run that is no longer alive.
    """
    out = Path(out).absolute()
    removed = []
    if not out.parent.is_dir():
        return removed
    name = glob.escape(out.name)
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for stale in out.parent.glob(pattern):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    if removed:
        logger.info("removed %d stale staging folder(s) beside %s", len(removed), out)
    return removed


@contextlib.contextmanager
def output_folder(
    out: str | os.PathLike[str],
    command: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    on_complete: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Write a command's results into ``out`` under the policy of this module.

    Yields a staging folder to write into. When the block ends normally the folder gets
    the marker and replaces ``out`` in one rename; when it raises, nothing of it remains.

    Raises:
        ValueError: ``out`` overlaps an input.
        OutputExistsError: ``out`` may not be replaced (see :func:`check_replaceable`).
        OutputLockedError: another process is writing ``out``.
    """
    out = Path(out)
    check_not_overlapping(out, [given for given in inputs if given is not None])
    check_replaceable(out, command, overwrite)
    with locked(out):
        remove_stale(out)
        parent = out.absolute().parent
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        try:
            yield staging
            write_marker(staging, command)
            if on_complete is not None:
                on_complete(staging)
            check_replaceable(out, command, overwrite)  # something may have appeared
            swap_into_place(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def write_marker(folder: Path, command: str, **details: Any) -> None:
    """Mark ``folder`` as written by ``ferkit <command>``, listing the files in it, which
    are all that a later ``--overwrite`` may replace."""
    from ferkit import __version__

    record = {
        "command": command,
        "ferkit_version": __version__,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **details,
        "files": sorted(_files(folder) - {MARKER}),
    }
    write_atomic(folder / MARKER, json.dumps(record, indent=2) + "\n")


def swap_into_place(staging: Path, out: Path) -> None:
    """Rename a complete staging folder to ``out``, replacing what is there in one step
    (the old folder is kept until the new one is in place)."""
    staging.chmod(0o755)  # mkdtemp makes it private; results are for the user's tools too
    if out.exists():
        old = out.absolute().parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        try:
            staging.rename(out)
        except BaseException:
            old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write a file through a temporary name and a rename: readers and a later run see
    the old content or the new one, never half of it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(temporary, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def default_run_folder(root: str | os.PathLike[str]) -> Path:
    """A new, timestamped folder under ``root`` (``root/YYYYmmdd-HHMMSS``, with a suffix
    when that exists already): where a command writes when no ``--out`` is given."""
    root = Path(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, counter = root / stamp, 2
    while candidate.exists() or (root / f".{candidate.name}.lock").exists():
        candidate, counter = root / f"{stamp}-{counter}", counter + 1
    return candidate


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory, in MB, of this process and of the largest of its finished
    worker processes (what a batch run reports, so that its memory bound can be checked).

    This process's own peak comes from ``/proc/self/status`` (VmHWM) where there is one:
    ``getrusage`` would also count the memory of the parent it was forked from.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return {}
    scale = 1 / 2**20 if os.uname().sysname == "Darwin" else 1 / 1024  # bytes vs KiB
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        own = int(line.split()[1]) / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return {"process": round(own, 1), "largest_worker": round(children, 1)}


def format_memory(peak: dict[str, float]) -> str:
    """``peak memory 612 MB (largest worker 301 MB)`` from :func:`peak_memory_mb`."""
    if not peak:
        return "peak memory not measured on this platform"
    text = f"peak memory {peak['process']:.0f} MB"
    return text + (
        f" (largest worker {peak['largest_worker']:.0f} MB)" if peak["largest_worker"] else ""
    )


#: How often a progress bar redraws when its stream is not a terminal (a log file, a pipe,
#: systemd's journal): a line every half minute and the last one, not ten a second.
LOG_REFRESH_S = 30.0


def progress_bar(*args: Any, **options: Any) -> Any:
    """A ``tqdm`` progress bar (same arguments) on stderr for a person waiting on a run.

    On a terminal it redraws as tqdm does; when stderr (or the ``file`` given) is not a
    terminal, it redraws at most every :data:`LOG_REFRESH_S` seconds, so a log keeps a few
    lines of progress instead of thousands.
    """
    import sys

    from tqdm import tqdm

    stream = options.get("file") or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        options.setdefault("mininterval", LOG_REFRESH_S)
        options.setdefault("maxinterval", LOG_REFRESH_S)
    return tqdm(*args, **options)
