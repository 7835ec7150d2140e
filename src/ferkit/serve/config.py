"""The service's settings and limits (:class:`ServeConfig`), each with a safe default."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any

from ferkit.faces import DEFAULT_DETECTOR, detector_names
from ferkit.settings import check_choices, setting

#: Environment variable holding the API key when ``--api-key`` is not given.
API_KEY_ENV = "FERKIT_API_KEY"

#: Environment variable through which the server hands its settings to worker processes.
CONFIG_ENV = "FERKIT_SERVE_CONFIG"


def _backends() -> tuple[str, ...]:
    from ferkit.inference.runtimes import BACKENDS

    return BACKENDS


@dataclass
class ServeConfig:
    """Settings of one ``ferkit serve``: where it listens, which model it runs, and the
    limits that keep it safe under load and hostile uploads."""

    host: str = setting("127.0.0.1", "address to listen on (another than loopback needs --api-key)")
    port: int = setting(8000, "port to listen on")
    model: str | None = setting(
        None, "model served when a request names none: an installed model's name ('ferkit models'), a folder or a file; none: 'default'"
    )  # fmt: skip
    models: str = setting(
        "installed", "models a request may pick with ?model=NAME: 'installed' (all, each loaded when first asked for), a comma-separated list of installed names, or 'none'"
    )  # fmt: skip
    detector: str = setting(DEFAULT_DETECTOR, "default face detector", choices=detector_names)
    backend: str = setting("auto", "classifier runtime", choices=_backends)
    workers: int = setting(1, "server processes; the model loads once in each")
    threads: int = setting(2, "recognisers per process (requests classified at once)")
    api_key: str | None = setting(
        None, f"key that every API route but /healthz requires (X-API-Key header); none: ${API_KEY_ENV}, if set"
    )  # fmt: skip
    insecure: bool = setting(False, "allow a non-loopback address without an API key")
    max_upload_mb: float = setting(20.0, "largest photo request body, in MB")
    max_files: int = setting(16, "most photos in one request")
    max_pixels: int = setting(
        25_000_000, "pixel budget of a decoded photo (larger JPEGs are decoded reduced)"
    )  # fmt: skip
    decode_memory_mb: float = setting(
        512.0, "memory that photos and camera frames being decoded may hold at once, per process, in MB (more wait; one image over it is decoded alone)"
    )  # fmt: skip
    max_video_mb: float = setting(200.0, "largest video upload, in MB")
    max_video_s: float = setting(300.0, "longest video accepted, in seconds")
    max_jobs: int = setting(2, "video jobs processed at once per process (more get 429)")
    job_ttl_s: float = setting(3600.0, "seconds a finished video job and its files are kept")
    max_pending: int = setting(16, "photo requests waiting for a recogniser before 503")
    request_timeout_s: float = setting(60.0, "longest time for one HTTP request")
    min_upload_kb_s: float = setting(
        16.0, "slowest average rate of a request body after its first --request-timeout-s seconds, in KB/s (slower: 408)"
    )  # fmt: skip
    header_timeout_s: float = setting(
        10.0, "longest time for a request's headers to arrive (else 408, and the connection is closed)"
    )  # fmt: skip
    ws_max_frame_kb: int = setting(1024, "largest camera frame over the socket, in KB")
    ws_max_fps: float = setting(30.0, "most camera frames a second per socket (more dropped)")
    max_streams: int = setting(8, "live camera sockets open at once per process")
    trusted_hosts: str = setting(
        "", "comma-separated host names this server answers to besides its own (behind a proxy)"
    )  # fmt: skip
    cors_origins: str = setting(
        "", "comma-separated origins of other sites allowed to call the API (empty: none)"
    )  # fmt: skip
    jobs_dir: str | None = setting(
        None, "folder for video jobs; none: a temporary one, removed on exit"
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.model == "default":
            self.model = None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0 to 65535, not {self.port}")
        for name in (
            "workers", "threads", "max_files", "max_pixels", "max_jobs", "max_pending",
            "ws_max_frame_kb", "max_streams",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in (
            "max_upload_mb", "max_video_mb", "max_video_s", "job_ttl_s", "request_timeout_s",
            "ws_max_fps", "decode_memory_mb", "min_upload_kb_s", "header_timeout_s",
        ):  # fmt: skip
            value = getattr(self, name)
            if not value > 0 or value == float("inf"):
                raise ValueError(f"{name} must be a positive number, not {value}")
        self.offered_models()  # refuses unknown names now, not at the first request
        if self.api_key is not None and len(self.api_key) < 8:
            raise ValueError("the API key must be at least 8 characters long")

    def offered_models(self) -> tuple[str, ...]:
        """The installed models a request may pick by name (``models``).

        Raises:
            ValueError: a name that is not installed.
        """
        from ferkit.models.folder import installed_models

        installed = tuple(installed_models())
        if self.models.strip().lower() == "installed":
            return installed
        if self.models.strip().lower() == "none":
            return ()
        names = tuple(name.strip() for name in self.models.split(",") if name.strip())
        unknown = [name for name in names if name not in installed]
        if unknown:
            raise ValueError(
                f"--models: {', '.join(unknown)} not installed; installed models: "
                f"{', '.join(installed)} (or 'installed', 'none')"
            )
        return names

    @property
    def origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def served_hosts(self) -> set[str] | None:
        """The ``Host`` names answered (None: any): a loopback server answers to its
        loopback names and ``trusted_hosts``; another to any name, or to
        ``trusted_hosts`` alone when given."""
        from ferkit.serve.guards import LOOPBACK_HOSTS

        trusted = {name.strip().lower() for name in self.trusted_hosts.split(",") if name.strip()}
        if is_loopback(self.host):
            return set(LOOPBACK_HOSTS) | trusted
        return trusted or None

    def check_exposure(self) -> None:
        """Refuse to listen beyond this machine without an API key, unless ``insecure``.

        Raises:
            ValueError: saying how to add a key or accept the risk.
        """
        if self.api_key or self.insecure or is_loopback(self.host):
            return
        raise ValueError(
            f"--host {self.host} makes the service reachable from other machines, and it "
            f"has no API key: give --api-key KEY (or set ${API_KEY_ENV}), or --insecure to "
            "serve without one"
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))

    @classmethod
    def from_env(cls) -> ServeConfig:
        """The settings a server process hands its workers (defaults when none)."""
        text = os.environ.get(CONFIG_ENV)
        return cls.from_json(text) if text else cls()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def limits(config: ServeConfig) -> dict[str, Any]:
    """The limits a client needs to know, as ``/healthz`` reports them."""
    return {
        "max_upload_mb": config.max_upload_mb,
        "max_files": config.max_files,
        "max_pixels": config.max_pixels,
        "decode_memory_mb": config.decode_memory_mb,
        "max_video_mb": config.max_video_mb,
        "max_video_s": config.max_video_s,
        "ws_max_frame_kb": config.ws_max_frame_kb,
        "ws_max_fps": config.ws_max_fps,
    }
