"""Benchmarks that print their figures: medians over repeated runs on this machine."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SHARED_ENV = "FERKIT_SHARED"


def shared_dir() -> Path:
    """The shared data folder: ``$FERKIT_SHARED``, else ``../shared`` from the project root."""
    if os.environ.get(SHARED_ENV):
        return Path(os.environ[SHARED_ENV])
    beside_cwd = Path.cwd().resolve().parent / "shared"
    if beside_cwd.is_dir():
        return beside_cwd
    return Path(__file__).resolve().parents[3] / "shared"


def benchmark_prepare(source: str | os.PathLike[str], repeats: int = 3, workers: int = 0) -> str:
    """Time ``prepare`` on a source ``repeats`` times; return a printable report."""
    from ferkit.prepare import PrepareConfig, prepare

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: benchmark source not found; set {SHARED_ENV}")
    times, count = [], 0
    work = Path(tempfile.mkdtemp(prefix="ferkit-bench-"))
    try:
        for repeat in range(repeats):
            out = work / f"run{repeat}"
            started = time.perf_counter()
            result = prepare(source, out, PrepareConfig(workers=workers), progress=False)
            times.append(time.perf_counter() - started)
            count = sum(split["count"] for split in result.manifest["splits"].values())
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = statistics.median(times)
    return "\n".join(
        [
            f"prepare {source} ({count} faces, {os.cpu_count()} cores, workers={workers or 'auto'})",
            f"  runs (s): {', '.join(f'{t:.2f}' for t in times)}",
            f"  median: {median:.2f} s  ({count / median:,.0f} images/s)",
        ]
    )
