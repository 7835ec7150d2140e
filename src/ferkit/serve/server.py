"""Start the service: check the settings, make the jobs folder the worker processes
share, run Uvicorn, and remove the jobs folder when the server stops."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ferkit.serve.config import API_KEY_ENV, CONFIG_ENV, ServeConfig, is_loopback


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

    if config.api_key is None and os.environ.get(API_KEY_ENV):
        config = dataclasses.replace(config, api_key=os.environ[API_KEY_ENV])  # checked too
    config.check_exposure()
    own_jobs_dir = config.jobs_dir is None
    if own_jobs_dir:
        config = dataclasses.replace(config, jobs_dir=tempfile.mkdtemp(prefix="ferkit-serve-jobs-"))
    else:
        Path(config.jobs_dir).mkdir(parents=True, exist_ok=True)
    options = {
        "host": config.host,
        "port": config.port,
        "log_level": log_level,
        "log_config": _log_config(),
        "ws_max_size": config.ws_max_frame_kb * 1024 + 1024,
        "timeout_keep_alive": 5,
        # Ctrl-C ends the server within seconds even with browsers still connected.
        "timeout_graceful_shutdown": 5,
        "server_header": False,
    }
    shown = "localhost" if is_loopback(config.host) else config.host
    banner = (
        f"ferkit serve: the web page at http://{shown}:{config.port}/ and the API reference "
        f"at http://{shown}:{config.port}/docs; Ctrl-C stops the server"
    )
    try:
        if config.workers == 1:
            from ferkit.serve.app import create_app

            app = create_app(config)  # a model that cannot load stops here, port unopened
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
    finally:
        if own_jobs_dir:
            shutil.rmtree(config.jobs_dir, ignore_errors=True)


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
