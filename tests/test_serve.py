"""ferkit serve's API on real photos and videos: results equal the library's, every error
is JSON with its status, limits hold (body size, pixels, files, video length, jobs,
saturation, time), keys and origins are checked, nothing is left behind on disk."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from ferkit.serve.app import create_app
from ferkit.serve.config import ServeConfig, is_loopback
from ferkit.serve.engine import RecognizerPool, Saturated
from ferkit.serve.guards import BodyLimit, Timeout
from ferkit.serve.jobs import valid_job_id
from tests.conftest import require_shared, write_truncated_video

pytestmark = pytest.mark.real_data

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def samples() -> Path:
    return require_shared("samples")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One server (the bundled model, default settings) for the module's tests."""
    jobs = tmp_path_factory.mktemp("jobs")
    app = create_app(ServeConfig(jobs_dir=str(jobs), max_video_s=60))
    with local_client(app) as test_client:
        test_client.jobs_dir = jobs
        yield test_client


def local_client(app) -> TestClient:
    """A test client that calls the app as a browser on this machine would
    (``http://localhost``: a loopback server answers to loopback names only)."""
    return TestClient(app, base_url="http://localhost", raise_server_exceptions=False)


def post_file(client, name: str, data: bytes, field: str = "file", url: str = "/v1/predict", **kw):
    return client.post(url, files={field: (name, data)}, **kw)


def assert_error(response, status: int, *words: str) -> dict:
    """The response is a JSON error with ``status`` whose message holds ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert "Traceback" not in body["error"]
    for word in words:
        assert word in body["error"], body["error"]
    return body


def wait_for_job(client, url: str, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        state = client.get(url).json()
        seen.append(state["progress"]["frames_done"])
        if state["status"] in ("done", "failed"):
            state["progress_seen"] = seen
            return state
        time.sleep(0.3)
    raise AssertionError(f"the job at {url} did not finish in {timeout_s} s")


# -- health ---------------------------------------------------------------------------


def test_healthz_names_the_model_its_classes_and_checksum_state(client):
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["model"]["name"] == "default"
    assert body["model"]["classes"] == [
        "angry", "disgust", "fear", "happy", "neutral", "sad", "surprise",
    ]  # fmt: skip
    assert body["model"]["checksums"] == "verified"
    assert body["limits"]["max_pixels"] == ServeConfig().max_pixels


# -- photos ---------------------------------------------------------------------------


def test_predict_gives_the_librarys_faces_and_probabilities(client, samples):
    from ferkit import EmotionRecognizer

    data = (samples / "couple.jpg").read_bytes()
    response = post_file(client, "couple.jpg", data)
    assert response.status_code == 200
    body = response.json()
    expected = EmotionRecognizer().predict(samples / "couple.jpg")
    assert (body["width"], body["height"]) == (expected.width, expected.height)
    assert len(body["faces"]) == len(expected) == 2
    for face, reference in zip(body["faces"], expected, strict=True):
        assert face["box"] == list(reference.box)
        assert face["label"] == reference.label
        for name, p in reference.probabilities.items():
            assert face["probabilities"][name] == pytest.approx(p, abs=1e-5)
        assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert set(face["landmarks"]) >= {"left_eye", "right_eye"}
        assert 0 < face["detector_confidence"] <= 1


def test_predict_reads_the_smile_and_the_empty_photo(client, samples):
    happy = post_file(client, "justin.jpg", (samples / "justin.jpg").read_bytes()).json()
    assert [face["label"] for face in happy["faces"]] == ["happy"]
    empty = post_file(client, "no-faces.jpg", (samples / "no-faces.jpg").read_bytes())
    assert empty.status_code == 200
    assert empty.json()["faces"] == []


def test_several_files_one_bad_the_rest_complete(client, samples):
    files = [
        ("files", ("justin.jpg", (samples / "justin.jpg").read_bytes())),
        ("files", ("notes.jpg", b"these are notes, not a photo")),
        ("files", ("couple.jpg", (samples / "couple.jpg").read_bytes())),
    ]
    images = client.post("/v1/predict", files=files).json()["images"]
    assert [entry["filename"] for entry in images] == ["justin.jpg", "notes.jpg", "couple.jpg"]
    assert [face["label"] for face in images[0]["faces"]] == ["happy"]
    assert images[1]["status"] == 415 and "not an image" in images[1]["error"]
    assert len(images[2]["faces"]) == 2


def test_faces_crop_option_takes_the_image_as_one_face(client, samples):
    body = client.post(
        "/v1/predict?faces=crop", files={"file": ("n.jpg", (samples / "no-faces.jpg").read_bytes())}
    ).json()
    assert body["face_mode"] == "crop" and len(body["faces"]) == 1
    assert body["faces"][0]["detector_confidence"] is None


@pytest.mark.parametrize("detector", ["haar", "blazeface"])
def test_detector_option_is_used(client, samples, detector):
    data = (samples / "justin.jpg").read_bytes()
    body = client.post(f"/v1/predict?detector={detector}", files={"file": ("j.jpg", data)}).json()
    assert len(body["faces"]) == 1
    # Haar gives no landmarks; BlazeFace gives six: the detector really changed.
    assert (body["faces"][0]["landmarks"] is None) == (detector == "haar")


def test_not_an_image_is_415_naming_the_file(client):
    assert_error(
        post_file(client, "report.jpg", b"plain text " * 50), 415, "report.jpg", "not an image"
    )


def test_truncated_jpeg_is_415(client, samples):
    data = (samples / "justin.jpg").read_bytes()[:2000]
    assert_error(post_file(client, "cut.jpg", data), 415, "cut.jpg", "truncated")


def test_pixel_bomb_png_is_refused_without_decoding(client):
    """A 16000x16000 PNG of a few hundred KB is refused from its header."""
    image = Image.new("L", (16000, 16000))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    del image
    data = buffer.getvalue()
    assert len(data) < 2**20
    started = time.perf_counter()
    assert_error(post_file(client, "bomb.png", data), 413, "bomb.png", "pixels")
    assert time.perf_counter() - started < 2.0  # decoding 256 megapixels takes far longer


@pytest.mark.parametrize(
    ("query", "words"),
    [("faces=sideways", ["faces"]), ("detector=nonsense", ["detector"])],
)
def test_bad_options_are_422(client, samples, query, words):
    data = (samples / "justin.jpg").read_bytes()
    assert_error(client.post(f"/v1/predict?{query}", files={"file": ("j.jpg", data)}), 422, *words)


def test_malformed_requests_are_400(client):
    assert_error(client.post("/v1/predict"), 400, "file")
    assert_error(client.post("/v1/predict", data={"file": "not a file"}), 400, "file")
    broken = client.post(
        "/v1/predict",
        content=b"--xyz\r\nnonsense",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert broken.status_code == 400 and "error" in broken.json()


def test_unknown_routes_and_methods_are_json_errors(client):
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/predict"), 405)


def test_too_many_files_is_413(client, samples):
    data = (samples / "no-faces.jpg").read_bytes()
    files = [("files", (f"{i}.jpg", data)) for i in range(ServeConfig().max_files + 1)]
    assert_error(client.post("/v1/predict", files=files), 413, "files")


# -- other installed models (?model=NAME) ------------------------------------------

EIGHT = ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def test_healthz_lists_the_models_a_request_may_pick(client):
    models = client.get("/healthz").json()["models"]
    assert list(models) == ["default", "fast", "ferplus"]
    assert models["ferplus"]["classes"] == EIGHT and len(models["default"]["classes"]) == 7
    assert models["ferplus"]["selected_on"] == "FER+ val, plurality labels"


def test_a_request_picks_the_ferplus_model_by_name(client, samples):
    from ferkit import EmotionRecognizer

    response = client.post(
        "/v1/predict?model=ferplus",
        files={"file": ("c.jpg", (samples / "couple.jpg").read_bytes())},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "ferplus"
    expected = EmotionRecognizer(model="ferplus").predict(samples / "couple.jpg")
    assert [face["label"] for face in body["faces"]] == [face.label for face in expected]
    for face, reference in zip(body["faces"], expected, strict=True):
        assert list(face["probabilities"]) == EIGHT
        for name, p in reference.probabilities.items():
            assert face["probabilities"][name] == pytest.approx(p, abs=1e-5)
    # Without ?model= (or with the served model's own name): the served model, one copy.
    plain = post_file(client, "c.jpg", (samples / "couple.jpg").read_bytes()).json()
    assert plain["model"] == "default" and "contempt" not in plain["faces"][0]["probabilities"]
    pool = client.app.state.pool
    assert pool.base_for("default") is pool.base and pool.base_for("ferplus") is pool.base_for(
        "ferplus"
    )
    assert_error(
        client.post("/v1/predict?model=nope", files={"file": ("c.jpg", b"x")}), 422, "model"
    )


def test_video_jobs_and_the_socket_take_the_model_too(client, samples):
    data = (samples / "test.mp4").read_bytes()
    created = post_file(client, "test.mp4", data, url="/v1/videos?model=ferplus")
    assert created.status_code == 202, created.text
    state = wait_for_job(client, created.json()["status_url"])
    assert state["status"] == "done", state.get("error")
    faces = [face for frame in state["result"]["frames"] for face in frame["faces"]]
    assert faces and all(list(face["probabilities"]) == EIGHT for face in faces)
    frame = frames_of(samples / "woman2.mp4", 1)[0]
    with client.websocket_connect("ws://localhost/v1/stream?model=ferplus") as socket:
        socket.send_bytes(frame)
        answer = json.loads(socket.receive_text())
    assert answer["type"] == "faces" and list(answer["faces"][0]["probabilities"]) == EIGHT
    from starlette.websockets import WebSocketDisconnect

    unknown = client.websocket_connect("ws://localhost/v1/stream?model=nope")
    with pytest.raises(WebSocketDisconnect) as closed, unknown as socket:
        socket.receive_text()
    assert closed.value.code == 1008 and "not offered" in closed.value.reason


def test_a_server_may_offer_no_other_model(tmp_path, samples):
    config = ServeConfig(models="none", jobs_dir=str(tmp_path / "jobs"))
    with local_client(create_app(config)) as limited:
        assert limited.get("/healthz").json()["models"] == {}
        response = limited.post(
            "/v1/predict?model=ferplus",
            files={"file": ("j.jpg", (samples / "justin.jpg").read_bytes())},
        )
        assert_error(response, 422, "model")
        served = limited.post(
            "/v1/predict?model=default",
            files={"file": ("j.jpg", (samples / "justin.jpg").read_bytes())},
        )
        assert served.status_code == 200 and served.json()["model"] == "default"  # its own
    assert ServeConfig(models="ferplus").offered_models() == ("ferplus",)
    with pytest.raises(ValueError, match="not installed"):
        ServeConfig(models="ferplus,nope")


# -- limits on a small server -------------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """A server with small limits, an API key and one allowed foreign origin."""
    config = ServeConfig(
        api_key=KEY, max_upload_mb=0.5, max_video_mb=1.0, max_video_s=5, max_jobs=1,
        cors_origins="https://app.example", jobs_dir=str(tmp_path_factory.mktemp("jobs")),
        job_ttl_s=3600,
    )  # fmt: skip
    with local_client(create_app(config)) as test_client:
        test_client.headers["X-API-Key"] = KEY
        yield test_client


def test_body_over_the_limit_is_413_before_it_is_read(strict):
    big = b"\xff\xd8\xff" + bytes(600_000)
    assert_error(post_file(strict, "big.jpg", big), 413, "limit")


def test_chunked_body_over_the_limit_is_413(strict):
    def chunks():
        for _ in range(20):
            yield bytes(64_000)

    response = strict.post(
        "/v1/predict", content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )  # fmt: skip
    assert_error(response, 413, "limit")


def test_api_key_is_required_except_for_healthz(strict, samples):
    data = (samples / "justin.jpg").read_bytes()
    anonymous = {"X-API-Key": ""}
    assert strict.get("/healthz", headers=anonymous).status_code == 200
    assert strict.get("/healthz").json()["api_key_required"] is True
    assert_error(strict.post("/v1/predict", files={"file": ("j.jpg", data)}, headers=anonymous), 401, "API key")  # fmt: skip
    wrong = {"X-API-Key": "wrong-key-0123456789"}
    assert_error(strict.post("/v1/predict", files={"file": ("j.jpg", data)}, headers=wrong), 401)
    assert_error(strict.get("/v1/videos/" + "0" * 32, headers=wrong), 401)
    assert strict.post("/v1/predict", files={"file": ("j.jpg", data)}).status_code == 200


def test_the_socket_needs_the_key_too(strict, samples):
    from starlette.websockets import WebSocketDisconnect

    anonymous = strict.websocket_connect("ws://localhost/v1/stream", headers={"X-API-Key": ""})
    with pytest.raises(WebSocketDisconnect) as refused, anonymous as socket:
        socket.receive_text()
    assert refused.value.code == 1008 and "API key" in refused.value.reason
    with strict.websocket_connect(f"ws://localhost/v1/stream?api_key={KEY}") as socket:
        socket.send_bytes((samples / "justin.jpg").read_bytes())
        assert json.loads(socket.receive_text())["type"] == "faces"


def test_other_sites_are_refused_unless_allowed(strict, samples):
    data = (samples / "justin.jpg").read_bytes()
    foreign = strict.post("/v1/predict", files={"file": ("j.jpg", data)},
                          headers={"Origin": "https://evil.example"})  # fmt: skip
    assert_error(foreign, 403, "evil.example", "--cors-origins")
    allowed = strict.post("/v1/predict", files={"file": ("j.jpg", data)},
                          headers={"Origin": "https://app.example"})  # fmt: skip
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    preflight = strict.options("/v1/predict", headers={"Origin": "https://app.example",
                               "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert preflight.status_code == 204
    assert "x-api-key" in preflight.headers["access-control-allow-headers"]
    same = strict.post("/v1/predict", files={"file": ("j.jpg", data)},
                       headers={"Origin": "http://localhost"})  # fmt: skip
    assert same.status_code == 200 and "access-control-allow-origin" not in same.headers


def test_foreign_socket_is_refused(strict):
    from starlette.websockets import WebSocketDisconnect

    foreign = strict.websocket_connect(
        f"ws://localhost/v1/stream?api_key={KEY}", headers={"Origin": "https://evil.example"}
    )
    with pytest.raises(WebSocketDisconnect) as refused, foreign as socket:
        socket.receive_text()
    assert refused.value.code == 1008


def test_a_loopback_server_refuses_other_host_names(client, samples):
    """A page of another site whose name was made to point at 127.0.0.1 (DNS rebinding)
    arrives with that name as Host, and is refused."""
    data = (samples / "justin.jpg").read_bytes()
    rebound = client.post("/v1/predict", files={"file": ("j.jpg", data)},
                          headers={"Host": "evil.example:8000"})  # fmt: skip
    assert_error(rebound, 403, "evil.example")
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200
    trusting = create_app(ServeConfig(trusted_hosts="ferkit.example"))
    with local_client(trusting) as proxied:
        assert proxied.get("/healthz", headers={"Host": "ferkit.example"}).status_code == 200
        assert proxied.get("/healthz", headers={"Host": "evil.example"}).status_code == 403


def test_page_sends_a_restrictive_content_security_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in page.headers


def test_no_path_reaches_outside_the_jobs_and_static_folders(client):
    for path in (  # encoded: a client sends them as they are (literal ones: real_server)
        "/v1/videos/..%2F..%2F..%2Fetc%2Fpasswd",
        "/v1/videos/" + "a" * 31 + "/annotated",
        "/v1/videos/%2e%2e/annotated",
        "/static/%2e%2e/app.py",
        "/static/%2e%2e%2fapp.py",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "def create_app" not in response.text and "root:" not in response.text
    assert valid_job_id("0123456789abcdef0123456789abcdef")
    assert not valid_job_id("../0123456789abcdef0123456789ab")


def test_saturated_server_answers_503_with_retry_after(client, samples):
    pool = client.app.state.pool
    data = (samples / "justin.jpg").read_bytes()
    pool.admitted += pool.capacity  # every place taken, as under a burst
    try:
        response = post_file(client, "j.jpg", data)
    finally:
        pool.admitted -= pool.capacity
    assert_error(response, 503, "saturated")
    assert int(response.headers["retry-after"]) >= 1
    assert post_file(client, "j.jpg", data).status_code == 200


def test_pool_admits_its_capacity_and_lends_each_recogniser_to_one_thread():
    class Base:
        detector = type("D", (), {"name": "haar"})()

        def with_detector(self, name=None):
            return object()

    pool = RecognizerPool(Base(), size=2, max_pending=1)
    with pool.admit(), pool.admit(), pool.admit(), pytest.raises(Saturated), pool.admit():
        pass
    with pool.lend() as first, pool.lend() as second:
        assert first is not second
    with pool.lend() as again:
        assert again in (first, second)  # returned, not made anew


def test_pool_survives_a_detector_that_cannot_be_made():
    """A detector whose library is missing fails each request that asks for it, at
    once; it never leaves another request waiting for a recogniser that will not come."""
    import threading

    class Base:
        detector = type("D", (), {"name": "haar"})()

        def with_detector(self, name=None):
            if name == "broken":
                time.sleep(0.05)
                raise ValueError("no such library")
            return object()

    pool = RecognizerPool(Base(), size=1, max_pending=4)
    outcomes = []

    def ask():
        try:
            with pool.lend("broken"):
                outcomes.append("lent")
        except ValueError:
            outcomes.append("refused")

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)
    assert outcomes == ["refused"] * 3
    with pool.lend() as recognizer:
        assert recognizer is not None


def test_pool_loads_each_model_once_and_remembers_one_that_fails():
    import threading

    from ferkit.serve.engine import ModelUnavailable

    loads = []

    class Base:
        detector = type("D", (), {"name": "haar"})()

        def with_detector(self, name=None):
            return object()

        def with_model(self, name):
            loads.append(name)
            time.sleep(0.05)
            if name == "broken":
                raise ValueError("checksum mismatch")
            return Base()

    pool = RecognizerPool(Base(), size=1, max_pending=4, models=("good", "broken"))
    got = []
    threads = [threading.Thread(target=lambda: got.append(pool.base_for("good"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert loads == ["good"] and len({id(base) for base in got}) == 1  # racing requests, one load
    for _ in range(3):
        with pytest.raises(ModelUnavailable, match="checksum mismatch"):
            pool.base_for("broken")
    assert loads == ["good", "broken"]  # the failure is remembered, not retried
    with pytest.raises(ValueError, match="not offered"):
        pool.base_for("other")


def test_decode_budget_waits_for_room_then_says_the_server_is_busy():
    import threading

    from ferkit.serve.engine import DecodeBudget

    budget = DecodeBudget(100, wait_s=0.2)
    with budget.hold(60):
        with pytest.raises(Saturated, match="decoding other images"), budget.hold(60):
            pass
        with budget.hold(40):  # what fits goes on at once
            assert budget.held == 100
    with budget.hold(1000):  # over the whole budget: decoded alone
        assert budget.held == 100
    assert budget.held == 0
    budget = DecodeBudget(100, wait_s=5)
    entered = threading.Event()

    def second() -> None:
        with budget.hold(10):
            entered.set()

    with budget.hold(100):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not entered.wait(0.2)  # waits while the budget is full...
    assert entered.wait(5)  # ...and goes on once it is freed
    waiter.join()


def test_photos_of_every_model_and_detector_share_one_decoding_budget(client, samples, monkeypatch):
    """Requests with different detectors and models get recognisers of their own, but
    decode within the process's one budget: with room for one image, never two at once."""
    import threading

    import ferkit.serve.engine as engine
    from ferkit.images import decode_memory

    data = (samples / "justin.jpg").read_bytes()
    pool = client.app.state.pool
    monkeypatch.setattr(pool, "decode_budget", engine.DecodeBudget(decode_memory(data), 60))
    decoding = {"now": 0, "most": 0}
    lock = threading.Lock()
    real_decode = engine.decode_image

    def counted_decode(*args, **kwargs):
        with lock:
            decoding["now"] += 1
            decoding["most"] = max(decoding["most"], decoding["now"])
        time.sleep(0.3)  # long enough for the others to arrive
        try:
            return real_decode(*args, **kwargs)
        finally:
            with lock:
                decoding["now"] -= 1

    monkeypatch.setattr(engine, "decode_image", counted_decode)
    queries = ["detector=haar", "detector=blazeface", "detector=blazeface-full", "model=ferplus"]
    statuses = []
    threads = [
        threading.Thread(target=lambda q=q: statuses.append(
            post_file(client, "j.jpg", data, url=f"/v1/predict?{q}").status_code))
        for q in queries
    ]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [200] * 4
    assert decoding["most"] == 1


def test_body_limit_and_timeout_layers():
    """The ASGI layers alone: a streamed body cut at its limit, a slow body (408) and a
    slow answer (503 with Retry-After)."""

    async def slow_reader(scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # what a route does when the body is cut off
            if not message.get("more_body"):
                break
        await asyncio.sleep(5)

    async def call(app, chunks, complete=True):
        sent = []
        queue = [{"type": "http.request", "body": c,
                  "more_body": not complete or i < len(chunks) - 1}
                 for i, c in enumerate(chunks)]  # fmt: skip

        async def receive():
            if queue:
                return queue.pop(0)
            await asyncio.sleep(10)  # a client that stalls
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": []}
        await app(scope, receive, send)
        return sent[0]["status"], {k.decode(): v.decode() for k, v in sent[0]["headers"]}

    limited = BodyLimit(slow_reader, lambda scope: 1000)
    assert asyncio.run(call(limited, [bytes(600), bytes(600)]))[0] == 413
    status, headers = asyncio.run(call(Timeout(slow_reader, 0.2), [b"x"]))
    assert status == 503 and headers["retry-after"] == "5"
    status, _ = asyncio.run(call(Timeout(slow_reader, 0.2), [b"x"], complete=False))
    assert status == 408


def test_config_refuses_unsafe_or_impossible_settings():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    with pytest.raises(ValueError, match="--api-key"):
        ServeConfig(host="0.0.0.0").check_exposure()
    ServeConfig(host="0.0.0.0", insecure=True).check_exposure()
    ServeConfig(host="0.0.0.0", api_key=KEY).check_exposure()
    with pytest.raises(ValueError, match="at least 8"):
        ServeConfig(api_key="short")
    with pytest.raises(ValueError, match="max_upload_mb"):
        ServeConfig(max_upload_mb=float("nan"))
    with pytest.raises(ValueError, match="detector"):
        ServeConfig(detector="nonsense")


def test_serve_command_refuses_an_open_address_without_a_key():
    result = subprocess.run(
        [sys.executable, "-m", "ferkit", "serve", "--host", "0.0.0.0", "--port", "9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--api-key" in result.stderr and "--insecure" in result.stderr


# -- videos ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_job(client, samples):
    """test.mp4 through a video job, to the end."""
    data = (samples / "test.mp4").read_bytes()
    response = post_file(client, "test.mp4", data, url="/v1/videos")
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["location"] == created["status_url"]
    return created, wait_for_job(client, created["status_url"])


def test_video_job_reports_progress_and_the_pipelines_results(video_job, samples):
    from ferkit import EmotionRecognizer

    created, state = video_job
    assert created["status"] == "queued" and valid_job_id(created["id"])
    assert state["status"] == "done", state.get("error")
    assert state["progress"] == {"frames_done": 115, "frames_total": 115, "fraction": 1.0}
    assert state["progress_seen"] == sorted(state["progress_seen"])  # never goes back
    result = state["result"]
    assert result["frames_read"] == 115 and len(result["frames"]) == 115
    assert sum(result["share_of_time"].values()) == pytest.approx(1.0, abs=1e-3)
    reference = list(EmotionRecognizer().predict_video(samples / "test.mp4"))
    for frame, expected in zip(result["frames"], reference, strict=True):
        assert frame["index"] == expected.index
        assert [f["label"] for f in frame["faces"]] == [f.label for f in expected.faces]
        assert [f["raw_label"] for f in frame["faces"]] == [f.raw_label for f in expected.faces]
        assert [f["track_id"] for f in frame["faces"]] == [f.track_id for f in expected.faces]


def test_annotated_video_is_a_playable_webm_with_every_frame(client, video_job, tmp_path):
    import cv2

    _, state = video_job
    url = f"/v1/videos/{state['id']}/annotated"
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "video/webm"
    assert response.content[:4] == b"\x1a\x45\xdf\xa3"  # the EBML header of WebM
    path = tmp_path / "annotated.webm"
    path.write_bytes(response.content)
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 115
    partial = client.get(url, headers={"Range": "bytes=0-99"})  # browsers seek this way
    assert partial.status_code == 206 and len(partial.content) == 100


def test_finished_job_keeps_no_upload_and_is_removed_after_its_time(client, video_job):
    _, state = video_job
    folder = client.jobs_dir / state["id"]
    assert not list(folder.glob("input*"))  # the upload is gone once processed
    jobs = client.app.state.jobs
    assert jobs.sweep(now=time.time()) == []  # not yet expired
    assert state["id"] in jobs.sweep(now=time.time() + jobs.ttl_s + 1)
    assert not folder.exists()
    assert_error(client.get(f"/v1/videos/{state['id']}"), 404, "no video job")
    assert_error(client.get(f"/v1/videos/{state['id']}/annotated"), 404)


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("clip.mp4", b"definitely not a video " * 100, ["not a readable video"]),
        ("photo.mp4", None, ["JPEG image", "/v1/predict"]),
        ("empty.mp4", b"", ["empty"]),
    ],
)
def test_video_uploads_that_are_not_videos_are_415(client, samples, name, content, words):
    data = (samples / "justin.jpg").read_bytes() if content is None else content
    before = set(client.jobs_dir.iterdir())
    assert_error(post_file(client, name, data, url="/v1/videos"), 415, *words)
    assert set(client.jobs_dir.iterdir()) == before  # nothing left behind


def test_busy_video_slots_answer_429_then_a_long_video_413(strict, samples, tmp_path):
    import cv2

    video = (samples / "test.mp4").read_bytes()  # 4.7 s: several seconds of work here
    first = post_file(strict, "a.mp4", video, url="/v1/videos")
    assert first.status_code == 202
    second = post_file(strict, "b.mp4", video, url="/v1/videos")
    assert_error(second, 429, "video uploads or jobs")
    assert int(second.headers["retry-after"]) >= 1
    assert wait_for_job(strict, first.json()["status_url"])["status"] == "done"
    # The slot is free again; a video over this server's 5 s is refused for its length.
    path = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 1, (64, 48))
    for _ in range(8):  # 8 s at 1 frame/s; a few KB
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    assert_error(post_file(strict, "long.avi", path.read_bytes(), url="/v1/videos"), 413, "5 s")


def test_a_truncated_video_job_is_done_with_a_note(client, samples, tmp_path):
    """A video whose stream ends at frame 48 of the 464 it announces: the job is done
    with a note, its progress short of the announced frames, and its results say both
    counts (it was done, no note, progress 48/48)."""
    video = write_truncated_video(samples / "woman2.mp4", tmp_path / "cut.mp4")
    response = post_file(client, "cut.mp4", video.read_bytes(), url="/v1/videos")
    assert response.status_code == 202, response.text
    state = wait_for_job(client, response.json()["status_url"])
    assert state["status"] == "done", state
    result, read = state["result"], state["result"]["frames_read"]
    assert 40 <= read < 60 and result["frames_announced"] == 464 and result["partial"]
    assert f"stream ended at frame {read} of the 464" in state["note"]
    assert result["note"] == state["note"]
    assert state["progress"] == {"frames_done": read, "frames_total": 464,
                                 "fraction": round(read / 464, 4)}  # fmt: skip
    assert len(result["frames"]) == read


def test_a_failed_jobs_video_is_404_with_the_reason(client):
    job_id = "f" * 32
    folder = client.jobs_dir / job_id
    folder.mkdir()
    state = {"id": job_id, "status": "failed", "error": "the video stream broke",
             "created": time.time(), "updated": time.time(), "pid": os.getpid()}  # fmt: skip
    (folder / "job.json").write_text(json.dumps(state))
    assert client.get(f"/v1/videos/{job_id}").json()["error"] == "the video stream broke"
    assert_error(client.get(f"/v1/videos/{job_id}/annotated"), 404, "the video stream broke")


def test_stream_sessions_are_limited(tmp_path, samples):
    from starlette.websockets import WebSocketDisconnect

    limited = local_client(create_app(ServeConfig(max_streams=1)))
    with limited, limited.websocket_connect("ws://localhost/v1/stream") as first:
        second = limited.websocket_connect("ws://localhost/v1/stream")
        with pytest.raises(WebSocketDisconnect) as refused, second as socket:
            socket.receive_text()
        assert refused.value.code == 1013 and "live sessions" in refused.value.reason
        first.send_bytes((samples / "justin.jpg").read_bytes())
        assert json.loads(first.receive_text())["type"] == "faces"


def test_job_folder_is_removed_when_the_server_stops(tmp_path):
    app = create_app(ServeConfig())
    with local_client(app):
        root = app.state.jobs.root
        assert root.is_dir()
    assert not root.exists()


# -- the live socket -----------------------------------------------------------------


def frames_of(video: Path, count: int) -> list[bytes]:
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.imencode(".jpg", frame)[1].tobytes())
    return frames


def test_stream_tracks_and_smooths_a_face_across_frames(client, samples):
    frames = frames_of(samples / "woman2.mp4", 30)
    answers = []
    with client.websocket_connect("ws://localhost/v1/stream") as socket:
        for frame in frames:  # one at a time, as a client that waits for each answer
            socket.send_bytes(frame)
            answers.append(json.loads(socket.receive_text()))
            time.sleep(1 / 30)
    assert [a["type"] for a in answers] == ["faces"] * len(frames)
    assert [a["frame"] for a in answers] == list(range(1, len(frames) + 1))
    assert all(len(a["faces"]) == 1 for a in answers)
    assert {a["faces"][0]["track_id"] for a in answers} == {1}
    face = answers[-1]["faces"][0]
    assert set(face) >= {"box", "label", "probabilities", "raw_label", "raw_probabilities"}
    # Smoothing: the smoothed values move less from frame to frame than the raw ones.
    raw = np.array([[a["faces"][0]["raw_probabilities"][c] for c in sorted(face["probabilities"])] for a in answers])  # fmt: skip
    smooth = np.array([[a["faces"][0]["probabilities"][c] for c in sorted(face["probabilities"])] for a in answers])  # fmt: skip
    assert np.abs(np.diff(smooth, axis=0)).mean() < np.abs(np.diff(raw, axis=0)).mean()


def burst(client, frames: list[bytes], url: str = "ws://localhost/v1/stream") -> list[dict]:
    """Send every frame at once, far faster than frames are classified; the answers."""
    with client.websocket_connect(url) as socket:
        for frame in frames:
            socket.send_bytes(frame)
        return [json.loads(socket.receive_text()) for _ in frames]


def test_stream_drops_frames_over_the_rate_limit(client, samples):
    answers = burst(client, frames_of(samples / "woman2.mp4", 20))
    assert sorted(a["frame"] for a in answers) == list(range(1, 21))  # one answer each
    classified = [a["frame"] for a in answers if a["type"] == "faces"]
    assert classified[0] <= 2 and len(classified) < 5  # 20 frames in far less than 20/30 s
    reasons = {a["reason"] for a in answers if a["type"] == "dropped"}
    assert "over the frame-rate limit" in reasons
    assert reasons <= {"over the frame-rate limit", "a newer frame came before it was classified"}


def test_stream_keeps_the_newest_frame_rather_than_queueing(samples):
    """Without a rate limit in the way, frames that arrive while one is classified
    replace each other: the newest is classified next, the rest are dropped."""
    app = create_app(ServeConfig(ws_max_fps=1e9))  # no limit in practice
    with local_client(app) as fast:
        answers = burst(fast, frames_of(samples / "woman2.mp4", 40))
    assert sorted(a["frame"] for a in answers) == list(range(1, 41))
    classified = [a["frame"] for a in answers if a["type"] == "faces"]
    assert len(classified) < 20 and classified[-1] == 40
    assert {a["reason"] for a in answers if a["type"] == "dropped"} == {
        "a newer frame came before it was classified"
    }


def test_stream_errors_bad_frames_and_closes_on_oversized_ones(strict):
    from starlette.websockets import WebSocketDisconnect

    with strict.websocket_connect(f"ws://localhost/v1/stream?api_key={KEY}") as socket:
        socket.send_text("hello")
        assert "binary" in json.loads(socket.receive_text())["error"]
        socket.send_bytes(b"not a jpeg at all")
        answer = json.loads(socket.receive_text())
        assert answer["type"] == "error" and "not a usable image" in answer["error"]
        socket.send_bytes(bytes(ServeConfig().ws_max_frame_kb * 1024 + 1))
        assert "over the limit" in json.loads(socket.receive_text())["error"]
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
        assert closed.value.code == 1009


# -- load -----------------------------------------------------------------------------


@pytest.mark.slow
def test_short_load_has_no_server_errors_and_bounded_memory():
    """A bounded load on loopback against a real ``ferkit serve`` process (the full
    figures come from ``ferkit benchmark serve``)."""
    from ferkit.serve.loadtest import benchmark_serve

    report = benchmark_serve(clients=4, duration_s=5.0)
    print(report.text())
    assert report.requests > 20
    assert report.server_errors == 0 and report.errors == 0
    assert set(report.statuses) <= {200, 429, 503}
    assert report.memory_growth_mb < 50


# -- face geometry (?geometry=1) --------------------------------------------------------


def assert_geometry(face: dict) -> None:
    """A face carries its geometry as the API documents it."""
    from ferkit.geometry import BLENDSHAPE_NAMES

    assert list(face["blendshapes"]) == list(BLENDSHAPE_NAMES)
    assert all(0 <= score <= 1 for score in face["blendshapes"].values())
    assert set(face["head_pose"]) == {"yaw", "pitch", "roll"}
    assert len(face["mesh"]) == 478 and all(len(point) == 3 for point in face["mesh"])
    x, y, w, h = face["box"]
    inside = [x - w / 2 < px < x + 1.5 * w and y - h / 2 < py < y + 1.5 * h for px, py, _ in face["mesh"]]  # fmt: skip
    assert all(inside)


def test_photos_carry_geometry_when_asked_equal_to_the_librarys(client, samples):
    from ferkit import EmotionRecognizer

    data = (samples / "couple.jpg").read_bytes()
    plain = post_file(client, "couple.jpg", data).json()
    assert not any({"blendshapes", "head_pose", "mesh"} & set(face) for face in plain["faces"])
    body = post_file(client, "couple.jpg", data, url="/v1/predict?geometry=1").json()
    expected = EmotionRecognizer(geometry=True).predict(samples / "couple.jpg")
    assert len(body["faces"]) == len(expected) == 2
    for face, reference, before in zip(body["faces"], expected, plain["faces"], strict=True):
        assert_geometry(face)
        assert set(face["landmarks"]) >= {"left_eye", "right_eye"}  # the detector's, as before
        assert face["probabilities"] == before["probabilities"]  # geometry changes no label
        for name, score in reference.geometry.blendshapes.items():
            assert face["blendshapes"][name] == pytest.approx(score, abs=1e-4)
        assert face["head_pose"]["yaw"] == pytest.approx(reference.geometry.yaw, abs=0.01)
        mesh = np.array(face["mesh"])
        assert np.abs(mesh - reference.geometry.landmarks).max() <= 0.05 + 1e-3
    smile = post_file(client, "j.jpg", (samples / "justin.jpg").read_bytes(),
                      url="/v1/predict?geometry=1").json()["faces"][0]  # fmt: skip
    assert smile["blendshapes"]["mouthSmileRight"] > 0.7 and abs(smile["head_pose"]["yaw"]) < 10
    several = client.post(
        "/v1/predict?geometry=true",
        files=[("files", ("a.jpg", data)), ("files", ("b.jpg", b"not an image"))],
    ).json()
    assert_geometry(several["images"][0]["faces"][0])
    assert several["images"][1]["status"] == 415
    assert_error(
        post_file(client, "a.jpg", data, url="/v1/predict?geometry=maybe"), 422, "geometry"
    )


def test_video_job_with_geometry_gives_faces_and_tracks_their_activity(client, samples):
    data = (samples / "test.mp4").read_bytes()
    created = post_file(client, "test.mp4", data, url="/v1/videos?geometry=1")
    assert created.status_code == 202, created.text
    assert created.json()["geometry"] is True
    state = wait_for_job(client, created.json()["status_url"])
    assert state["status"] == "done", state.get("error")
    result = state["result"]
    faces = [face for frame in result["frames"] for face in frame["faces"]]
    assert len(faces) == 115
    for face in faces[::20]:
        assert_geometry(face)
    activity = result["geometry_per_track"]["1"]
    assert set(activity) >= {"blinks", "blink_rate_per_min", "smile_mean", "head_turns"}
    assert activity["blinks"] == 0  # the man in test.mp4 does not blink in its 115 frames
    assert activity["smile_mean"] == pytest.approx(
        np.mean([(f["blendshapes"]["mouthSmileLeft"] + f["blendshapes"]["mouthSmileRight"]) / 2 for f in faces]),
        abs=1e-3,
    )  # fmt: skip


def test_stream_faces_carry_geometry_when_asked(client, samples):
    frames = frames_of(samples / "woman2.mp4", 3)
    with client.websocket_connect("ws://localhost/v1/stream?geometry=1") as socket:
        for frame in frames:
            socket.send_bytes(frame)
            answer = json.loads(socket.receive_text())
            assert answer["type"] == "faces" and len(answer["faces"]) == 1
            assert_geometry(answer["faces"][0])
    with client.websocket_connect("ws://localhost/v1/stream") as socket:
        socket.send_bytes(frames[0])
        assert "mesh" not in json.loads(socket.receive_text())["faces"][0]


def test_openapi_documents_the_geometry_option_everywhere(client):
    schema = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/videos"):
        parameters = {p["name"]: p for p in schema["paths"][path]["post"]["parameters"]}
        assert "blendshapes" in parameters["geometry"]["description"]
        assert "head_pose" in parameters["geometry"]["description"]
