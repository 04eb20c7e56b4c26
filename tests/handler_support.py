"""Helpers shared by the inference function tests: the tiny index, a uvicorn server, events and case tables.

The tiny index is built once per test session (cached here, because session fixtures
defined in a test module run once per module).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from PIL import features

UPLOAD_BUCKET = "plant-id-uploads"

# Expected HTTP status of POST /identify for every file of the fault cases' images folder.
_AVIF_STATUS = 200 if features.check("avif") else 415
CASE_IMAGE_STATUS: dict[str, int] = {
    "control_rgb.jpg": 200,
    "cmyk.jpg": 200,
    "grayscale_8bit.png": 200,
    "grayscale.jpg": 200,
    "grayscale_16bit.png": 200,
    "rgba.png": 200,
    "la_mode.png": 200,
    "palette_transparent.png": 200,
    "exif_rotated.jpg": 200,
    "exif_orientation_3.jpg": 200,
    "exif_orientation_invalid_9.jpg": 200,
    "truncated.jpg": 400,
    "truncated.png": 400,
    "header_only.jpg": 400,
    "zero_bytes.jpg": 400,
    "not_an_image.jpg": 400,
    "svg_as_jpg.jpg": 415,
    "jpeg_named.png": 200,
    "heic_stub.heic": 415,
    "heic_stub_named.jpg": 415,
    "sample.avif": _AVIF_STATUS,
    "animated.gif": 200,
    "animated.webp": 200,
    "tiny_1x1.png": 400,
    "tiny_3x5.png": 400,
    "extreme_aspect_1x4000.png": 400,
    "huge_dimensions.png": 413,
    "plant_species_thumbnail_image_ 7 é.jpg": 200,
    "payload_over_6mb.jpg": 413,
}

# Expected result status through an S3 upload where it differs from POST /identify: the
# 5 MB photo exceeds only the 4.5 MB direct-request limit, not the 10 MB upload limit.
S3_STATUS_OVERRIDES: dict[str, int] = {"payload_over_6mb.jpg": 200}

# Lambda's limit on a synchronous invocation payload (the whole event JSON).
LAMBDA_PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024


def case_images(cases_dir: Path) -> list[Path]:
    """Return every file of the cases' images folder; fails on a file without an expected status."""
    images = sorted(path for path in (cases_dir / "images").iterdir() if path.is_file())
    unknown = [path.name for path in images if path.name not in CASE_IMAGE_STATUS]
    assert not unknown, f"no expected status for case images: {unknown}"
    return images


# Tiny index.

_INDEX_CACHE: dict[tuple[str, str], Path] = {}


def tiny_index(model_dir: Path, sample_dir: Path, dest: Path) -> Path:
    """Build the index of the sample reference photos with the tiny model, once per session.

    The prototypes come from the indexer's own build step with the default recipe and 20
    augmentations, the settings under which each sample reference photo ranks its own
    species first with the tiny model. The index has no thumbnails.
    """
    cache_key = (str(model_dir), str(sample_dir))
    cached = _INDEX_CACHE.get(cache_key)
    if cached is not None:
        return cached

    from indexer.build import build_prototypes
    from indexer.scan import find_reference_photos
    from shared.augment import DEFAULT_RECIPE
    from shared.catalog import read_species_csv
    from shared.encoder import load_encoder
    from shared.index_store import write_index

    encoder = load_encoder(str(model_dir))
    catalog, _ = read_species_csv(sample_dir / "species.csv")
    scan = find_reference_photos(sample_dir / "reference")
    result = build_prototypes(scan.photos, encoder, DEFAULT_RECIPE, count=20, seed=0, progress=False)

    meta = {
        "model": {"id": encoder.model_id, "revision": encoder.revision, "backend": encoder.backend},
        "species": [catalog[plant_id].to_row() for plant_id in result.plant_ids],
        "test_model": encoder.is_test_model,
    }
    write_index(str(dest), result.embeddings, result.plant_ids, meta)
    _INDEX_CACHE[cache_key] = dest
    return dest


def reference_photos(sample_dir: Path) -> dict[str, Path]:
    """Return {plant_id: reference photo} of the committed sample photos."""
    photos = sorted((sample_dir / "reference").glob("plant_species_thumbnail_image_*.jpg"))
    return {photo.stem.rsplit("_", 1)[1]: photo for photo in photos}


# Uvicorn server.


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_server(app: Any, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on 127.0.0.1 and yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()

    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.05)

    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# Events in the shapes that API Gateway and S3 send.


def multipart_body(fields: dict[str, str], file_name: str | None, data: bytes | None, content_type: str = "image/jpeg") -> tuple[bytes, str]:
    """Encode form fields and an optional `file` part; returns (body, Content-Type header)."""
    boundary = f"----testBoundary{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode("utf-8")
        )
    if data is not None:
        header = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        parts.append(header.encode("utf-8") + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def http_api_v2_event(
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Return an API Gateway HTTP API (payload 2.0) event with a base64 body."""
    headers = {"host": "abc123.execute-api.eu-west-1.amazonaws.com", "accept": "application/json"}
    if content_type:
        headers["content-type"] = content_type
    if body:
        headers["content-length"] = str(len(body))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": urllib.parse.urlencode(query or {}),
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": headers["host"],
            "domainPrefix": "abc123",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10", "userAgent": "tests"},
            "requestId": uuid.uuid4().hex,
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "01/May/2024:12:00:00 +0000",
            "timeEpoch": 1714564800000,
        },
        "isBase64Encoded": bool(body),
    }
    if query:
        event["queryStringParameters"] = dict(query)
    if body:
        event["body"] = base64.b64encode(body).decode("ascii")
    return event


def rest_v1_event(method: str, path: str, body: bytes = b"", content_type: str | None = None) -> dict[str, Any]:
    """Return an API Gateway REST API (payload 1.0) proxy event with a base64 body."""
    headers = {"Host": "abc123.execute-api.eu-west-1.amazonaws.com", "Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": uuid.uuid4().hex,
            "accountId": "123456789012",
            "apiId": "abc123",
            "identity": {"sourceIp": "203.0.113.10", "userAgent": "tests"},
        },
        "body": base64.b64encode(body).decode("ascii") if body else None,
        "isBase64Encoded": bool(body),
    }


def s3_put_event(bucket: str, key: str, size: int, event_name: str = "ObjectCreated:Put") -> dict[str, Any]:
    """Return an S3 notification with one record; the key is URL-encoded as S3 does ('+' for spaces)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2024-05-01T12:00:00.000Z",
                "eventName": event_name,
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "identify-on-upload",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": size, "eTag": "0" * 32},
                },
            }
        ]
    }


def load_event(cases_dir: Path, name: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads((cases_dir / "events" / name).read_text(encoding="utf-8")))


def response_json(response: dict[str, Any]) -> Any:
    """Decode the JSON body of a Lambda proxy response dict."""
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    return json.loads(body)
