"""ASGI layers around the service's routes: bounded request bodies and time, closed
cross-origin access, security headers, and the one JSON shape of every error.

Each layer is a plain ASGI middleware, so a limit holds before any route code runs: a
body over its limit is cut off while it arrives (a declared ``Content-Length`` over the
limit is refused before a byte is read), not after it has been stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The page's Content-Security-Policy: its own scripts, styles and sockets only; images
#: and videos also from ``blob:`` URLs (the photos and videos a user picks).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)

SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(self), microphone=(), geolocation=()"),
)


def error_body(message: str) -> bytes:
    """The body of every error response: ``{"error": message}``."""
    return json.dumps({"error": message}).encode()


async def send_error(
    send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    """Answer an HTTP request with a JSON error, from ASGI code."""
    body = error_body(message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (the first, as text), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class SecurityHeaders:
    """Adds the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", ())}
                message["headers"] = list(message.get("headers", ())) + [
                    (key, value) for key, value in SECURITY_HEADERS if key not in present
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def own_origin(scope: Scope) -> str:
    """``scheme://host[:port]`` of the server as the client addressed it."""
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope["scheme"])
    host = header(scope, b"host") or "{}:{}".format(*scope.get("server") or ("localhost", 80))
    return f"{scheme}://{host}"


class OriginGuard:
    """Closes the API to other web sites (CORS closed by default).

    A browser says where a request comes from (``Origin``); requests from pages of other
    origins are refused (403; WebSocket handshakes too) unless the origin is allowed,
    in which case the CORS headers are added and preflights answered. Requests without
    an ``Origin`` (curl, scripts) are not browsers' and pass.
    """

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {origin.rstrip("/") for origin in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        origin = header(scope, b"origin")
        if origin is None or origin == own_origin(scope):
            await self.app(scope, receive, send)
            return
        if origin not in self.allowed:
            if scope["type"] == "websocket":
                await receive()  # the handshake request
                await send({"type": "websocket.close", "code": 1008})
                return
            await send_error(
                send,
                403,
                f"requests from pages of {origin} are not allowed; start the server with "
                "--cors-origins ORIGIN to allow a site",
            )
            return
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = [
                *self._cors(origin),
                (b"access-control-allow-methods", b"GET, POST"),
                (b"access-control-allow-headers", b"x-api-key, authorization, content-type"),
                (b"access-control-max-age", b"600"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", ())) + self._cors(origin)
            await send(message)

        await self.app(scope, receive, with_cors)

    @staticmethod
    def _cors(origin: str) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]


class BodyLimit:
    """Refuses request bodies over a limit (413): at once when ``Content-Length`` says
    so, else as soon as the bytes received pass it (the route's own answer is then
    replaced by the 413)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        message = (
            f"the request body is over the limit of {limit / 2**20:.0f} MB for "
            f"{scope['path']}; send a smaller file"
        )
        declared = header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_error(send, 400, "malformed Content-Length header")
                return
            if int(declared) > limit:
                await send_error(send, 413, message)
                return
        received = 0
        exceeded = False
        started = False

        async def counted() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return incoming

        async def unless_exceeded(outgoing: Message) -> None:
            nonlocal started
            if exceeded:
                return
            started = started or outgoing["type"] == "http.response.start"
            await send(outgoing)

        try:
            await self.app(scope, counted, unless_exceeded)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await send_error(send, 413, message)


class Timeout:
    """Bounds the time until a request's response starts: a client that has not sent
    its body by then gets 408, a request the server has not answered gets 503 with
    ``Retry-After``. Streaming a response, once started, is not cut."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = asyncio.Event()
        body_done = scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE")

        async def tracking_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        task = asyncio.ensure_future(self.app(scope, tracking_receive, tracking_send))
        waiter = asyncio.ensure_future(started.wait())
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=self.seconds, return_when=asyncio.FIRST_COMPLETED
        )
        if done:
            waiter.cancel()
            await task
            return
        task.cancel()
        waiter.cancel()
        with contextlib.suppress(BaseException):
            await task
        if body_done:
            await send_error(
                send,
                503,
                f"the request was not answered within {self.seconds:g} s; the server is busy, "
                "try again later",
                {"Retry-After": "5"},
            )
        else:
            await send_error(
                send, 408, f"the request body was not received within {self.seconds:g} s"
            )
