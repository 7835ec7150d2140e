"""The API fuzzed from its own OpenAPI schema (schemathesis): whatever the query, path
or multipart body, the server answers without a 5xx and never crashes."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from ferkit.serve.app import create_app  # noqa: E402
from ferkit.serve.config import ServeConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

#: Examples per operation: bounded, so the whole fuzz takes well under a minute here.
EXAMPLES = 40


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from fastapi.testclient import TestClient

    # schemathesis's in-process client calls the app "testserver": trusted here.
    config = ServeConfig(jobs_dir=str(tmp_path_factory.mktemp("jobs")), trusted_hosts="testserver")
    application = create_app(config)
    with TestClient(application, base_url="http://localhost"):  # start-up, then clean-up
        yield application


def operations(app) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_covers_every_route(app):
    labels = {operation.label for operation in operations(app)}
    assert labels == {
        "GET /healthz", "POST /v1/predict", "POST /v1/videos", "GET /v1/videos/{job_id}",
        "GET /v1/videos/{job_id}/annotated",
    }  # fmt: skip


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize(
    "label",
    ["GET /healthz", "POST /v1/predict", "POST /v1/videos", "GET /v1/videos/{job_id}",
     "GET /v1/videos/{job_id}/annotated"],
)  # fmt: skip
def test_no_request_makes_the_server_fail(app, label, mode):
    """Requests that follow the schema and requests that break it (schemathesis makes
    both): never a 5xx, always a JSON error body."""
    (operation,) = [op for op in operations(app) if op.label == label]
    statuses = []

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def one_request(case):
        response = case.call()
        case.validate_response(response, checks=[not_a_server_error])
        statuses.append(response.status_code)
        check_answer(response)

    try:
        one_request()
    except Unsatisfiable:
        assert mode == "negative" and label == "GET /healthz"  # nothing there to break
        return
    assert statuses and all(status < 500 for status in statuses)


def check_answer(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and "Traceback" not in body["error"]


@pytest.fixture(scope="module")
def photo_bytes() -> bytes:
    from tests.conftest import require_shared

    return (require_shared("samples") / "justin.jpg").read_bytes()


def test_damaged_photos_never_make_the_server_fail(app, photo_bytes):
    """A real JPEG, cut short and with bytes overwritten anywhere (headers included):
    each is classified or refused (413/415), never a server error."""
    from fastapi.testclient import TestClient

    client = TestClient(app, base_url="http://localhost")
    seen = set()

    @given(
        cut=st.none() | st.integers(0, len(photo_bytes)),
        flips=st.lists(
            st.tuples(st.integers(0, len(photo_bytes) - 1), st.integers(0, 255)), max_size=8
        ),
    )
    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def one_photo(cut, flips):
        data = bytearray(photo_bytes)
        for position, value in flips:
            data[position] = value
        data = data if cut is None else data[:cut]
        response = client.post("/v1/predict", files={"file": ("p.jpg", bytes(data))})
        check_answer(response)
        assert response.status_code in (200, 413, 415)
        seen.add(response.status_code)

    one_photo()
    assert {200, 415} <= seen  # both kinds of outcome were reached
