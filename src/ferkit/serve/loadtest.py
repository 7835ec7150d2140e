"""``ferkit benchmark serve``: start ``ferkit serve`` on a free loopback port, post photos
to it from several concurrent clients for a bounded time, and report requests/s,
latency percentiles, every status seen and the server's memory before and after.

The load never leaves this machine (127.0.0.1) and stops by itself: at the end of its
duration, or after a bounded number of requests.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Size of the photos posted by default, as the issue's latency target states it.
DEFAULT_PHOTO_SIZE = (400, 300)

#: Most requests a client sends in one benchmark, whatever its duration.
MAX_REQUESTS_PER_CLIENT = 100_000


@dataclass
class LoadReport:
    """What a load run measured."""

    clients: int
    duration_s: float
    photos: list[str]
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    statuses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # connection errors and the like
    memory_before_mb: float = 0.0
    memory_after_mb: float = 0.0
    workers: int = 1

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def server_errors(self) -> int:
        return sum(
            count for status, count in self.statuses.items() if status >= 500 and status != 503
        )

    @property
    def errors(self) -> int:
        """Responses other than 200 and the deliberate 429/503, plus failed connections."""
        unexpected = sum(c for s, c in self.statuses.items() if s not in (200, 429, 503))
        return unexpected + sum(self.failures.values())

    @property
    def memory_growth_mb(self) -> float:
        return self.memory_after_mb - self.memory_before_mb

    def text(self) -> str:
        statuses = ", ".join(
            f"{status}: {count}" for status, count in sorted(self.statuses.items())
        )
        failures = ", ".join(f"{name}: {count}" for name, count in self.failures.items()) or "none"
        return "\n".join(
            [
                f"ferkit serve under load: {self.clients} concurrent clients for "
                f"{self.duration_s:.0f} s on 127.0.0.1, {self.workers} server worker(s), "
                f"posting {', '.join(self.photos)}",
                f"  requests:  {self.requests} ({self.requests_per_s:.1f}/s); statuses {statuses}",
                f"  latency:   p50 {self.percentile(50):.0f} ms, p95 {self.percentile(95):.0f} ms, "
                f"p99 {self.percentile(99):.0f} ms",
                f"  errors:    {self.errors} (5xx other than 503: {self.server_errors}; "
                f"connection failures: {failures})",
                f"  server memory: {self.memory_before_mb:.0f} MB before, "
                f"{self.memory_after_mb:.0f} MB after ({self.memory_growth_mb:+.1f} MB)",
            ]
        )


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MB (Linux ``/proc``)."""
    total_kb = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError, ValueError, StopIteration):
            with open(f"/proc/{current}/status") as status:
                line = next(line for line in status if line.startswith("VmRSS:"))
            total_kb += int(line.split()[1])
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending += [int(child) for child in children.read().split()]
    return total_kb / 1024


def default_photos(size: tuple[int, int] = DEFAULT_PHOTO_SIZE) -> list[tuple[str, bytes]]:
    """The shipped sample photos, resized to ``size`` and encoded as JPEG."""
    from PIL import Image

    samples = Path(__file__).resolve().parents[1] / "assets" / "samples"
    photos = []
    for path in sorted(samples.glob("*.jpg")):
        buffer = io.BytesIO()
        with Image.open(path) as image:
            image.convert("RGB").resize(size).save(buffer, "JPEG", quality=90)
        photos.append((f"{path.stem}-{size[0]}x{size[1]}.jpg", buffer.getvalue()))
    return photos


def multipart(name: str, data: bytes, field_name: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body holding one file, and its content type."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@contextlib.contextmanager
def running_server(
    port: int, *extra_args: str, workers: int = 1, startup_s: float = 120.0
) -> Iterator[subprocess.Popen]:
    """``ferkit serve`` in a child process on 127.0.0.1:``port``, up and answering
    ``/healthz`` when the block starts, stopped (Ctrl-C, then kill) when it ends."""
    command = [sys.executable, "-m", "ferkit", "serve", "--host", "127.0.0.1", "--port",
               str(port), "--workers", str(workers), *extra_args]  # fmt: skip
    # The server's messages go to a file, not a pipe, so it can never block on them.
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
        try:
            _wait_until_up(server, port, startup_s, log)
            yield server
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGINT)
                try:
                    server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()


def _wait_until_up(server: subprocess.Popen, port: int, startup_s: float, log: Any) -> None:
    deadline = time.monotonic() + startup_s
    while True:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError("ferkit serve stopped at start: " + log.read().decode()[-2000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f"ferkit serve did not answer within {startup_s:.0f} s")
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        time.sleep(0.2)


def _client(
    port: int,
    payloads: list[tuple[bytes, str]],
    deadline: float,
    report: LoadReport,
    lock: threading.Lock,
    offset: int,
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for sent in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() >= deadline:
            break
        body, content_type = payloads[(offset + sent) % len(payloads)]
        started = time.perf_counter()
        try:
            connection.request("POST", "/v1/predict", body=body,
                               headers={"Content-Type": content_type})  # fmt: skip
            response = connection.getresponse()
            answer = response.read()
            status = response.status
            if status == 200:
                json.loads(answer)
        except (OSError, http.client.HTTPException, ValueError) as error:
            with lock:
                report.failures[type(error).__name__] += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        elapsed_ms = (time.perf_counter() - started) * 1000
        with lock:
            report.statuses[status] += 1
            if status == 200:
                report.latencies_ms.append(elapsed_ms)
        if status in (429, 503):
            time.sleep(float(response.getheader("Retry-After") or 1))
    connection.close()


def benchmark_serve(
    photos: list[str | os.PathLike[str]] | None = None,
    clients: int = 8,
    duration_s: float = 60.0,
    workers: int = 1,
    server_args: tuple[str, ...] = (),
) -> LoadReport:
    """Run ``clients`` concurrent clients posting photos to a fresh ``ferkit serve`` for
    ``duration_s`` seconds.

    Args:
        photos: files to post (default: the shipped samples at 400x300).
        server_args: more ``ferkit serve`` flags.
    """
    if clients < 1 or not duration_s > 0:
        raise ValueError("clients must be at least 1 and duration a positive number of seconds")
    named = [(Path(p).name, Path(p).read_bytes()) for p in photos] if photos else default_photos()
    payloads = [multipart(name, data) for name, data in named]
    port = free_port()
    report = LoadReport(clients, duration_s, [name for name, _ in named], workers=workers)
    with running_server(port, *server_args, workers=workers) as server:
        warm = LoadReport(clients, 1.0, [])
        _client(port, payloads, time.monotonic() + 2.0, warm, threading.Lock(), 0)
        report.memory_before_mb = process_tree_rss_mb(server.pid)
        lock = threading.Lock()
        deadline = time.monotonic() + duration_s
        threads = [
            threading.Thread(target=_client, args=(port, payloads, deadline, report, lock, i))
            for i in range(clients)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report.duration_s = time.monotonic() - started
        report.memory_after_mb = process_tree_rss_mb(server.pid)
    return report
