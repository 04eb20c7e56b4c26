"""Presigned POST uploads and identification by key, against the moto S3 server over HTTP."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone

import httpx
import pytest

from handler.app import create_app
from handler.config import Settings
from handler.uploads import InvalidKeyError, read_upload, validate_upload_key
from shared.errors import ImageTooLargeError
from shared.storage import ObjectNotFound
from tests.handler_support import UPLOAD_BUCKET, reference_photos, running_server, tiny_index

PREFIX = "uploads/"


@pytest.fixture(scope="module")
def s3_client(s3_env):
    """One boto3 client of the test itself, separate from the one the service builds."""
    return s3_env.client()


@pytest.fixture(scope="module")
def settings(s3_env, tmp_path_factory, tiny_model_dir, sample_dir) -> Settings:
    index_dir = tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("uploads-index"))
    return Settings(
        index_location=str(index_dir),
        model=str(tiny_model_dir),
        upload_bucket=UPLOAD_BUCKET,
        max_upload_bytes=2_000_000,
        presign_expires=120,
    )


@pytest.fixture(scope="module")
def client(settings):
    with running_server(create_app(settings)) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            yield http


def new_form(client: httpx.Client, content_type: str = "image/jpeg") -> dict:
    response = client.post("/uploads", json={"content_type": content_type})
    assert response.status_code == 200, response.text
    return response.json()


def upload_with_form(form: dict, data: bytes, file_name: str = "photo.jpg") -> httpx.Response:
    """Send `data` through the presigned form as a browser would: the fields, then the file last."""
    files = {"file": (file_name, data, form["fields"]["Content-Type"])}
    return httpx.post(form["url"], data=form["fields"], files=files, timeout=30)


def policy_of(form: dict) -> dict:
    return json.loads(base64.b64decode(form["fields"]["policy"]))


def conditions_of(form: dict) -> list:
    return policy_of(form)["conditions"]


# POST /uploads.


def test_form_fields(client):
    form = new_form(client)

    assert set(form) == {"url", "fields", "key", "expires_in", "max_bytes"}
    assert form["expires_in"] == 120
    assert form["max_bytes"] == 2_000_000
    assert form["fields"]["key"] == form["key"]


@pytest.mark.parametrize(
    ("content_type", "extension"), [("image/jpeg", ".jpg"), ("image/png", ".png"), ("image/webp", ".webp")]
)
def test_key_extension(client, content_type, extension):
    key = new_form(client, content_type)["key"]

    assert key.startswith(PREFIX)
    assert key.endswith(extension)


def test_keys_unique(client):
    keys = {new_form(client)["key"] for _ in range(5)}
    assert len(keys) == 5


def test_content_type_parameters_ignored(client):
    form = new_form(client, "image/JPEG; charset=binary")
    assert form["fields"]["Content-Type"] == "image/jpeg"


@pytest.mark.parametrize("content_type", ["image/gif", "image/heic", "text/plain", "application/octet-stream", ""])
def test_unsupported_content_type_415(client, content_type):
    response = client.post("/uploads", json={"content_type": content_type})

    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_format"


def test_missing_content_type_422(client):
    assert client.post("/uploads", json={}).status_code == 422


def test_uploads_without_bucket_503(tiny_model_dir):
    app = create_app(Settings(index_location="unused", model=str(tiny_model_dir)), warm_up=False)
    with running_server(app) as url:
        response = httpx.post(f"{url}/uploads", json={"content_type": "image/jpeg"}, timeout=30)

    assert response.status_code == 503
    assert "PLANT_ID_UPLOAD_BUCKET" in response.json()["message"]


# The signed policy (moto does not enforce it, so its conditions are checked here).


def test_policy_size_range(client):
    assert ["content-length-range", 1, 2_000_000] in conditions_of(new_form(client))


def test_policy_content_type(client):
    assert {"Content-Type": "image/png"} in conditions_of(new_form(client, "image/png"))


def test_policy_key(client):
    form = new_form(client)
    assert {"key": form["key"]} in conditions_of(form)


def test_policy_bucket(client):
    assert {"bucket": UPLOAD_BUCKET} in conditions_of(new_form(client))


def test_policy_expiry(client):
    before = time.time()
    form = new_form(client)
    expiration = datetime.strptime(policy_of(form)["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)

    assert before + 110 <= expiration.timestamp() <= time.time() + 121


def test_policy_signed_v4(client):
    fields = new_form(client)["fields"]

    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert "x-amz-signature" in fields


def test_policy_no_wildcards(client):
    for condition in conditions_of(new_form(client)):
        if isinstance(condition, list):
            assert condition[0] != "starts-with", condition


# Uploading through the form, then identifying by key.


def test_upload_through_form(client, sample_dir, s3_client):
    form = new_form(client)
    data = (sample_dir / "queries" / "3_1.jpg").read_bytes()

    response = upload_with_form(form, data)
    head = s3_client.head_object(Bucket=UPLOAD_BUCKET, Key=form["key"])

    assert response.status_code in (200, 201, 204), response.text
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "image/jpeg"


def test_identify_uploaded_reference(client, sample_dir):
    plant_id, photo = next(iter(reference_photos(sample_dir).items()))
    form = new_form(client)
    upload_with_form(form, photo.read_bytes())

    response = client.post("/identify", json={"key": form["key"], "top_k": 3})
    body = response.json()

    assert response.status_code == 200, response.text
    assert body["matches"][0]["plant_id"] == plant_id
    assert len(body["matches"]) == 3


def test_identify_key_top_k_query(client, sample_dir):
    form = new_form(client)
    upload_with_form(form, (sample_dir / "queries" / "3_1.jpg").read_bytes())

    response = client.post("/identify", params={"top_k": 2}, json={"key": form["key"]})
    assert len(response.json()["matches"]) == 2


def test_identify_key_top_k_invalid(client):
    response = client.post("/identify", json={"key": "uploads/a.jpg", "top_k": 0})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "top_k"]


def test_identify_key_with_spaces(client, cases_dir, s3_client):
    key = "uploads/plant_species_thumbnail_image_ 7 é.jpg"
    data = (cases_dir / "images" / "plant_species_thumbnail_image_ 7 é.jpg").read_bytes()
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    assert client.post("/identify", json={"key": key}).status_code == 200


def test_identify_key_bad_image(client, cases_dir, s3_client):
    key = "uploads/heic-as-jpeg.jpg"
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=(cases_dir / "images" / "heic_stub_named.jpg").read_bytes())

    response = client.post("/identify", json={"key": key})

    assert response.status_code == 415
    assert "HEIC" in response.json()["message"]


def test_identify_key_missing_404(client):
    response = client.post("/identify", json={"key": "uploads/does-not-exist.jpg"})

    assert response.status_code == 404
    assert response.json()["error"] == "object_not_found"


def test_identify_key_over_limit_413(client, s3_client):
    key = "uploads/too-big.jpg"
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=b"\xff\xd8\xff" + b"0" * 2_000_000)

    assert client.post("/identify", json={"key": key}).status_code == 413


@pytest.mark.parametrize(
    "key",
    [
        "photo.jpg",
        "results/uploads/a.jpg.json",
        "uploads/",
        "uploads/../index/latest.json",
        "uploads/a\\b.jpg",
        "uploads/folder/",
        "uploads/a\nb.jpg",
        "uploads/" + "a" * 1100 + ".jpg",
        "",
        "/uploads/a.jpg",
    ],
)
def test_identify_invalid_key_400(client, key):
    response = client.post("/identify", json={"key": key})

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_key"


def test_identify_key_not_string_422(client):
    assert client.post("/identify", json={"key": 12}).status_code == 422


# Module functions.


def test_validate_key_accepts_unicode():
    key = "uploads/plant photo é (1).jpg"
    assert validate_upload_key(key, PREFIX, 1024) == key


def test_validate_key_counts_bytes():
    with pytest.raises(InvalidKeyError):
        validate_upload_key("uploads/" + "é" * 600, PREFIX, 1024)


def test_read_upload_missing(s3_client):
    with pytest.raises(ObjectNotFound):
        read_upload(UPLOAD_BUCKET, "uploads/nothing-here.jpg", 1000)


def test_read_upload_missing_bucket(s3_client):
    with pytest.raises(ObjectNotFound):
        read_upload("no-such-bucket-here", "uploads/a.jpg", 1000)


def test_read_upload_too_large(s3_client):
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key="uploads/eleven.bin", Body=b"0" * 11)

    with pytest.raises(ImageTooLargeError):
        read_upload(UPLOAD_BUCKET, "uploads/eleven.bin", 10)


def test_read_upload_at_limit(s3_client):
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key="uploads/ten.bin", Body=b"0" * 10)
    assert read_upload(UPLOAD_BUCKET, "uploads/ten.bin", 10) == b"0" * 10
