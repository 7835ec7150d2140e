"""``ferkit serve`` as a real process (Uvicorn on a free loopback port), spoken to with
raw HTTP and WebSocket clients: what an in-process test client cannot show (literal
``..`` in paths, refusals before the body is sent, the close a browser sees)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("websockets")

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from ferkit.serve.loadtest import free_port, running_server
from tests.conftest import require_shared

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

KEY = "process-key-0123456789"


@pytest.fixture(scope="module")
def port():
    number = free_port()
    with running_server(number, "--api-key", KEY, "--max-upload-mb", "1"):
        yield number


def raw_request(
    port: int, head: str, body: bytes = b"", wait_s: float = 10.0
) -> tuple[int, dict, bytes]:
    """Send ``head`` (request line and headers) and ``body`` as they are; the status,
    headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


def test_literal_dot_dot_paths_reach_nothing(port):
    for path in ("/static/../app.py", "/static/../../../../etc/passwd",
                 "/v1/videos/../../etc/passwd", "/static/..%2f..%2fapp.py"):  # fmt: skip
        status, _, body = raw_request(
            port, f"GET {path} HTTP/1.1\nHost: 127.0.0.1\nX-API-Key: {KEY}\nConnection: close\n"
        )
        assert status == 404, (path, status)
        assert b"create_app" not in body and b"root:" not in body


def test_a_request_without_the_key_is_refused_before_its_body(port):
    """The server answers 401 with the body still unsent: a client without the key
    cannot make it store anything."""
    started = time.monotonic()
    status, _, body = raw_request(
        port,
        "POST /v1/videos HTTP/1.1\nHost: 127.0.0.1\nContent-Type: multipart/form-data; "
        "boundary=x\nContent-Length: 100000000\nConnection: close\n",
    )
    assert status == 401 and "API key" in json.loads(body)["error"]
    assert time.monotonic() - started < 5


def test_a_body_declared_over_the_limit_is_refused_before_it_is_sent(port):
    status, _, body = raw_request(
        port,
        f"POST /v1/predict HTTP/1.1\nHost: 127.0.0.1\nX-API-Key: {KEY}\nContent-Type: "
        "multipart/form-data; boundary=x\nContent-Length: 10000000000\nConnection: close\n",
    )
    assert status == 413 and "limit" in json.loads(body)["error"]


def test_a_rebound_host_name_is_refused(port):
    status, _, body = raw_request(
        port, f"GET /v1/videos/{'0' * 32} HTTP/1.1\nHost: evil.example\nX-API-Key: {KEY}\n"
        "Connection: close\n",
    )  # fmt: skip
    assert status == 403 and "evil.example" in json.loads(body)["error"]


def test_the_socket_tells_a_wrong_key_by_its_close(port):
    """What a browser sees: the socket opens, then closes with 1008 and the reason."""

    async def connect(query: str):
        async with ws_connect(f"ws://127.0.0.1:{port}/v1/stream{query}") as ws:
            if query:
                await ws.send((require_shared("samples") / "justin.jpg").read_bytes())
                return json.loads(await ws.recv())
            await ws.recv()

    with pytest.raises(ConnectionClosed) as closed:
        asyncio.run(connect(""))
    assert closed.value.rcvd.code == 1008 and "API key" in closed.value.rcvd.reason
    answer = asyncio.run(connect(f"?api_key={KEY}"))
    assert answer["type"] == "faces" and answer["faces"][0]["label"] == "happy"


def test_the_page_and_its_files_are_served_with_their_policy(port):
    status, headers, body = raw_request(
        port, "GET / HTTP/1.1\nHost: localhost\nConnection: close\n"
    )
    assert status == 200 and b"/static/app.js" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    status, headers, _ = raw_request(
        port, "GET /static/app.js HTTP/1.1\nHost: localhost\nConnection: close\n"
    )
    assert status == 200 and "javascript" in headers["content-type"]


def test_two_workers_share_the_video_jobs(tmp_path):
    """With --workers 2 a job started through one worker is followed through whichever
    answers (the jobs live on disk), to its results and annotated video."""
    samples = require_shared("samples")
    number = free_port()
    with running_server(number, "--jobs-dir", str(tmp_path / "jobs"), workers=2) as server:
        boundary = "ferkitboundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.mp4"'
                "\r\nContent-Type: video/mp4\r\n\r\n"
            ).encode()
            + (samples / "test.mp4").read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, _, answer = raw_request(
            number,
            "POST /v1/videos HTTP/1.1\nHost: localhost\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\nContent-Length: {len(body)}\nConnection: close\n",
            body,
        )
        assert status == 202, answer
        job = json.loads(answer)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, _, answer = raw_request(
                number, f"GET {job['status_url']} HTTP/1.1\nHost: localhost\nConnection: close\n"
            )
            state = json.loads(answer)
            if state["status"] in ("done", "failed"):
                break
            time.sleep(0.3)
        assert state["status"] == "done", state
        assert state["result"]["frames_read"] == 115
        status, _, video = raw_request(
            number, f"GET {job['annotated_url']} HTTP/1.1\nHost: localhost\nConnection: close\n"
        )
        assert status == 200 and video[:4] == b"\x1a\x45\xdf\xa3"
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text()
        workers = [int(pid) for pid in children.split()]
        assert len(workers) >= 2  # the worker processes behind the one port
    assert not list((tmp_path / "jobs").glob("*/input*"))  # no upload left behind
