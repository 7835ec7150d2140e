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


async def _refuse_socket(receive: Receive, send: Send, reason: str) -> None:
    """Accept a socket's handshake and close it at once with 1008 and ``reason``: a
    browser sees the code and reason of a close, not the status of a refused handshake."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 1008, "reason": reason})


def _host_name(host: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8000`` → ``[::1]``)."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


#: The host names of a server that listens on loopback only.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


class OriginGuard:
    """Closes the API to other web sites (CORS closed by default).

    ``hosts``: when given, the only ``Host`` names served (a loopback server serves its
    loopback names alone, which defeats DNS rebinding).

    A browser says where a request comes from (``Origin``); requests from pages of other
    origins are refused (403; WebSocket handshakes too) unless the origin is allowed,
    in which case the CORS headers are added and preflights answered. Requests without
    an ``Origin`` (curl, scripts) are not browsers' and pass.
    """

    def __init__(self, app: ASGIApp, allowed: list[str], hosts: set[str] | None = None) -> None:
        self.app = app
        self.allowed = {origin.rstrip("/") for origin in allowed}
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = (header(scope, b"host") or "").lower()
        if self.hosts is not None and _host_name(host) not in self.hosts:
            # A page of another site whose name was pointed at this machine (DNS
            # rebinding) comes with its own name as Host: a loopback server refuses it.
            if scope["type"] == "websocket":
                await _refuse_socket(receive, send, f"host {host!r} is not served here")
                return
            await send_error(
                send, 403, f"requests for host {host!r} are not served here; use "
                "http://localhost, or add the name to --trusted-hosts",
            )  # fmt: skip
            return
        origin = header(scope, b"origin")
        if origin is None or origin == own_origin(scope):
            await self.app(scope, receive, send)
            return
        if origin not in self.allowed:
            if scope["type"] == "websocket":
                await _refuse_socket(receive, send, f"pages of {origin} may not connect")
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
            f"the request body is over the limit of {limit / 2**20:.3g} MB for "
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
    """Bounds how long a request may take, in two parts: while its body arrives, each
    piece must follow the last within ``seconds``, and after the first ``seconds`` the
    body must have come at ``min_bytes_per_s`` on average (a stalled or trickling client
    gets 408, so a few bytes now and then cannot hold a video slot; an upload at that rate
    or faster is never cut); once the body is in, the response must start within
    ``seconds`` (else 503 with ``Retry-After``). Streaming a response, once started, is
    not cut."""

    def __init__(self, app: ASGIApp, seconds: float, min_bytes_per_s: float = 16 * 1024) -> None:
        self.app = app
        self.seconds = seconds
        self.min_bytes_per_s = min_bytes_per_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        body_done = scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE")
        begun = loop.time()
        deadline = begun + self.seconds
        received = 0
        too_slow = False  # cut for its average rate, rather than for a pause

        async def tracking_receive() -> Message:
            nonlocal body_done, deadline, received, too_slow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = body_done or not message.get("more_body", False)
                stalled = loop.time() + self.seconds  # each piece of the body resets it
                # Each byte buys 1/min_bytes_per_s seconds after the first ``seconds``.
                trickled = begun + self.seconds + received / self.min_bytes_per_s
                deadline = stalled if body_done else min(stalled, trickled)
                too_slow = not body_done and trickled < stalled
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        task = asyncio.ensure_future(self.app(scope, tracking_receive, tracking_send))
        waiter = asyncio.ensure_future(started.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {task, waiter}, timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
                if done or loop.time() >= deadline:
                    break
        finally:
            waiter.cancel()
            if not task.done() and not started.is_set():
                task.cancel()
        if started.is_set() or task.done():
            await task
            return
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
        elif too_slow:
            await send_error(
                send, 408, f"the request body came at {received / (loop.time() - begun):.0f} "
                f"bytes/s, under the least this server takes ({self.min_bytes_per_s / 1024:g} "
                "KB/s on average); send it over a faster connection",
            )  # fmt: skip
        else:
            await send_error(
                send, 408, f"the request body stalled for over {self.seconds:g} s; send it again"
            )


class Gate:
    """Refuses HTTP requests before their body is read.

    ``check(scope)`` returns None to let a request through, or the ``(status, message,
    headers)`` of its refusal; ``on_end(scope)``, if given, runs when a request that was
    let through ends (to count requests in progress).
    """

    def __init__(
        self,
        app: ASGIApp,
        check: Callable[[Scope], tuple[int, str, dict[str, str]] | None],
        on_end: Callable[[Scope], None] | None = None,
    ) -> None:
        self.app = app
        self.check = check
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is not None:
            status, message, headers = refusal
            await send_error(send, status, message, headers)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            if self.on_end is not None:
                self.on_end(scope)
