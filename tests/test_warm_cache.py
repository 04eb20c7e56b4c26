"""The warm cache: one model and index load per process, throttled version checks and reloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError

import shared.encoder
import shared.index_store
from handler import lambda_entry
from handler.app import create_app
from handler.config import Settings
from handler.state import ServiceState
from shared import storage
from shared.errors import PlantIdError
from shared.index_store import load_index, write_index
from tests.handler_support import (
    free_port,
    http_api_v2_event,
    multipart_body,
    response_json,
    rest_v1_event,
    tiny_index,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECK_SECONDS = 60.0


class FakeClock:
    """A monotonic clock that tests move forward by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CallCounter:
    """Wrap a function, counting calls and passing them through to the real one."""

    def __init__(self, function) -> None:
        self.function = function
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture(scope="module")
def source_index(tmp_path_factory, tiny_model_dir, sample_dir):
    return load_index(tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("warm-index")))


def write_version(dest: str, source, rows: int | None = None) -> str:
    """Write the first `rows` prototypes of `source` as a new index version under `dest`."""
    count = source.count if rows is None else rows
    meta = {"model": source.meta["model"], "species": list(source.species[:count])}
    return write_index(dest, source.embeddings[:count].astype(np.float32), list(source.plant_ids[:count]), meta)


def write_broken_version(dest: Path, cases_dir: Path) -> None:
    """Point latest.json at a version whose embeddings are 768-dimensional."""
    folder = dest / "versions" / "broken"
    folder.mkdir(parents=True)
    (folder / "embeddings_fp16.npz").write_bytes((cases_dir / "index" / "index_wrong_dim.npz").read_bytes())
    (folder / "meta.json").write_bytes((cases_dir / "index" / "meta_ok.json").read_bytes())
    pointer = {
        "format_version": 1,
        "version": "broken",
        "embeddings": "versions/broken/embeddings_fp16.npz",
        "meta": "versions/broken/meta.json",
    }
    (dest / "latest.json").write_text(json.dumps(pointer), encoding="utf-8")


def make_state(index_location: str, model: Path, clock: FakeClock) -> ServiceState:
    settings = Settings(index_location=index_location, model=str(model), index_check_seconds=CHECK_SECONDS)
    return ServiceState(settings, clock=clock)


def serving_version(state: ServiceState) -> str:
    return state.identifier().index.version


# Loads across Lambda invocations.


def test_lambda_loads_once(tmp_path, source_index, tiny_model_dir, sample_dir, monkeypatch):
    write_version(str(tmp_path), source_index)
    encoder_calls = CallCounter(shared.encoder.load_encoder)
    index_calls = CallCounter(shared.index_store.load_index)
    monkeypatch.setattr(shared.encoder, "load_encoder", encoder_calls)
    monkeypatch.setattr(shared.index_store, "load_index", index_calls)

    app = create_app(Settings(index_location=str(tmp_path), model=str(tiny_model_dir)), warm_up=False)
    lambda_entry.configure(app)
    photo = sample_dir / "queries" / "3_1.jpg"
    body, content_type = multipart_body({}, photo.name, photo.read_bytes())
    events = [
        http_api_v2_event("POST", "/identify", body, content_type),
        http_api_v2_event("GET", "/health"),
        rest_v1_event("POST", "/identify", body, content_type),
        http_api_v2_event("POST", "/identify", body, content_type),
        rest_v1_event("GET", "/health"),
    ]
    try:
        statuses = [lambda_entry.handler(event, None)["statusCode"] for event in events]
    finally:
        lambda_entry.configure(create_app(Settings(index_location="unused"), warm_up=False))

    assert statuses == [200] * 5
    assert encoder_calls.calls == 1
    assert index_calls.calls == 1
    assert app.state.service.model_loads == 1
    assert app.state.service.index_loads == 1


def test_health_reports_load_counts(tmp_path, source_index, tiny_model_dir):
    write_version(str(tmp_path), source_index)
    app = create_app(Settings(index_location=str(tmp_path), model=str(tiny_model_dir)), warm_up=False)
    lambda_entry.configure(app)
    try:
        for _ in range(3):
            body = response_json(lambda_entry.handler(http_api_v2_event("GET", "/health"), None))
    finally:
        lambda_entry.configure(create_app(Settings(index_location="unused"), warm_up=False))

    assert body["model_loads"] == 1
    assert body["index_loads"] == 1


def test_init_phase_and_home(tmp_path, source_index, tiny_model_dir, sample_dir):
    """On Lambda the import loads everything, and nothing is written under the read-only HOME."""
    index_dir = tmp_path / "index"
    write_version(str(index_dir), source_index)
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)

    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PLANT_ID_", "XDG_"))}
    env.update(
        HOME=str(home),
        AWS_LAMBDA_FUNCTION_NAME="plant-id-test",
        PLANT_ID_INDEX=str(index_dir),
        PLANT_ID_MODEL=str(tiny_model_dir),
        PYTHONPATH=str(REPO_ROOT),
    )
    photo = sample_dir / "queries" / "3_1.jpg"
    script = f"""
import json, os
import handler.lambda_entry as entry
state = entry.current_app().state.service
loads_after_import = (state.model_loads, state.index_loads)
import transformers, huggingface_hub
from tests.handler_support import http_api_v2_event, multipart_body
body, content_type = multipart_body({{}}, "p.jpg", open({str(photo)!r}, "rb").read())
statuses = [entry.handler(http_api_v2_event("POST", "/identify", body, content_type), None)["statusCode"] for _ in range(2)]
print(json.dumps({{"after_import": loads_after_import, "after_calls": (state.model_loads, state.index_loads),
                  "statuses": statuses, "hf_home": os.environ["HF_HOME"], "hub_cache": os.environ["HF_HUB_CACHE"]}}))
"""
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    assert report["after_import"] == [1, 1]
    assert report["after_calls"] == [1, 1]
    assert report["statuses"] == [200, 200]
    assert report["hf_home"] == "/tmp/hf"
    assert report["hub_cache"] == "/tmp/hf/hub"
    assert list(home.iterdir()) == []


# Version checks and reloads.


def test_no_check_before_interval(tmp_path, source_index, tiny_model_dir):
    clock = FakeClock()
    first = write_version(str(tmp_path), source_index)
    state = make_state(str(tmp_path), tiny_model_dir, clock)
    state.warm_up()

    write_version(str(tmp_path), source_index, rows=11)
    clock.advance(CHECK_SECONDS - 1)

    assert serving_version(state) == first
    assert state.version_checks == 0


def test_reload_after_interval(tmp_path, source_index, tiny_model_dir):
    clock = FakeClock()
    write_version(str(tmp_path), source_index)
    state = make_state(str(tmp_path), tiny_model_dir, clock)
    state.warm_up()

    second = write_version(str(tmp_path), source_index, rows=11)
    clock.advance(CHECK_SECONDS)

    assert serving_version(state) == second
    assert state.identifier().index.count == 11
    assert state.index_loads == 2


def test_same_version_not_reloaded(tmp_path, source_index, tiny_model_dir):
    clock = FakeClock()
    write_version(str(tmp_path), source_index)
    state = make_state(str(tmp_path), tiny_model_dir, clock)
    state.warm_up()

    for _ in range(3):
        clock.advance(CHECK_SECONDS)
        state.identifier()

    assert state.version_checks == 3
    assert state.index_loads == 1


def test_failed_reload_keeps_old(tmp_path, source_index, tiny_model_dir, cases_dir):
    clock = FakeClock()
    first = write_version(str(tmp_path), source_index)
    state = make_state(str(tmp_path), tiny_model_dir, clock)
    state.warm_up()

    write_broken_version(tmp_path, cases_dir)
    clock.advance(CHECK_SECONDS)

    assert serving_version(state) == first


def test_failed_reload_health_degraded(tmp_path, source_index, tiny_model_dir, cases_dir):
    clock = FakeClock()
    write_version(str(tmp_path), source_index)
    state = make_state(str(tmp_path), tiny_model_dir, clock)
    state.warm_up()

    write_broken_version(tmp_path, cases_dir)
    clock.advance(CHECK_SECONDS)
    status, body = state.health()

    assert status == 200
    assert body["status"] == "degraded"
    assert "768" in body["reason"]


def test_invalid_version_not_reloaded(tmp_path, source_index, tiny_model_dir, cases_dir, monkeypatch):
    clock = FakeClock()
    write_version(str(tmp_path), source_index)
    state = make_state(str(tmp_path), tiny_model_dir, clock)
    state.warm_up()
    write_broken_version(tmp_path, cases_dir)
    clock.advance(CHECK_SECONDS)
    state.identifier()

    index_calls = CallCounter(shared.index_store.load_index)
    monkeypatch.setattr(shared.index_store, "load_index", index_calls)
    for _ in range(2):
        clock.advance(CHECK_SECONDS)
        state.identifier()

    assert index_calls.calls == 0
    assert state.health()[1]["status"] == "degraded"


def test_recovers_after_failed_reload(tmp_path, source_index, tiny_model_dir, cases_dir):
    clock = FakeClock()
    write_version(str(tmp_path), source_index)
    state = make_state(str(tmp_path), tiny_model_dir, clock)
    state.warm_up()
    write_broken_version(tmp_path, cases_dir)
    clock.advance(CHECK_SECONDS)
    state.identifier()

    fixed = write_version(str(tmp_path), source_index, rows=10)
    clock.advance(CHECK_SECONDS)

    assert serving_version(state) == fixed
    assert state.health()[1]["status"] == "ok"


# Cold start failures.


def test_cold_start_missing_index_503(tmp_path, tiny_model_dir):
    state = make_state(str(tmp_path / "empty"), tiny_model_dir, FakeClock())
    state.warm_up()
    status, body = state.health()

    assert status == 503
    assert body["error"] == "index_not_found"
    assert body["model_loaded"] is True


def test_cold_start_identify_raises_503(tmp_path, tiny_model_dir):
    state = make_state(str(tmp_path / "empty"), tiny_model_dir, FakeClock())
    state.warm_up()

    with pytest.raises(PlantIdError) as raised:
        state.identifier()

    assert raised.value.status == 503


def test_cold_start_retry_throttled(tmp_path, source_index, tiny_model_dir, monkeypatch):
    clock = FakeClock()
    state = make_state(str(tmp_path), tiny_model_dir, clock)
    state.warm_up()
    index_calls = CallCounter(shared.index_store.load_index)
    monkeypatch.setattr(shared.index_store, "load_index", index_calls)

    write_version(str(tmp_path), source_index)
    clock.advance(CHECK_SECONDS - 1)
    for _ in range(3):
        state.health()

    assert index_calls.calls == 0
    assert state.ready is False


def test_cold_start_retry_recovers(tmp_path, source_index, tiny_model_dir):
    clock = FakeClock()
    state = make_state(str(tmp_path), tiny_model_dir, clock)
    state.warm_up()

    version = write_version(str(tmp_path), source_index)
    clock.advance(CHECK_SECONDS)

    assert serving_version(state) == version
    assert state.health()[0] == 200


@pytest.mark.parametrize(
    ("npz", "meta", "words"),
    [
        ("index_pickled_object.npz", "meta_ok.json", "pickle"),
        ("index_wrong_dim.npz", "meta_ok.json", "768"),
        ("index_missing_key.npz", "meta_ok.json", "embeddings"),
        ("index_not_npz.npz", "meta_ok.json", "npz"),
        ("index_ok.npz", "meta_length_mismatch.json", "2"),
    ],
)
def test_case_indexes_503(tmp_path, cases_dir, tiny_model_dir, npz, meta, words):
    (tmp_path / "embeddings_fp16.npz").write_bytes((cases_dir / "index" / npz).read_bytes())
    (tmp_path / "meta.json").write_bytes((cases_dir / "index" / meta).read_bytes())
    state = make_state(str(tmp_path), tiny_model_dir, FakeClock())
    state.warm_up()
    status, body = state.health()

    assert status == 503
    assert words in body["reason"]


def test_case_fp16_index_scores_finite(tmp_path, cases_dir, tiny_model_dir, sample_dir):
    """The unnormalised fp16 index is rejected, or it serves finite scores in [-1, 1]."""
    from shared.imaging import decode_image

    (tmp_path / "embeddings_fp16.npz").write_bytes((cases_dir / "index" / "index_fp16_unnormalized.npz").read_bytes())
    (tmp_path / "meta.json").write_bytes((cases_dir / "index" / "meta_ok.json").read_bytes())
    state = make_state(str(tmp_path), tiny_model_dir, FakeClock())
    state.warm_up()
    if not state.ready:
        assert state.health()[0] == 503
        return

    image = decode_image((sample_dir / "queries" / "3_1.jpg").read_bytes())
    scores = [match.score for match in state.identifier().identify(image, top_k=3).matches]
    assert all(np.isfinite(scores))
    assert all(-1.0 <= score <= 1.0 for score in scores)


def test_case_ok_index_serves(tmp_path, cases_dir, tiny_model_dir):
    (tmp_path / "embeddings_fp16.npz").write_bytes((cases_dir / "index" / "index_ok.npz").read_bytes())
    (tmp_path / "meta.json").write_bytes((cases_dir / "index" / "meta_ok.json").read_bytes())
    state = make_state(str(tmp_path), tiny_model_dir, FakeClock())
    state.warm_up()

    assert state.health()[1]["index_count"] == 3


def test_model_missing_503(tmp_path):
    state = make_state(str(tmp_path), tmp_path / "no-model-here", FakeClock())
    state.warm_up()
    status, body = state.health()

    assert status == 503
    assert body["error"] == "model_unavailable"
    assert "no-model-here" in body["reason"]


def test_model_retry_throttled(tmp_path, monkeypatch):
    clock = FakeClock()
    state = make_state(str(tmp_path), tmp_path / "no-model-here", clock)
    state.warm_up()
    encoder_calls = CallCounter(shared.encoder.load_encoder)
    monkeypatch.setattr(shared.encoder, "load_encoder", encoder_calls)

    state.health()
    clock.advance(CHECK_SECONDS)
    state.health()

    assert encoder_calls.calls == 1


# An index in S3.


@pytest.fixture()
def s3_index(s3_server, source_index, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    storage.clear_s3_client_cache()
    try:
        s3_server.create_bucket("plant-id-index")
    except ClientError as error:
        if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    yield "s3://plant-id-index/warm-cache"
    monkeypatch.undo()
    storage.clear_s3_client_cache()


def test_s3_index_reload(s3_index, source_index, tiny_model_dir):
    clock = FakeClock()
    write_version(s3_index, source_index)
    state = make_state(s3_index, tiny_model_dir, clock)
    state.warm_up()

    second = write_version(s3_index, source_index, rows=9)
    clock.advance(CHECK_SECONDS)

    assert serving_version(state) == second


def test_s3_unreachable_then_recovers(s3_index, source_index, tiny_model_dir):
    version = write_version(s3_index, source_index)
    clock = FakeClock()
    state = make_state(s3_index, tiny_model_dir, clock)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        storage.clear_s3_client_cache()
        state.warm_up()
        status, body = state.health()

    assert status == 503
    assert body["error"] == "storage_error"

    storage.clear_s3_client_cache()
    clock.advance(CHECK_SECONDS)

    assert serving_version(state) == version
