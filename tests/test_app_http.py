"""The FastAPI application under uvicorn on 127.0.0.1, driven over real HTTP with httpx."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from handler.app import DIRECT_UPLOAD_MAX_BYTES, create_app, direct_upload_limit
from handler.config import Settings
from tests.handler_support import (
    CASE_IMAGE_STATUS,
    case_images,
    free_port,
    multipart_body,
    reference_photos,
    running_server,
    tiny_index,
)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model_dir, sample_dir) -> Path:
    return tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("http-index"))


@pytest.fixture(scope="module")
def settings(index_dir, tiny_model_dir) -> Settings:
    return Settings(index_location=str(index_dir), model=str(tiny_model_dir), index_check_seconds=60)


@pytest.fixture(scope="module")
def base_url(settings) -> str:
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as http:
        yield http


def post_photo(client: httpx.Client, path: Path, **params) -> httpx.Response:
    return client.post("/identify", files={"file": (path.name, path.read_bytes(), "image/jpeg")}, params=params)


# Case images.


def test_case_images(client, cases_dir):
    for image in case_images(cases_dir):
        response = post_photo(client, image)
        expected = CASE_IMAGE_STATUS[image.name]
        assert response.status_code == expected, f"{image.name}: {response.text}"


def test_case_errors_are_json(client, cases_dir):
    for image in case_images(cases_dir):
        if CASE_IMAGE_STATUS[image.name] == 200:
            continue
        body = post_photo(client, image).json()
        assert set(body) == {"error", "message"}, image.name
        assert body["message"], image.name


def test_case_error_messages(client, cases_dir):
    images = cases_dir / "images"
    expected_words = {
        "zero_bytes.jpg": "empty",
        "not_an_image.jpg": "not an image",
        "truncated.jpg": "truncated",
        "svg_as_jpg.jpg": "SVG",
        "heic_stub.heic": "HEIC",
        "tiny_1x1.png": "too small",
        "huge_dimensions.png": "pixels",
    }
    for name, words in expected_words.items():
        message = post_photo(client, images / name).json()["message"]
        assert words in message, f"{name}: {message}"


def test_no_traceback_in_errors(client, cases_dir):
    for image in case_images(cases_dir):
        text = post_photo(client, image).text
        assert "Traceback" not in text, image.name
        assert "/work/" not in text, image.name


# Successful identification.


def test_reference_photos_rank_first(client, sample_dir):
    for plant_id, photo in reference_photos(sample_dir).items():
        body = post_photo(client, photo).json()
        assert body["matches"][0]["plant_id"] == plant_id, photo.name


def test_response_fields(client, sample_dir):
    body = post_photo(client, sample_dir / "queries" / "3_1.jpg").json()

    assert set(body) >= {"matches", "model_id", "index_version", "elapsed_ms", "views", "photos", "test_model"}
    assert body["test_model"] is True
    assert body["views"] == 8
    assert body["index_version"]
    assert body["elapsed_ms"] > 0


def test_match_fields(client, sample_dir):
    body = post_photo(client, sample_dir / "reference" / "plant_species_thumbnail_image_3.jpg").json()
    first = body["matches"][0]

    assert set(first) == {"rank", "plant_id", "scientific_name", "common_name", "score", "thumbnail_url"}
    assert first["rank"] == 1
    assert first["scientific_name"] == "Celtis occidentalis"
    assert first["common_name"] == "Common hackberry"
    assert -1.0 <= first["score"] <= 1.0


def test_scores_descending(client, sample_dir):
    body = post_photo(client, sample_dir / "queries" / "10_2.jpg", top_k=12).json()
    scores = [match["score"] for match in body["matches"]]

    assert scores == sorted(scores, reverse=True)
    assert [match["rank"] for match in body["matches"]] == list(range(1, 13))


# top_k.


def test_top_k_default(client, sample_dir):
    body = post_photo(client, sample_dir / "queries" / "3_1.jpg").json()
    assert len(body["matches"]) == 5


def test_top_k_query(client, sample_dir):
    body = post_photo(client, sample_dir / "queries" / "3_1.jpg", top_k=3).json()
    assert len(body["matches"]) == 3


def test_top_k_form_field(client, sample_dir):
    photo = sample_dir / "queries" / "3_1.jpg"
    response = client.post("/identify", files={"file": (photo.name, photo.read_bytes())}, data={"top_k": "2"})
    assert len(response.json()["matches"]) == 2


def test_top_k_above_count(client, sample_dir):
    body = post_photo(client, sample_dir / "queries" / "3_1.jpg", top_k=50).json()
    assert len(body["matches"]) == 12


@pytest.mark.parametrize("value", ["0", "51", "-1", "three"])
def test_top_k_query_invalid(client, sample_dir, value):
    response = post_photo(client, sample_dir / "queries" / "3_1.jpg", top_k=value)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "top_k"]


@pytest.mark.parametrize("value", ["0", "51", "x"])
def test_top_k_form_invalid(client, sample_dir, value):
    photo = sample_dir / "queries" / "3_1.jpg"
    response = client.post("/identify", files={"file": (photo.name, photo.read_bytes())}, data={"top_k": value})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "top_k"]


def test_top_k_as_file_part(client, sample_dir):
    photo = sample_dir / "queries" / "3_1.jpg"
    files = {"file": (photo.name, photo.read_bytes()), "top_k": ("k.txt", b"3")}
    response = client.post("/identify", files=files)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "top_k"]


# Request shape.


def test_missing_file(client):
    response = client.post("/identify", files={"other": ("a.jpg", b"x")})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_file_as_text_field(client):
    response = client.post("/identify", data={"file": "not a file"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_empty_body(client):
    response = client.post("/identify")
    assert response.status_code == 422


def test_broken_multipart(client):
    response = client.post(
        "/identify", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert response.status_code in (400, 422)


def test_invalid_json(client):
    response = client.post("/identify", content=b"{not json", headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_json_without_key(client):
    response = client.post("/identify", json={"top_k": 3})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "key"]


def test_key_without_bucket(client):
    response = client.post("/identify", json={"key": "uploads/a.jpg"})

    assert response.status_code == 503
    assert "PLANT_ID_UPLOAD_BUCKET" in response.json()["message"]


def test_invalid_key_rejected_first(client):
    response = client.post("/identify", json={"key": "../etc/passwd"})
    assert response.status_code == 400


# Body size.


def test_direct_limit_matches_lambda():
    settings = Settings(index_location="unused")

    assert direct_upload_limit(settings) == DIRECT_UPLOAD_MAX_BYTES
    assert DIRECT_UPLOAD_MAX_BYTES * 4 / 3 < 6 * 1024 * 1024


@pytest.fixture(scope="module")
def small_limit_url(index_dir, tiny_model_dir):
    settings = Settings(index_location=str(index_dir), model=str(tiny_model_dir), max_upload_bytes=100_000)
    with running_server(create_app(settings)) as url:
        yield url


def test_oversized_body_413(small_limit_url):
    with httpx.Client(base_url=small_limit_url, timeout=60) as http:
        response = http.post("/identify", files={"file": ("big.jpg", b"\xff\xd8\xff" + b"0" * 400_000)})

    assert response.status_code == 413
    assert response.json()["error"] == "image_too_large"


def test_oversized_chunked_body_413(small_limit_url):
    # A generator body is sent with chunked transfer encoding, without Content-Length.
    body, content_type = multipart_body({}, "big.jpg", b"\xff\xd8\xff" + b"0" * 400_000)

    def chunks():
        for start in range(0, len(body), 10_000):
            yield body[start : start + 10_000]

    with httpx.Client(base_url=small_limit_url, timeout=60) as http:
        response = http.post("/identify", content=chunks(), headers={"content-type": content_type})

    assert response.status_code == 413


def test_oversized_file_part_413(small_limit_url, sample_dir):
    # A part just over the photo limit that still fits in the multipart allowance.
    data = (sample_dir / "queries" / "3_1.jpg").read_bytes()[:1000] + b"0" * 100_001
    with httpx.Client(base_url=small_limit_url, timeout=60) as http:
        response = http.post("/identify", files={"file": ("big.jpg", data)})

    assert response.status_code == 413


def test_small_limit_still_serves(small_limit_url, sample_dir):
    with httpx.Client(base_url=small_limit_url, timeout=60) as http:
        response = post_photo(http, sample_dir / "queries" / "3_1.jpg")
    assert response.status_code == 200


# Health, docs and other routes.


def test_health(client):
    response = client.get("/health")
    body = response.json()

    assert response.status_code == 200
    assert body["status"] == "ok"
    assert body["model_loaded"] is True
    assert body["index_loaded"] is True
    assert body["index_count"] == 12
    assert body["device"] == "cpu"
    assert body["backend"] == "torch"
    assert body["test_model"] is True


def test_docs(client):
    assert client.get("/docs").status_code == 200


def test_openapi_paths(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/identify", "/uploads", "/health"} <= set(paths)


def test_openapi_documents_both_bodies(client):
    content = client.get("/openapi.json").json()["paths"]["/identify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)


def test_unknown_route_404(client):
    assert client.get("/nothing-here").status_code == 404


def test_wrong_method_405(client):
    assert client.get("/identify").status_code == 405


def test_unexpected_error_500_json(settings):
    app = create_app(settings, warm_up=False)

    def fail() -> None:
        raise RuntimeError("secret detail /work/main/handler/app.py")

    app.add_api_route("/fail", fail)
    with running_server(app) as url:
        response = httpx.get(f"{url}/fail", timeout=30)

    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "secret" not in response.text


def test_cors_preflight(settings):
    app = create_app(
        Settings(index_location=settings.index_location, model=settings.model, cors_origins=("https://plants.example",)),
        warm_up=False,
    )
    headers = {"origin": "https://plants.example", "access-control-request-method": "POST"}
    with running_server(app) as url:
        response = httpx.options(f"{url}/identify", headers=headers, timeout=30)

    assert response.headers["access-control-allow-origin"] == "https://plants.example"


# A broken index at cold start.


@pytest.fixture(scope="module")
def broken_index_url(tmp_path_factory, cases_dir, tiny_model_dir):
    folder = tmp_path_factory.mktemp("wrong-dim-index")
    (folder / "embeddings_fp16.npz").write_bytes((cases_dir / "index" / "index_wrong_dim.npz").read_bytes())
    (folder / "meta.json").write_bytes((cases_dir / "index" / "meta_ok.json").read_bytes())
    settings = Settings(index_location=str(folder), model=str(tiny_model_dir))
    with running_server(create_app(settings)) as url:
        yield url


def test_broken_index_identify_503(broken_index_url, sample_dir):
    with httpx.Client(base_url=broken_index_url, timeout=60) as http:
        response = post_photo(http, sample_dir / "queries" / "3_1.jpg")

    assert response.status_code == 503
    assert "768" in response.json()["message"]


def test_broken_index_health_503(broken_index_url):
    response = httpx.get(f"{broken_index_url}/health", timeout=30)
    body = response.json()

    assert response.status_code == 503
    assert body["status"] == "unavailable"
    assert "768" in body["reason"]


# The command line server.


def test_serve_command(index_dir, tiny_model_dir):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PLANT_ID_")}
    command = [
        sys.executable, "-m", "handler", "serve",
        "--index", str(index_dir), "--model", str(tiny_model_dir), "--port", str(port), "--log-level", "warning",
    ]
    process = subprocess.Popen(
        command, cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code
                break
            except httpx.TransportError:
                time.sleep(0.5)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)

    assert status == 200, stderr.decode(errors="replace")[-2000:]


def test_unparsable_body_error_shape(client):
    response = client.post("/uploads", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert "parsing the body" in response.json()["message"]


def test_unknown_route_error_shape(client):
    response = client.get("/no-such-route")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": "Not Found"}


def test_wrong_method_error_shape(client):
    response = client.delete("/identify")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert "POST" in response.headers["allow"]
