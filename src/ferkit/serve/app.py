"""The service's routes. Each is a thin layer over the functions ``ferkit predict`` uses:

- ``GET /healthz``: the model's name, classes and checksum state (no key needed);
- ``POST /v1/predict``: faces and expressions in one photo (``file``) or several
  (``files``);
- ``POST /v1/videos``, ``GET /v1/videos/{id}``, ``GET /v1/videos/{id}/annotated``: video
  jobs (:mod:`ferkit.serve.jobs`);
- ``WS /v1/stream``: a live camera session (:mod:`ferkit.serve.stream`);
- ``/``: the web page; ``/docs``: the API's reference page, built from
  ``/openapi.json``.

Every error is ``{"error": "..."}`` with its status; no response ever holds a traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Query, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from ferkit import __version__
from ferkit.extras import MissingExtraError
from ferkit.faces import DETECTOR_NAMES, available_detectors
from ferkit.images import FACE_MODES
from ferkit.serve.config import ServeConfig, limits
from ferkit.serve.engine import (
    DecodeBudget,
    ModelUnavailable,
    RecognizerPool,
    Saturated,
    predict_uploads,
)
from ferkit.serve.guards import BodyLimit, Gate, OriginGuard, SecurityHeaders, Timeout, header
from ferkit.serve.jobs import JobError, TooManyJobs, VideoJobs, make_jobs_dir
from ferkit.serve.stream import CLOSE_POLICY, CLOSE_TRY_LATER, serve_stream

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

DetectorName = Literal[DETECTOR_NAMES]  # type: ignore[valid-type]
FaceMode = Literal[FACE_MODES]  # type: ignore[valid-type]

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="the server's API key, when it has one"
)

#: ``?geometry=1``: what each face gains (in every route that takes it).
GEOMETRY_HELP = (
    "each face's geometry too: `blendshapes` (MediaPipe's 52 ARKit-style scores in [0, 1] "
    "by name), `head_pose` ({yaw, pitch, roll} in degrees; yaw > 0: turned towards the "
    "image's right, pitch > 0: chin up, roll > 0: counter-clockwise in the image) and "
    "`mesh` (478 [x, y, z] landmarks in the image's pixels); about 7 ms a face"
)

#: Seconds a client is asked to wait when the server or its video slots are full.
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_JOBS_S = 10


class ErrorBody(BaseModel):
    """Every error response: what went wrong and, where it helps, what to do."""

    error: str


_ERROR_MEANINGS = {
    400: "malformed request (no file, a text field where a file belongs, a broken body)",
    401: "missing or wrong API key",
    403: "a request from a page of another site",
    404: "no such video job (finished jobs are removed after a while)",
    408: "the request body did not arrive in time",
    409: "the video job has not finished",
    413: "over a size limit (request body, pixels, files per request, video length)",
    415: "not an image (or not a video), or one that cannot be decoded",
    422: "an option out of range",
    429: "every video slot is busy; retry after the Retry-After header's seconds",
    503: "the server is saturated; retry after the Retry-After header's seconds",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI descriptions of the error responses of a route (and of every /v1 route)."""
    common = (401, 403, 408, 503)
    return {
        status: {"model": ErrorBody, "description": _ERROR_MEANINGS[status]}
        for status in sorted({*statuses, *common})
    }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _key_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _model_info(recognizer: Any) -> dict[str, Any]:
    from ferkit.models.folder import CHECKSUMS, installed_models

    source = Path(recognizer.model.source)
    folder = source if source.is_dir() else source.parent
    if folder.name == "checkpoints":  # a run folder's best checkpoint
        folder = folder.parent
    installed = {path.resolve(): name for name, path in installed_models().items()}
    name = installed.get(folder.resolve(), folder.name)
    if folder.resolve() not in installed and name in installed.values():
        name = f"{name} (local folder)"  # not to be taken for the installed model
    return {
        "name": name,
        "installed": folder.resolve() in installed,
        "file": source.name,
        "classes": list(recognizer.classes),
        "input_shape": list(recognizer.model.image_shape),
        # load_classifier refuses a folder whose files do not match checksums.json.
        "checksums": "verified" if (folder / CHECKSUMS).is_file() else "not recorded",
    }


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The service as an ASGI application; the model loads here, once.

    Raises:
        FileNotFoundError, ValueError, ChecksumError: the model cannot be loaded.
    """
    from ferkit.inference.recognizer import EmotionRecognizer

    config = config or ServeConfig()
    # The pool's recognisers classify in parallel: each call gets its share of the cores
    # (one thread each on two cores: 1.5 times the photos/s of two threads each).
    recognizer = EmotionRecognizer(
        config.model, detector=config.detector, backend=config.backend,
        max_pixels=config.max_pixels, threads=max(1, (os.cpu_count() or 1) // config.threads),
    )  # fmt: skip
    from ferkit.models.catalogue import describe_models

    described = {entry["name"]: entry for entry in describe_models()}
    wanted = config.offered_models()
    offered = tuple(
        name for name in wanted
        if config.backend == "auto" or config.backend in described[name]["runtimes"]
    )  # fmt: skip
    if set(offered) != set(wanted):
        logger.warning(
            "not offering %s: no file for the %s runtime",
            ", ".join(sorted(set(wanted) - set(offered))),
            config.backend,
        )
    model = _model_info(recognizer)
    pool = RecognizerPool(
        recognizer, config.threads, config.max_pending, offered,
        served=model["name"] if model["installed"] else None,
        decode_budget=DecodeBudget(config.decode_memory_mb * 2**20, config.request_timeout_s),
    )  # fmt: skip
    own_jobs_dir = config.jobs_dir is None
    jobs_root, jobs_lock = make_jobs_dir() if own_jobs_dir else (Path(config.jobs_dir), None)
    jobs = VideoJobs(
        jobs_root, recognizer, max_jobs=config.max_jobs, ttl_s=config.job_ttl_s,
        max_video_s=config.max_video_s, max_pixels=config.max_pixels,
        recognizer_for=pool.base_for,
    )  # fmt: skip
    served_name = model["name"]
    # ?model=NAME: one of the offered installed models (listed in the schema). A default
    # value, not an annotation: annotations are strings here, read in the module's scope.
    model_help = (
        f"installed model to use instead of the served one ({', '.join(offered)}; "
        "/healthz lists their classes)"
        if offered
        else "this server offers no other model"
    )

    def model_query() -> Any:
        return Query(None, description=model_help, json_schema_extra={"enum": list(offered)})

    def model_refusal(name: str | None) -> str | None:
        """Why ``?model=name`` is refused (the name is not repeated: it is the client's)."""
        if name is None or name in offered or name == pool.served:
            return None
        return f"that model is not offered here; choose one of: {', '.join(offered) or 'none'}"

    def check_model(name: str | None) -> None:
        refusal = model_refusal(name)
        if refusal is not None:
            raise HTTPException(422, refusal)

    models_info = {  # computed once: /healthz needs no key and must stay cheap
        name: {key: described[name][key] for key in ("classes", "parameters", "val_accuracy", "selected_on")}
        for name in offered
    }  # fmt: skip

    streams = {"open": 0}  # live camera sockets (all on the event loop's thread)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            jobs.close()
            if own_jobs_dir:
                shutil.rmtree(jobs_root, ignore_errors=True)
                jobs_lock.close()

    app = FastAPI(
        title="ferkit",
        version=__version__,
        description="Facial-expression recognition: faces and their expressions in photos, "
        'videos and a live camera. Errors are `{"error": "..."}`.',
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.config, app.state.pool, app.state.jobs = config, pool, jobs

    async def require_key(key: Annotated[str | None, Depends(_api_key_header)]) -> None:
        if config.api_key is not None and not _key_matches(key, config.api_key):
            raise HTTPException(
                401, "missing or wrong API key; send it in the X-API-Key header",
                headers={"WWW-Authenticate": "ApiKey"},
            )  # fmt: skip

    _add_error_handlers(app)
    api = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @app.get("/healthz", tags=["service"], summary="Whether the service is up, and its model")
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "model": model,
            "models": models_info,
            "detector": config.detector,
            "detectors": available_detectors(),
            "api_key_required": config.api_key is not None,
            "limits": limits(config),
        }

    @api.post(
        "/predict", tags=["photos"], summary="Faces and expressions in photos",
        responses=_errors(400, 413, 415, 422),
    )  # fmt: skip
    async def predict(
        file: Annotated[UploadFile | None, File(description="one image")] = None,
        files: Annotated[list[UploadFile] | None, File(description="several images")] = None,
        detector: Annotated[DetectorName | None, Query(description="face detector")] = None,
        faces: Annotated[
            FaceMode, Query(description="auto, crop (the image is one face) or detect")
        ] = "auto",
        model: str | None = model_query(),
        tta: Annotated[
            bool,
            Query(
                description="test-time augmentation: each face read in three framings and "
                "their mirror images, probabilities averaged (slower, a little more accurate)"
            ),
        ] = False,
        geometry: Annotated[bool, Query(description=GEOMETRY_HELP)] = False,
    ) -> Any:
        check_model(model)
        uploads = ([file] if file is not None else []) + list(files or [])
        if not uploads:
            raise HTTPException(400, "send an image in the multipart field 'file' (or several in 'files')")  # fmt: skip
        if len(uploads) > config.max_files:
            raise HTTPException(413, f"{len(uploads)} files in one request, over the limit of {config.max_files}")  # fmt: skip
        if not all(isinstance(upload, StarletteUpload) for upload in uploads):
            raise HTTPException(400, "'file' and 'files' must be file uploads, not text fields")
        named = [(_display_name(upload.filename, i), await upload.read()) for i, upload in enumerate(uploads)]  # fmt: skip

        def work() -> list[dict[str, Any]]:
            # Admitted in the thread that works: a request its client gave up on still
            # counts until its work is done.
            with pool.admit(), pool.lend(detector, model) as lent:
                return predict_uploads(
                    lent, named, faces, config.max_pixels, tta, budget=pool.decode_budget,
                    geometry=geometry,
                )  # fmt: skip

        entries = await run_in_threadpool(work)
        used = model or served_name
        if file is not None and not files:
            entry = entries[0]
            if "error" in entry:
                return _error(entry["status"], f"{entry['filename']}: {entry['error']}")
            entry.pop("filename")
            return {**entry, "model": used}
        return {"images": entries, "model": used}

    @api.post(
        "/videos", tags=["videos"], status_code=202, summary="Start a video job",
        responses=_errors(400, 413, 415, 422, 429),
    )  # fmt: skip
    async def submit_video(
        request: Request,
        file: Annotated[UploadFile, File(description="one video (MP4, WebM, AVI, MOV...)")],
        detector: Annotated[DetectorName | None, Query(description="face detector")] = None,
        model: str | None = model_query(),
        geometry: Annotated[
            bool,
            Query(
                description=GEOMETRY_HELP + "; the result also gains, per track, the blink "
                "rate, smile intensity and head turns (`geometry_per_track`)"
            ),
        ] = False,
    ) -> JSONResponse:
        check_model(model)
        if not isinstance(file, StarletteUpload):
            raise HTTPException(400, "'file' must be a file upload, not a text field")
        await run_in_threadpool(pool.base_for, model)  # a model that cannot load: 503 now
        name = _display_name(file.filename, 0)
        state = await run_in_threadpool(jobs.submit, file.file, name, detector, model, geometry)
        job_url = str(request.url_for("video_status", job_id=state["id"]).path)
        return JSONResponse(
            {**state, "status_url": job_url, "annotated_url": job_url + "/annotated"},
            status_code=202,
            headers={"Location": job_url},
        )

    @api.get(
        "/videos/{job_id}", tags=["videos"], name="video_status",
        summary="A video job's progress and results", responses=_errors(404, 422),
    )  # fmt: skip
    def video_status(job_id: str) -> Any:
        state = jobs.status(job_id)
        if state is None:
            raise HTTPException(404, f"no video job {job_id!r} (finished jobs are removed after {config.job_ttl_s:g} s)")  # fmt: skip
        return state

    @api.get(
        "/videos/{job_id}/annotated", tags=["videos"],
        summary="A finished job's annotated video (WebM)", response_class=FileResponse,
        responses={200: {"content": {"video/webm": {}}}, **_errors(404, 409, 422)},
    )  # fmt: skip
    def video_annotated(job_id: str) -> Any:
        path = jobs.annotated(job_id)
        if path is None:
            state = jobs.status(job_id)
            if state is None:
                raise HTTPException(404, f"no video job {job_id!r}")
            if state["status"] == "failed":
                raise HTTPException(404, f"the job failed ({state['error']}), so it has no annotated video")  # fmt: skip
            raise HTTPException(409, "the job has not finished; its annotated video is not ready")
        return FileResponse(path, media_type="video/webm", filename="annotated.webm")

    @app.websocket("/v1/stream")
    async def stream(
        websocket: WebSocket,
        detector: DetectorName | None = None,
        smoothing: float = 0.5,
        api_key: str | None = None,
        model: str | None = None,
        geometry: bool = False,
    ) -> None:
        # Accepted first, then closed with a reason: a browser sees the code and reason of
        # a close, but not the status of a refused handshake.
        await websocket.accept()
        if config.api_key is not None and not _key_matches(
            api_key or websocket.headers.get("x-api-key"), config.api_key
        ):
            await websocket.close(CLOSE_POLICY, "missing or wrong API key (?api_key=KEY)")
            return
        if not 0 <= smoothing <= 10:
            await websocket.close(CLOSE_POLICY, "smoothing must be 0 to 10 seconds")
            return
        refusal = model_refusal(model)
        if refusal is not None:  # a close reason must fit in 123 bytes
            await websocket.close(CLOSE_POLICY, refusal.encode()[:123].decode(errors="ignore"))
            return
        if streams["open"] >= config.max_streams:
            await websocket.close(CLOSE_TRY_LATER, f"{streams['open']} live sessions are open, the most this server takes; try again later")  # fmt: skip
            return
        streams["open"] += 1
        try:
            await serve_stream(
                websocket, pool, detector=detector, smoothing_s=smoothing,
                max_frame_bytes=config.ws_max_frame_kb * 1024, max_fps=config.ws_max_fps,
                max_pixels=config.max_pixels, model=model, geometry=geometry,
            )  # fmt: skip
        finally:
            streams["open"] -= 1

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def body_limit(scope: dict[str, Any]) -> int:
        megabytes = config.max_video_mb if scope["path"].rstrip("/") == "/v1/videos" else config.max_upload_mb  # fmt: skip
        return int(megabytes * 2**20)

    def key_refusal(scope: dict[str, Any]) -> tuple[int, str, dict[str, str]] | None:
        if config.api_key is None or not scope["path"].startswith("/v1/"):
            return None
        if _key_matches(header(scope, b"x-api-key"), config.api_key):
            return None
        message = "missing or wrong API key; send it in the X-API-Key header"
        return 401, message, {"WWW-Authenticate": "ApiKey"}

    uploads = {"open": 0}  # video uploads arriving; each may become a job
    uploads_lock = threading.Lock()

    def is_video_upload(scope: dict[str, Any]) -> bool:
        return scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/videos"

    def video_slot_refusal(scope: dict[str, Any]) -> tuple[int, str, dict[str, str]] | None:
        if not is_video_upload(scope):
            return None
        with uploads_lock:
            if uploads["open"] + jobs.active >= config.max_jobs:
                busy = f"{config.max_jobs} video uploads or jobs are in progress, the most this server takes at once; try again when one has finished"  # fmt: skip
                return 429, busy, {"Retry-After": str(RETRY_AFTER_JOBS_S)}
            uploads["open"] += 1
        return None

    def video_upload_ended(scope: dict[str, Any]) -> None:
        if is_video_upload(scope):
            with uploads_lock:
                uploads["open"] -= 1

    # Added innermost first. From the outside in: security headers; the host and origin
    # checks; the API key and the video slots, both before a byte of the body is read;
    # the time limit; the body limit.
    app.add_middleware(BodyLimit, limit_for=body_limit)
    app.add_middleware(
        Timeout, seconds=config.request_timeout_s, min_bytes_per_s=config.min_upload_kb_s * 1024
    )
    app.add_middleware(Gate, check=video_slot_refusal, on_end=video_upload_ended)
    app.add_middleware(Gate, check=key_refusal)
    app.add_middleware(OriginGuard, allowed=config.origins, hosts=config.served_hosts)
    app.add_middleware(SecurityHeaders)
    return app


def create_app_from_env() -> FastAPI:
    """The application of a server's worker process, from the settings the server put in
    its environment (``uvicorn --factory``)."""
    from ferkit.serve.protocol import use_header_timeout

    config = ServeConfig.from_env()
    use_header_timeout(config.header_timeout_s)  # this worker's connections
    return create_app(config)


def _display_name(filename: str | None, index: int) -> str:
    """An upload's name as shown in results: its last path part, printable, at most 200
    characters. It is never used as a path."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char if char.isprintable() else "?" for char in name)[:200]
    return name or f"upload-{index + 1}"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        in_body = any(problem.get("loc", ("",))[0] == "body" for problem in problems)
        described = "; ".join(
            f"{' '.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', 'invalid')}"
            for problem in problems[:5]
        )
        # A request the API cannot read is malformed (400); a readable one with a value
        # out of range (a query option) is unprocessable (422).
        return _error(400 if in_body else 422, described or "invalid request")

    @app.exception_handler(Saturated)
    async def saturated(_request: Request, error: Saturated) -> JSONResponse:
        return _error(503, str(error), {"Retry-After": str(RETRY_AFTER_BUSY_S)})

    @app.exception_handler(ModelUnavailable)
    async def model_unavailable(_request: Request, error: ModelUnavailable) -> JSONResponse:
        return _error(503, str(error))

    @app.exception_handler(TooManyJobs)
    async def too_many_jobs(_request: Request, error: TooManyJobs) -> JSONResponse:
        return _error(429, str(error), {"Retry-After": str(RETRY_AFTER_JOBS_S)})

    @app.exception_handler(JobError)
    async def bad_video(_request: Request, error: JobError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(MissingExtraError)
    async def missing_extra(_request: Request, error: MissingExtraError) -> JSONResponse:
        return _error(422, f"this server cannot use that option: {error}")

    @app.exception_handler(Exception)
    async def internal(_request: Request, error: Exception) -> JSONResponse:
        logger.error("internal error", exc_info=error)
        return _error(500, "internal error; the server's log has the details")
