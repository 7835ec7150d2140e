"""``WS /v1/stream``: a live camera session. The client sends JPEG (or PNG) frames as
binary messages; the server answers each frame it classifies with its faces, tracked and
smoothed over the connection's frames as ``ferkit predict`` does for a video.

Every frame gets exactly one answer, so a client can keep a fixed number of frames in
flight: ``{"type": "faces", ...}``, ``{"type": "error", ...}`` for a frame that is not an
image, or ``{"type": "dropped", "frame": N, "reason": ...}``. A frame that arrives while
another is being classified replaces the one waiting (which is dropped), so a client
that sends faster than the server can classify sees fresh results at the rate the server
sustains, never a growing delay. Frames beyond the rate limit are dropped too; a frame
over the size limit closes the socket (1009).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from ferkit.extras import MissingExtraError
from ferkit.images import ImageReadError, decode_image, decode_memory
from ferkit.inference.video import FrameStream
from ferkit.serve.engine import ModelUnavailable, RecognizerPool, Saturated, face_json

logger = logging.getLogger(__name__)

#: Close codes: the frame is too big; the client broke a rule (the key); the server has
#: no room for another session.
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013


class _Session:
    """One connection's state: the newest frame waiting, the rate allowance, and what was
    dropped."""

    #: Frames a client may send back to back within the rate limit (network jitter).
    BURST = 2

    def __init__(self, max_fps: float) -> None:
        self.started = time.monotonic()
        self.max_fps = max_fps
        self.allowance = float(self.BURST)  # a token bucket: max_fps a second, BURST at most
        self.last_offer = self.started
        self.waiting: tuple[int, bytes, float] | None = None
        self.wake = asyncio.Event()
        self.received = self.dropped = 0
        self.closed = False

    def offer(self, data: bytes) -> tuple[int, str] | None:
        """Take a frame: drop it when it comes over the rate limit, else let it replace
        the one waiting. Returns the dropped frame's number and why, if one was dropped."""
        self.received += 1
        now = time.monotonic()
        self.allowance = min(self.BURST, self.allowance + (now - self.last_offer) * self.max_fps)
        self.last_offer = now
        if self.allowance < 1:
            self.dropped += 1
            return self.received, "over the frame-rate limit"
        self.allowance -= 1
        replaced = self.waiting
        self.waiting = (self.received, data, now - self.started)
        self.wake.set()
        if replaced is not None:
            self.dropped += 1
            return replaced[0], "a newer frame came before it was classified"
        return None


async def serve_stream(
    websocket: WebSocket,
    pool: RecognizerPool,
    *,
    detector: str | None,
    smoothing_s: float,
    max_frame_bytes: int,
    max_fps: float,
    max_pixels: int,
    model: str | None = None,
    geometry: bool = False,
) -> None:
    """Run one accepted camera session until the client leaves (``model``: an offered
    installed model's name; ``None``: the served model; ``geometry``: faces carry their
    blendshapes, head pose and mesh)."""
    session = _Session(max_fps)
    stream = FrameStream(smoothing_s=smoothing_s, geometry=geometry)
    sending = asyncio.Lock()
    receiver = asyncio.ensure_future(_receive(websocket, session, max_frame_bytes, sending))
    try:
        while True:
            await session.wake.wait()
            session.wake.clear()
            if session.closed:
                break
            if session.waiting is None:
                continue
            index, data, time_s = session.waiting
            session.waiting = None
            answer = await run_in_threadpool(
                _classify, pool, stream, data, time_s, detector, max_pixels, model
            )
            if answer["type"] == "dropped":
                session.dropped += 1
            answer.update(frame=index, received=session.received, dropped=session.dropped)
            if not await _send(websocket, answer, sending):
                break
    finally:
        receiver.cancel()
        with contextlib.suppress(BaseException):
            await receiver


async def _receive(
    websocket: WebSocket, session: _Session, max_frame_bytes: int, sending: asyncio.Lock
) -> None:
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:
                await _send(
                    websocket,
                    {"type": "error", "error": "send each frame as a binary message (JPEG)"},
                    sending,
                )
                continue
            if len(data) > max_frame_bytes:
                await _send(
                    websocket,
                    {
                        "type": "error",
                        "error": f"a frame of {len(data) // 1024} KB is over the limit of "
                        f"{max_frame_bytes // 1024} KB; send smaller JPEG frames",
                    },
                    sending,
                )
                await websocket.close(CLOSE_TOO_BIG)
                break
            dropped = session.offer(data)
            if dropped is not None:
                index, reason = dropped
                await _send(websocket, {"type": "dropped", "frame": index, "reason": reason,
                                        "dropped": session.dropped}, sending)  # fmt: skip
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        session.closed = True
        session.wake.set()


async def _send(websocket: WebSocket, payload: dict[str, Any], sending: asyncio.Lock) -> bool:
    """Send one answer (one sender at a time); False when the client has gone."""
    try:
        async with sending:
            await websocket.send_text(json.dumps(payload))
        return True
    except (WebSocketDisconnect, RuntimeError, OSError):
        return False


def _classify(
    pool: RecognizerPool,
    stream: FrameStream,
    data: bytes,
    time_s: float,
    detector: str | None,
    max_pixels: int,
    model: str | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        # Decoded like a photo: admitted, with a recogniser lent, and within the
        # process's decoding budget, so that frames of many sockets cannot together
        # decode more than the budget allows.
        with (
            pool.admit(),
            pool.lend(detector, model) as recognizer,
            pool.decode_budget.hold(decode_memory(data, max_pixels)),
        ):
            try:
                rgb = decode_image(data, source="frame", max_pixels=max_pixels)
            except ImageReadError as error:
                return {"type": "error", "error": f"the frame is not a usable image: {error.reason}"}  # fmt: skip
            faces = stream.process(recognizer, rgb, time_s)
    except Saturated:
        return {"type": "dropped", "reason": "the server is busy"}
    except Exception as error:  # one bad frame ends nothing: it is answered, and logged
        logger.warning("a camera frame failed", exc_info=True)
        known = isinstance(error, MissingExtraError | ModelUnavailable)
        message = str(error) if known else "face detection failed"
        return {"type": "error", "error": f"{message} on this frame"}
    return {
        "type": "faces",
        "time_s": round(time_s, 3),
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "faces": [face_json(face) for face in faces],
        "process_ms": round((time.perf_counter() - started) * 1000, 1),
    }
