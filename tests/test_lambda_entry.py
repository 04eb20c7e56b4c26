"""The Lambda entry point driven with API Gateway and S3 events, against the moto S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from handler import lambda_entry
from handler.app import create_app
from handler.config import Settings
from shared import storage
from shared.errors import IndexValidationError, StorageError
from tests.handler_support import (
    CASE_IMAGE_STATUS,
    LAMBDA_PAYLOAD_LIMIT_BYTES,
    S3_STATUS_OVERRIDES,
    UPLOAD_BUCKET,
    case_images,
    free_port,
    http_api_v2_event,
    load_event,
    multipart_body,
    reference_photos,
    response_json,
    rest_v1_event,
    s3_put_event,
    tiny_index,
)


@pytest.fixture(scope="module")
def s3_client(s3_env):
    """One boto3 client of the test itself, separate from the one the service builds."""
    return s3_env.client()


@pytest.fixture(scope="module")
def settings(s3_env, tmp_path_factory, tiny_model_dir, sample_dir) -> Settings:
    index_dir = tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("lambda-index"))
    return Settings(index_location=str(index_dir), model=str(tiny_model_dir), upload_bucket=UPLOAD_BUCKET)


@pytest.fixture(scope="module")
def app(settings):
    """The application with the test settings, warmed up as in a Lambda init phase."""
    application = create_app(settings)
    application.state.service.warm_up()
    return application


@pytest.fixture()
def entry(app):
    """The Lambda entry point serving `app`."""
    lambda_entry.configure(app)
    yield lambda_entry.handler
    lambda_entry.configure(create_app(Settings(index_location="unused"), warm_up=False))


def invoke(entry, event: dict) -> dict:
    return entry(event, None)


def photo_event(path: Path, **query: str) -> dict:
    body, content_type = multipart_body({}, path.name, path.read_bytes())
    return http_api_v2_event("POST", "/identify", body, content_type, query)


def read_result(s3_client, key: str) -> dict:
    obj = s3_client.get_object(Bucket=UPLOAD_BUCKET, Key=f"results/{key}.json")
    return json.loads(obj["Body"].read())


def result_exists(s3_client, key: str) -> bool:
    try:
        s3_client.head_object(Bucket=UPLOAD_BUCKET, Key=f"results/{key}.json")
    except ClientError:
        return False
    return True


# The API Gateway events of the fault cases.


def test_case_multipart_event(entry, cases_dir):
    response = invoke(entry, load_event(cases_dir, "apigw_v2_identify_multipart.json"))
    body = response_json(response)

    assert response["statusCode"] == 200
    assert len(body["matches"]) == 3


def test_case_missing_file_event(entry, cases_dir):
    response = invoke(entry, load_event(cases_dir, "apigw_v2_identify_missing_file.json"))

    assert response["statusCode"] == 422
    assert response_json(response)["detail"][0]["loc"] == ["body", "file"]


def test_case_not_an_image_event(entry, cases_dir):
    response = invoke(entry, load_event(cases_dir, "apigw_v2_identify_not_an_image.json"))

    assert response["statusCode"] == 400
    assert response_json(response)["error"] == "not_an_image"


# The S3 events of the fault cases.


def test_case_key_with_spaces(entry, cases_dir, s3_client):
    key = "uploads/my plant photo (1).jpg"
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=(cases_dir / "images" / "control_rgb.jpg").read_bytes())

    summary = invoke(entry, load_event(cases_dir, "s3_put_key_spaces.json"))

    assert summary["results"] == [f"results/{key}.json"]
    assert read_result(s3_client, key)["status"] == 200


def test_case_unicode_key(entry, cases_dir, s3_client):
    key = "uploads/plant_species_thumbnail_image_ 7 é.jpg"
    data = (cases_dir / "images" / "plant_species_thumbnail_image_ 7 é.jpg").read_bytes()
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    invoke(entry, load_event(cases_dir, "s3_put_key_unicode.json"))

    assert read_result(s3_client, key)["status"] == 200


def test_case_folder_placeholder(entry, cases_dir, s3_client):
    summary = invoke(entry, load_event(cases_dir, "s3_put_folder_placeholder.json"))

    assert summary["results"] == []
    assert summary["skipped"] == [{"key": "uploads/new folder/", "reason": "folder placeholder"}]


def test_folder_placeholder_makes_no_s3_call(entry, cases_dir, monkeypatch):
    # With S3 unreachable, any GetObject or PutObject would raise StorageError.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    storage.clear_s3_client_cache()
    try:
        summary = invoke(entry, load_event(cases_dir, "s3_put_folder_placeholder.json"))
    finally:
        monkeypatch.undo()
        storage.clear_s3_client_cache()

    assert summary["results"] == []


def test_all_case_events_handled(entry, cases_dir, s3_client):
    for path in sorted((cases_dir / "events").glob("*.json")):
        event = json.loads(path.read_text(encoding="utf-8"))
        response = invoke(entry, event)
        if "statusCode" in response:
            assert response["statusCode"] < 500, path.name
        else:
            assert set(response) == {"results", "skipped"}, path.name


def test_unexpected_error_500_json(settings):
    app = create_app(settings, warm_up=False)

    def fail() -> None:
        raise RuntimeError("secret detail")

    app.add_api_route("/fail", fail)
    lambda_entry.configure(app)
    try:
        response = lambda_entry.handler(http_api_v2_event("GET", "/fail"), None)
    finally:
        lambda_entry.configure(create_app(Settings(index_location="unused"), warm_up=False))

    assert response["statusCode"] == 500
    assert response_json(response)["error"] == "internal_error"
    assert "secret" not in response["body"]


# Every case image through HTTP API v2 and REST v1 events.


def test_case_images_http_api(entry, cases_dir):
    for image in case_images(cases_dir):
        response = invoke(entry, photo_event(image))
        assert response["statusCode"] == CASE_IMAGE_STATUS[image.name], f"{image.name}: {response['body']}"


def test_case_images_json_bodies(entry, cases_dir):
    for image in case_images(cases_dir):
        body = response_json(invoke(entry, photo_event(image)))
        if CASE_IMAGE_STATUS[image.name] == 200:
            assert "matches" in body, image.name
        else:
            assert set(body) == {"error", "message"}, image.name


def test_case_images_rest_api(entry, cases_dir):
    for image in case_images(cases_dir):
        body, content_type = multipart_body({}, image.name, image.read_bytes())
        response = invoke(entry, rest_v1_event("POST", "/identify", body, content_type))
        assert response["statusCode"] == CASE_IMAGE_STATUS[image.name], image.name


def test_events_fit_lambda_payload(cases_dir):
    for image in case_images(cases_dir):
        if CASE_IMAGE_STATUS[image.name] == 413 and image.stat().st_size > 4_500_000:
            continue
        size = len(json.dumps(photo_event(image)).encode("utf-8"))
        assert size < LAMBDA_PAYLOAD_LIMIT_BYTES, image.name


def test_reference_photos_rank_first(entry, sample_dir):
    for plant_id, photo in reference_photos(sample_dir).items():
        body = response_json(invoke(entry, photo_event(photo)))
        assert body["matches"][0]["plant_id"] == plant_id, photo.name


def test_http_api_top_k(entry, sample_dir):
    response = invoke(entry, photo_event(sample_dir / "queries" / "3_1.jpg", top_k="4"))
    assert len(response_json(response)["matches"]) == 4


def test_http_api_top_k_invalid(entry, sample_dir):
    response = invoke(entry, photo_event(sample_dir / "queries" / "3_1.jpg", top_k="0"))
    assert response["statusCode"] == 422


def test_http_api_health(entry):
    response = invoke(entry, http_api_v2_event("GET", "/health"))

    assert response["statusCode"] == 200
    assert response_json(response)["status"] == "ok"


def test_rest_api_health(entry):
    response = invoke(entry, rest_v1_event("GET", "/health"))
    assert response["statusCode"] == 200


def test_http_api_uploads(entry):
    body = json.dumps({"content_type": "image/png"}).encode()
    response = invoke(entry, http_api_v2_event("POST", "/uploads", body, "application/json"))

    assert response["statusCode"] == 200
    assert response_json(response)["key"].endswith(".png")


def test_http_api_identify_by_key(entry, sample_dir, s3_client):
    plant_id, photo = next(iter(reference_photos(sample_dir).items()))
    key = "uploads/by-key-through-lambda.jpg"
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=photo.read_bytes())

    body = json.dumps({"key": key}).encode()
    response = invoke(entry, http_api_v2_event("POST", "/identify", body, "application/json"))

    assert response["statusCode"] == 200
    assert response_json(response)["matches"][0]["plant_id"] == plant_id


# Every case image through an S3 ObjectCreated record.


def test_case_images_s3_records(entry, cases_dir, s3_client):
    client = s3_client
    for image in case_images(cases_dir):
        data = image.read_bytes()
        key = f"uploads/cases/{image.name}"
        client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

        summary = invoke(entry, s3_put_event(UPLOAD_BUCKET, key, len(data)))

        if not data:
            assert summary["skipped"] == [{"key": key, "reason": "empty object"}], image.name
            assert not result_exists(s3_client, key), image.name
            continue
        result = read_result(s3_client, key)
        expected = S3_STATUS_OVERRIDES.get(image.name, CASE_IMAGE_STATUS[image.name])
        assert result["status"] == expected, f"{image.name}: {result}"
        assert result["key"] == key, image.name


def test_s3_result_body(entry, sample_dir, s3_client):
    plant_id, photo = next(iter(reference_photos(sample_dir).items()))
    key = "uploads/result-body.jpg"
    data = photo.read_bytes()
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    invoke(entry, s3_put_event(UPLOAD_BUCKET, key, len(data)))
    result = read_result(s3_client, key)

    assert result["matches"][0]["plant_id"] == plant_id
    assert len(result["matches"]) == 5
    assert result["test_model"] is True


def test_s3_result_content_type(entry, sample_dir, s3_client):
    key = "uploads/content-type.jpg"
    data = (sample_dir / "queries" / "3_1.jpg").read_bytes()
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    invoke(entry, s3_put_event(UPLOAD_BUCKET, key, len(data)))
    head = s3_client.head_object(Bucket=UPLOAD_BUCKET, Key=f"results/{key}.json")

    assert head["ContentType"] == "application/json"


def test_s3_error_result(entry, cases_dir, s3_client):
    key = "uploads/error-result.jpg"
    data = (cases_dir / "images" / "truncated.jpg").read_bytes()
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    invoke(entry, s3_put_event(UPLOAD_BUCKET, key, len(data)))
    result = read_result(s3_client, key)

    assert result["status"] == 400
    assert result["error"] == "corrupt_image"
    assert "truncated" in result["message"]


def test_s3_retry_overwrites(entry, sample_dir, s3_client):
    key = "uploads/retried.jpg"
    data = (sample_dir / "queries" / "3_1.jpg").read_bytes()
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    first = invoke(entry, s3_put_event(UPLOAD_BUCKET, key, len(data)))
    first_result = read_result(s3_client, key)
    second = invoke(entry, s3_put_event(UPLOAD_BUCKET, key, len(data)))
    second_result = read_result(s3_client, key)
    listing = s3_client.list_objects_v2(Bucket=UPLOAD_BUCKET, Prefix=f"results/{key}")

    assert first["results"] == second["results"]
    assert [item["Key"] for item in listing["Contents"]] == [f"results/{key}.json"]
    assert first_result["matches"][0]["rank"] == 1
    # Only the timing may differ between the two deliveries.
    first_result.pop("elapsed_ms")
    second_result.pop("elapsed_ms")
    assert first_result == second_result


def test_s3_key_with_plus_sign(entry, cases_dir, s3_client):
    key = "uploads/a+b 100%.jpg"
    data = (cases_dir / "images" / "control_rgb.jpg").read_bytes()
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    invoke(entry, s3_put_event(UPLOAD_BUCKET, key, len(data)))

    assert read_result(s3_client, key)["status"] == 200


def test_s3_oversized_record(entry, s3_client, settings):
    key = "uploads/never-read.jpg"
    summary = invoke(entry, s3_put_event(UPLOAD_BUCKET, key, settings.max_upload_bytes + 1))

    assert summary["results"] == [f"results/{key}.json"]
    assert read_result(s3_client, key)["status"] == 413


def test_s3_deleted_object_skipped(entry, s3_client):
    key = "uploads/deleted-before-read.jpg"
    summary = invoke(entry, s3_put_event(UPLOAD_BUCKET, key, 1234))

    assert summary["skipped"] == [{"key": key, "reason": "object not found"}]


def test_s3_results_prefix_skipped(entry, s3_client):
    key = "results/uploads/a.jpg.json"
    summary = invoke(entry, s3_put_event(UPLOAD_BUCKET, key, 100))

    assert summary["results"] == []
    assert "upload prefix" in summary["skipped"][0]["reason"]


def test_s3_other_bucket_skipped(entry):
    summary = invoke(entry, s3_put_event("someone-elses-bucket", "uploads/a.jpg", 100))
    assert "not the upload bucket" in summary["skipped"][0]["reason"]


def test_s3_removed_event_skipped(entry):
    summary = invoke(entry, s3_put_event(UPLOAD_BUCKET, "uploads/a.jpg", 100, "ObjectRemoved:Delete"))
    assert "not an ObjectCreated" in summary["skipped"][0]["reason"]


def test_s3_unreachable_raises(entry, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    storage.clear_s3_client_cache()
    try:
        with pytest.raises(StorageError):
            invoke(entry, s3_put_event(UPLOAD_BUCKET, "uploads/a.jpg", 100))
    finally:
        monkeypatch.undo()
        storage.clear_s3_client_cache()


# Events of other kinds.


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"hello": "world"},
        {"Records": []},
        {"Records": [{"eventSource": "aws:sqs", "body": "{}"}]},
        {"Records": [{"EventSource": "aws:sns", "Sns": {}}]},
        {"requestContext": {"elb": {"targetGroupArn": "arn"}}, "httpMethod": "GET", "path": "/health"},
        {"source": "aws.events", "detail-type": "Scheduled Event"},
    ],
)
def test_unknown_event_400(entry, event):
    response = invoke(entry, event)

    assert response["statusCode"] == 400
    assert response_json(response)["error"] == "unsupported_event"


@pytest.mark.parametrize("event", [None, [], "text", 3])
def test_non_object_event_400(entry, event):
    assert invoke(entry, event)["statusCode"] == 400


# A service whose index failed validation.


@pytest.fixture()
def broken_entry(tmp_path, cases_dir, tiny_model_dir, s3_client):
    (tmp_path / "embeddings_fp16.npz").write_bytes((cases_dir / "index" / "index_missing_key.npz").read_bytes())
    (tmp_path / "meta.json").write_bytes((cases_dir / "index" / "meta_ok.json").read_bytes())
    app = create_app(Settings(index_location=str(tmp_path), model=str(tiny_model_dir), upload_bucket=UPLOAD_BUCKET))
    app.state.service.warm_up()
    lambda_entry.configure(app)
    yield lambda_entry.handler
    lambda_entry.configure(create_app(Settings(index_location="unused"), warm_up=False))


def test_broken_index_http_503(broken_entry, sample_dir):
    response = invoke(broken_entry, photo_event(sample_dir / "queries" / "3_1.jpg"))

    assert response["statusCode"] == 503
    assert "embeddings" in response_json(response)["message"]


def test_broken_index_health_503(broken_entry):
    response = invoke(broken_entry, http_api_v2_event("GET", "/health"))
    assert response["statusCode"] == 503


def test_broken_index_s3_raises(broken_entry, sample_dir, s3_client):
    key = "uploads/while-broken.jpg"
    data = (sample_dir / "queries" / "3_1.jpg").read_bytes()
    s3_client.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    with pytest.raises(IndexValidationError):
        invoke(broken_entry, s3_put_event(UPLOAD_BUCKET, key, len(data)))
