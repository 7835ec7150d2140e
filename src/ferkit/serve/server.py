"""Start the service: check the settings, make the jobs folder the worker processes
share, run Uvicorn, and remove the jobs folder when the server stops, however it is
stopped (Ctrl-C, SIGTERM, SIGHUP; after a ``kill -9``, the next server removes it)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferkit.serve.config import API_KEY_ENV, CONFIG_ENV, ServeConfig, is_loopback


class _Terminated(BaseException):
    """SIGTERM reached the server outside Uvicorn's own handling (while the model loads,
    or when Uvicorn hands the signal back after its graceful shutdown)."""


def run(
    config: ServeConfig, *, log_level: str = "info", announce: Callable[[str], None] = print
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM).

    The model is loaded before the port is opened (with one worker) so that a bad model
    fails at once; with several workers each loads it once.

    Raises:
        ValueError: the settings are unsafe (a non-loopback address without a key) or
            invalid.
        FileNotFoundError, ChecksumError: the model cannot be loaded.
    """
    import uvicorn

    from ferkit.serve.jobs import make_jobs_dir, sweep_stale_jobs_dirs
    from ferkit.serve.protocol import HeaderDeadlineProtocol, use_header_timeout

    if config.api_key is None and os.environ.get(API_KEY_ENV):
        config = dataclasses.replace(config, api_key=os.environ[API_KEY_ENV])  # checked too
    config.check_exposure()
    sweep_stale_jobs_dirs()  # the folders of servers that were killed
    own_jobs_dir = config.jobs_dir is None
    jobs_lock = None
    if own_jobs_dir:
        folder, jobs_lock = make_jobs_dir()
        config = dataclasses.replace(config, jobs_dir=str(folder))
    else:
        Path(config.jobs_dir).mkdir(parents=True, exist_ok=True)
    options = {
        "host": config.host,
        "port": config.port,
        "log_level": log_level,
        "log_config": _log_config(),
        "ws_max_size": config.ws_max_frame_kb * 1024 + 1024,
        "timeout_keep_alive": 5,
        # Uvicorn reads request headers without a time limit: this protocol adds one.
        "http": HeaderDeadlineProtocol,
        # Ctrl-C ends the server within seconds even with browsers still connected.
        "timeout_graceful_shutdown": 5,
        "server_header": False,
    }
    shown = "localhost" if is_loopback(config.host) else config.host
    banner = (
        f"ferkit serve: the web page at http://{shown}:{config.port}/ and the API reference "
        f"at http://{shown}:{config.port}/docs; Ctrl-C stops the server"
    )
    # Uvicorn shuts down gracefully on SIGTERM, then raises it again with the handler it
    # found, which by default ends the process at once: this one raises an exception
    # instead, so the jobs folder is removed below before the process ends by the signal.
    previous = _on_signals()
    terminated = False
    try:
        if config.workers == 1:
            from ferkit.serve.app import create_app

            app = create_app(config)  # a model that cannot load stops here, port unopened
            use_header_timeout(config.header_timeout_s)
            announce(banner)
            uvicorn.run(app, **options)
        else:
            announce(banner)
            os.environ[CONFIG_ENV] = config.to_json()
            uvicorn.run(
                "ferkit.serve.app:create_app_from_env",
                factory=True,
                workers=config.workers,
                **options,
            )
    except _Terminated:
        terminated = True
    finally:
        if own_jobs_dir:
            shutil.rmtree(config.jobs_dir, ignore_errors=True)
            jobs_lock.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if terminated:
        signal.raise_signal(signal.SIGTERM)  # ends as SIGTERM would have, folder removed


def _on_signals() -> dict[int, Any]:
    """Make SIGTERM raise :class:`_Terminated` and SIGHUP (a closed terminal) stop the
    server as SIGTERM does; returns the handlers replaced (none off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def terminate(_number: int, _frame: Any) -> None:
        raise _Terminated

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
    if hasattr(signal, "SIGHUP"):
        previous[signal.SIGHUP] = signal.signal(
            signal.SIGHUP, lambda _number, _frame: signal.raise_signal(signal.SIGTERM)
        )
    return previous


class RedactKeys(logging.Filter):
    """Hides ``api_key=...`` in the access log's request lines (the live socket takes its
    key in the URL, since browsers cannot set a socket's headers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                _KEY_IN_URL.sub(r"\1***", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


_KEY_IN_URL = re.compile(r"((?:^|[?&])api_key=)[^&\s]*")


def _log_config() -> dict:
    """Uvicorn's logging settings, with API keys kept out of the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_keys"] = {"()": RedactKeys}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_keys")
    return config
