"""Failing dependencies: S3 stopped or returning errors, broken index pointers, failed S3 events.

S3 faults are real: a moto server process is stopped and a new one started on the same
port, or a small HTTP proxy on 127.0.0.1 responds with 500 instead of forwarding to moto.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from handler import lambda_entry
from handler.app import create_app
from handler.config import Settings
from handler.state import ServiceState
from shared import storage
from shared.errors import StorageError
from shared.index_store import load_index, write_index
from tests.handler_support import UPLOAD_BUCKET, running_server, s3_put_event, tiny_index
from tests.s3_server import S3Server

CHECK_SECONDS = 60.0
INDEX_BUCKET = "fault-index"

S3_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)

# Headers that describe one hop of the connection, not the message (RFC 9110, 7.6.1).
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FakeClock:
    """A monotonic clock that tests move forward by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = CHECK_SECONDS) -> None:
        self.now += seconds


# A fault proxy in front of the S3 server.


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to an S3 server or responds with 500 InternalError.

    `fail` decides per request, from the method and the path, whether to respond with 500.
    `failed` counts the requests that got 500.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fail: Callable[[str, str], bool] = lambda method, path: False
        self.failed = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        logging.getLogger(__name__).debug("fault proxy: " + format, *args)

    def _forward(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self._read_body()

        if proxy.fail(self.command, self.path):
            proxy.failed += 1
            self.send_response(500)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(S3_ERROR_BODY)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(S3_ERROR_BODY)
            return

        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_HEADERS}
        headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            upstream_headers = response.getheaders()
        finally:
            connection.close()

        self.send_response(response.status, response.reason)
        for name, value in upstream_headers:
            if name.lower() in HOP_HEADERS or (name.lower() == "content-length" and self.command != "HEAD"):
                continue
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0], 16)
                if size == 0:
                    # Skip any trailer lines up to the empty line that ends the body.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


def always(method: str, path: str) -> bool:
    return True


# Fixtures.


@pytest.fixture(scope="module")
def source_index(tmp_path_factory, tiny_model_dir, sample_dir):
    return load_index(tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("fault-index")))


def write_version(dest: str, source, rows: int | None = None) -> str:
    """Write the first `rows` prototypes of `source` as a new index version under `dest`."""
    count = source.count if rows is None else rows
    meta = {"model": source.meta["model"], "species": list(source.species[:count])}
    return write_index(dest, source.embeddings[:count].astype(np.float32), list(source.plant_ids[:count]), meta)


@pytest.fixture()
def s3_endpoint(monkeypatch) -> Iterator[Callable[[str], None]]:
    """Return a function that points the service's S3 client at an endpoint URL."""

    def point_at(url: str) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        storage.clear_s3_client_cache()

    yield point_at
    monkeypatch.undo()
    storage.clear_s3_client_cache()


@pytest.fixture()
def private_s3(monkeypatch) -> Iterator[S3Server]:
    """A moto server of this test alone, which the test may stop and restart."""
    server = S3Server.start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    storage.clear_s3_client_cache()
    try:
        yield server
    finally:
        server.stop()
        storage.clear_s3_client_cache()


@pytest.fixture()
def proxy(s3_env) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(s3_env.port).start()
    yield fault_proxy
    fault_proxy.stop()


def serving_app(index_location: str, model: Path, clock: FakeClock, **options):
    settings = Settings(index_location=index_location, model=str(model), index_check_seconds=CHECK_SECONDS, **options)
    state = ServiceState(settings, clock=clock)
    return create_app(settings, state=state), state


def post_photo(client: httpx.Client, photo: Path) -> httpx.Response:
    return client.post("/identify", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})


# Cold start while S3 is down or failing.


def test_cold_start_s3_stopped_then_restarted(private_s3, source_index, tiny_model_dir, sample_dir):
    location = f"s3://{INDEX_BUCKET}/index"
    port = private_s3.port
    private_s3.stop()

    clock = FakeClock()
    app, _ = serving_app(location, tiny_model_dir, clock)
    photo = sample_dir / "queries" / "3_1.jpg"
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        down_health = client.get("/health")
        down_identify = post_photo(client, photo)

        restarted = S3Server.start(port=port)
        try:
            restarted.create_bucket(INDEX_BUCKET)
            version = write_version(location, source_index)
            clock.advance()
            up_identify = post_photo(client, photo)
            up_health = client.get("/health")
        finally:
            restarted.stop()

    assert down_health.status_code == 503
    assert down_health.json()["error"] == "storage_error"
    assert f"127.0.0.1:{port}" in down_health.json()["reason"]
    assert down_identify.status_code == 503
    assert down_identify.json()["error"] == "storage_error"
    assert up_identify.status_code == 200, up_identify.text
    assert up_health.json()["index_version"] == version


def test_cold_start_s3_errors_then_recovers(proxy, s3_env, s3_endpoint, source_index, tiny_model_dir, sample_dir):
    s3_endpoint(s3_env.endpoint_url)
    s3_env.client().create_bucket(Bucket=INDEX_BUCKET)
    location = f"s3://{INDEX_BUCKET}/errors-then-recovers"
    version = write_version(location, source_index)

    proxy.fail = always
    s3_endpoint(proxy.endpoint_url)
    clock = FakeClock()
    app, state = serving_app(location, tiny_model_dir, clock)
    photo = sample_dir / "queries" / "3_1.jpg"
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        failing = client.get("/health")
        failing_identify = post_photo(client, photo)

        proxy.fail = lambda method, path: False
        clock.advance()
        recovered = post_photo(client, photo)

    assert proxy.failed >= 1
    assert failing.status_code == 503
    assert "InternalError" in failing.json()["reason"]
    assert failing_identify.status_code == 503
    assert recovered.status_code == 200, recovered.text
    assert recovered.json()["index_version"] == version
    assert state.index_loads == 1


def test_reload_s3_errors_keep_old(proxy, s3_env, s3_endpoint, source_index, tiny_model_dir, sample_dir, caplog):
    s3_endpoint(s3_env.endpoint_url)
    s3_env.client().create_bucket(Bucket=INDEX_BUCKET)
    location = f"s3://{INDEX_BUCKET}/reload-errors"
    first = write_version(location, source_index)

    s3_endpoint(proxy.endpoint_url)
    clock = FakeClock()
    app, state = serving_app(location, tiny_model_dir, clock)
    photo = sample_dir / "queries" / "3_1.jpg"
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        proxy.fail = always
        clock.advance()
        with caplog.at_level(logging.WARNING, logger="handler.state"):
            during = post_photo(client, photo)
        degraded = client.get("/health").json()

        proxy.fail = lambda method, path: False
        clock.advance()
        after = client.get("/health").json()

    assert during.status_code == 200
    assert during.json()["index_version"] == first
    assert degraded["status"] == "degraded"
    assert any("keeping " + first in record.getMessage() for record in caplog.records)
    assert after["status"] == "ok"


# Index pointers that name a missing or invalid version.


def point_at_missing_version(dest: Path, cases_dir: Path) -> str:
    pointer = {
        "format_version": 1,
        "version": "missing-files",
        "embeddings": "versions/missing-files/embeddings_fp16.npz",
        "meta": "versions/missing-files/meta.json",
    }
    (dest / "latest.json").write_text(json.dumps(pointer), encoding="utf-8")
    return "files are missing"


def point_at_wrong_dimension(dest: Path, cases_dir: Path) -> str:
    folder = dest / "versions" / "wrong-dimension"
    folder.mkdir(parents=True)
    (folder / "embeddings_fp16.npz").write_bytes((cases_dir / "index" / "index_wrong_dim.npz").read_bytes())
    (folder / "meta.json").write_bytes((cases_dir / "index" / "meta_ok.json").read_bytes())
    pointer = {
        "format_version": 1,
        "version": "wrong-dimension",
        "embeddings": "versions/wrong-dimension/embeddings_fp16.npz",
        "meta": "versions/wrong-dimension/meta.json",
    }
    (dest / "latest.json").write_text(json.dumps(pointer), encoding="utf-8")
    return "768"


def point_at_pickled_version(dest: Path, cases_dir: Path) -> str:
    folder = dest / "versions" / "pickled"
    folder.mkdir(parents=True)
    (folder / "embeddings_fp16.npz").write_bytes((cases_dir / "index" / "index_pickled_object.npz").read_bytes())
    (folder / "meta.json").write_bytes((cases_dir / "index" / "meta_ok.json").read_bytes())
    pointer = {
        "format_version": 1,
        "version": "pickled",
        "embeddings": "versions/pickled/embeddings_fp16.npz",
        "meta": "versions/pickled/meta.json",
    }
    (dest / "latest.json").write_text(json.dumps(pointer), encoding="utf-8")
    return "pickle"


def corrupt_pointer(dest: Path, cases_dir: Path) -> str:
    (dest / "latest.json").write_text('{"format_version": 1, "version": ', encoding="utf-8")
    return "not valid JSON"


def pointer_outside_index(dest: Path, cases_dir: Path) -> str:
    pointer = {
        "format_version": 1,
        "version": "escape",
        "embeddings": "../../elsewhere/embeddings_fp16.npz",
        "meta": "versions/escape/meta.json",
    }
    (dest / "latest.json").write_text(json.dumps(pointer), encoding="utf-8")
    return "relative to the index folder"


@pytest.mark.parametrize(
    "break_pointer",
    [point_at_missing_version, point_at_wrong_dimension, point_at_pickled_version, corrupt_pointer, pointer_outside_index],
    ids=["missing", "wrong-dim", "pickled", "not-json", "outside"],
)
def test_bad_pointer_keeps_old(tmp_path, source_index, tiny_model_dir, sample_dir, cases_dir, caplog, break_pointer):
    first = write_version(str(tmp_path), source_index)
    clock = FakeClock()
    state = ServiceState(Settings(index_location=str(tmp_path), model=str(tiny_model_dir)), clock=clock)
    state.warm_up()

    reason = break_pointer(tmp_path, cases_dir)
    clock.advance()
    with caplog.at_level(logging.WARNING, logger="handler.state"):
        identifier = state.identifier()

    from shared.imaging import decode_image

    result = identifier.identify(decode_image((sample_dir / "queries" / "3_1.jpg").read_bytes()), top_k=3)
    messages = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert identifier.index.version == first
    assert len(result.matches) == 3
    assert any(reason in message and first in message for message in messages), messages
    assert state.health()[1]["status"] == "degraded"


# S3 events whose read or write fails. An event delivered twice is tested in test_lambda_entry.py.


@pytest.fixture()
def entry(s3_env, tmp_path_factory, tiny_model_dir, sample_dir):
    """The Lambda entry point with a warm application that reads uploads from the moto server."""
    index_dir = tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("fault-lambda-index"))
    settings = Settings(index_location=str(index_dir), model=str(tiny_model_dir), upload_bucket=UPLOAD_BUCKET)
    app = create_app(settings)
    app.state.service.warm_up()
    lambda_entry.configure(app)
    yield lambda_entry.handler
    lambda_entry.configure(create_app(Settings(index_location="unused"), warm_up=False))


def result_objects(s3_client, key: str) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=UPLOAD_BUCKET, Prefix=f"results/{key}")
    return [item["Key"] for item in listing.get("Contents", [])]


def uploads_read(method: str, path: str) -> bool:
    return method == "GET" and f"/{UPLOAD_BUCKET}/uploads/" in path


def results_write(method: str, path: str) -> bool:
    return method == "PUT" and f"/{UPLOAD_BUCKET}/results/" in path


def test_get_object_error_raises(entry, s3_env, proxy, s3_endpoint, sample_dir):
    client = s3_env.client()
    key = "uploads/read-fails.jpg"
    data = (sample_dir / "queries" / "15_1.jpg").read_bytes()
    client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    proxy.fail = uploads_read
    s3_endpoint(proxy.endpoint_url)
    with pytest.raises(StorageError):
        entry(s3_put_event(UPLOAD_BUCKET, key, len(data)), None)

    assert proxy.failed >= 1
    assert result_objects(client, key) == []


def test_retry_after_read_error_writes(entry, s3_env, proxy, s3_endpoint, sample_dir):
    client = s3_env.client()
    key = "uploads/read-fails-then-works.jpg"
    data = (sample_dir / "queries" / "15_1.jpg").read_bytes()
    client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)
    event = s3_put_event(UPLOAD_BUCKET, key, len(data))

    proxy.fail = uploads_read
    s3_endpoint(proxy.endpoint_url)
    with pytest.raises(StorageError):
        entry(event, None)
    proxy.fail = lambda method, path: False
    summary = entry(event, None)

    assert summary["results"] == [f"results/{key}.json"]
    assert result_objects(client, key) == [f"results/{key}.json"]


def test_result_write_error_raises(entry, s3_env, proxy, s3_endpoint, sample_dir):
    client = s3_env.client()
    key = "uploads/write-fails.jpg"
    data = (sample_dir / "queries" / "20_2.jpg").read_bytes()
    client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    proxy.fail = results_write
    s3_endpoint(proxy.endpoint_url)
    with pytest.raises(StorageError):
        entry(s3_put_event(UPLOAD_BUCKET, key, len(data)), None)

    assert proxy.failed >= 1
    assert result_objects(client, key) == []
