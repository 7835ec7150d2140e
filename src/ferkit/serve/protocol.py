"""The HTTP protocol the server runs: Uvicorn's, with a deadline for a request's headers.

Uvicorn reads a request's headers without a time limit (its keep-alive timeout ends with
the first byte of the next request, and a new connection has none), and no ASGI layer
sees a request before its headers are complete: a client sending them one byte every
few seconds would hold its connection for as long as it likes. Here a connection whose
request headers are not complete within ``header_timeout_s`` of its opening (or of the
end of its last response) is answered 408 and closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

try:  # the protocol Uvicorn picks by default ("auto"): httptools when installed
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornProtocol
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornProtocol

_BODY = json.dumps({"error": "the request's headers did not arrive in time"}).encode()
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


class HeaderDeadlineProtocol(_UvicornProtocol):
    """Uvicorn's HTTP protocol with a deadline for each request's headers.

    ``header_timeout_s`` is a class setting, so that Uvicorn's worker processes, which
    import this class by name, get it too: each process sets it when it makes its app
    (:func:`use_header_timeout`).
    """

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._waiting_after: Any = None  # the request cycle before the awaited headers

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_deadline is None:
            return
        # A new request cycle means its headers are complete; a socket upgrade hands the
        # connection to the WebSocket protocol.
        if self.cycle is not self._waiting_after or self.transport.get_protocol() is not self:
            self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._await_headers()  # the next request on this connection; none pipelined

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._cancel_deadline()
        self._waiting_after = self.cycle
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if self.cycle is self._waiting_after:
            self.transport.write(_TIMED_OUT)
            self.transport.close()


def use_header_timeout(seconds: float) -> None:
    """Set the header deadline of this process's connections."""
    HeaderDeadlineProtocol.header_timeout_s = seconds
