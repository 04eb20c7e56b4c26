"""The HTTP API fuzzed with schemathesis against its own OpenAPI schema: no request gets a 5xx.

Requests go in process to the ASGI application, with an upload bucket on the moto server,
so POST /identify with {"key": ...} reaches S3. Each operation gets schema-valid
(positive) and schema-invalid (negative) requests, derandomized. A longer run:

    FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz_api.py
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from starlette.testclient import TestClient

from handler.app import create_app
from handler.config import Settings
from tests.handler_support import UPLOAD_BUCKET, tiny_index

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))

# Text that only a leaked stack trace or internal path would put into a response.
LEAK_MARKERS = ("Traceback", "site-packages", 'File "/')


@pytest.fixture(scope="module")
def api_schema(s3_env, tmp_path_factory, tiny_model_dir, sample_dir):
    """The OpenAPI schema of a warm application, loaded through the application itself.

    NOTE: schemathesis.pytest.from_fixture fails under pytest 9.2 ('Function' object has
    no attribute '_nodeid'), so each test builds its own hypothesis test from
    APIOperation.as_strategy instead of using the schemathesis pytest plugin.
    """
    index_dir = tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("fuzz-api-index"))
    settings_ = Settings(
        index_location=str(index_dir),
        model=str(tiny_model_dir),
        upload_bucket=UPLOAD_BUCKET,
        cors_origins=("https://plants.example",),
    )
    app = create_app(settings_)
    app.state.service.warm_up()
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def operations(api_schema) -> list:
    return [operation for methods in api_schema.values() for operation in methods.values()]


def test_schema_lists_operations(api_schema):
    labels = {operation.label for operation in operations(api_schema)}
    assert {"POST /identify", "POST /uploads", "GET /health"} <= labels


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_server_error(api_schema, mode):
    fuzzed = set()
    for operation in operations(api_schema):
        try:
            statuses = fuzz_operation(operation, mode)
        except Unsatisfiable:
            # Every request to an operation without inputs, or with only a string path
            # parameter, is schema-valid, so there is nothing invalid to send.
            if mode is GenerationMode.NEGATIVE:
                continue
            raise
        assert sum(statuses.values()) > 0, operation.label
        fuzzed.add(operation.label)

    assert {"POST /identify", "POST /uploads"} <= fuzzed


def fuzz_operation(operation, mode: GenerationMode) -> Counter[int]:
    """Send EXAMPLES generated requests to `operation`; fails on a 5xx response or a leaked trace."""
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    def check(case):
        response = case.call()
        statuses[response.status_code] += 1

        case.validate_response(response, checks=[not_a_server_error])
        for marker in LEAK_MARKERS:
            assert marker not in response.text, f"{marker!r} in a {response.status_code} response"

    check()
    return statuses


# Failures that fuzzing found, kept as plain tests.


@pytest.mark.parametrize("body", [b"\xbf", b"\x80{}", b'{"key": "\xff"}'], ids=["lone-byte", "leading-byte", "inside-string"])
def test_json_not_utf8_422(body, tiny_model_dir):
    app = create_app(Settings(index_location="unused", model=str(tiny_model_dir)), warm_up=False)
    with TestClient(app) as client:
        response = client.post("/identify", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
