"""The local stack's S3 event path: new objects under uploads/ become ObjectCreated events for the Lambda handler."""

from __future__ import annotations

import json
import time

import pytest

from handler import lambda_entry
from handler.app import create_app
from handler.config import Settings
from handler.sources import parse_s3_record
from infra.upload_poller import MAX_ATTEMPTS, UploadPoller, object_created_event
from tests.handler_support import UPLOAD_BUCKET, tiny_index

PHOTO_KEY = "uploads/my photo+1 é.jpg"


@pytest.fixture(scope="module")
def app(tmp_path_factory, s3_env, sample_dir, tiny_model_dir):
    index_dir = tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("poller-index"))
    settings = Settings(index_location=str(index_dir), model=str(tiny_model_dir), upload_bucket=UPLOAD_BUCKET)
    application = create_app(settings)
    lambda_entry.configure(application)
    application.state.service.warm_up()
    yield application
    lambda_entry.configure(create_app(Settings(index_location="unused"), warm_up=False))


@pytest.fixture
def s3(s3_env):
    client = s3_env.client()
    for prefix in ("uploads/", "results/"):
        listed = client.list_objects_v2(Bucket=UPLOAD_BUCKET, Prefix=prefix).get("Contents", [])
        for item in listed:
            client.delete_object(Bucket=UPLOAD_BUCKET, Key=item["Key"])
    return client


def put_photo(s3, sample_dir, key: str = PHOTO_KEY) -> None:
    data = (sample_dir / "reference" / "plant_species_thumbnail_image_3.jpg").read_bytes()
    s3.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data, ContentType="image/jpeg")


def read_result(s3, key: str) -> dict:
    body = s3.get_object(Bucket=UPLOAD_BUCKET, Key=f"results/{key}.json")["Body"].read()
    return json.loads(body)


def test_event_key_encoding():
    event = object_created_event(UPLOAD_BUCKET, PHOTO_KEY, 10, '"abc"')
    record = event["Records"][0]

    assert record["s3"]["object"]["key"] == "uploads/my+photo%2B1+%C3%A9.jpg"
    assert record["s3"]["object"]["eTag"] == "abc"
    assert parse_s3_record(record).key == PHOTO_KEY


def test_event_shape():
    record = object_created_event(UPLOAD_BUCKET, PHOTO_KEY, 10, "abc")["Records"][0]

    assert record["eventSource"] == "aws:s3"
    assert record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["bucket"]["name"] == UPLOAD_BUCKET
    assert record["eventTime"].endswith("Z")


def test_upload_writes_result(app, s3, sample_dir):
    put_photo(s3, sample_dir)
    poller = UploadPoller(s3, UPLOAD_BUCKET, "uploads/", lambda_entry.handler)

    delivered = poller.poll_once()
    result = read_result(s3, PHOTO_KEY)

    assert delivered == 1
    assert result["status"] == 200
    assert result["key"] == PHOTO_KEY
    assert result["matches"][0]["plant_id"] == "3"


def test_each_object_once(app, s3, sample_dir):
    put_photo(s3, sample_dir)
    calls = []
    poller = UploadPoller(s3, UPLOAD_BUCKET, "uploads/", lambda event, context: calls.append(event))

    poller.poll_once()
    second = poller.poll_once()

    assert len(calls) == 1
    assert second == 0


def test_failures_retried_then_dropped(s3, sample_dir):
    put_photo(s3, sample_dir)
    calls = []

    def failing(event, context):
        calls.append(event)
        raise RuntimeError("storage unavailable")

    poller = UploadPoller(s3, UPLOAD_BUCKET, "uploads/", failing)
    for _ in range(MAX_ATTEMPTS + 2):
        poller.poll_once()

    assert len(calls) == MAX_ATTEMPTS
    assert poller.delivered == 0


def test_running_poller_delivers(app, s3, sample_dir):
    poller = UploadPoller(s3, UPLOAD_BUCKET, "uploads/", lambda_entry.handler, interval_s=0.1)
    poller.start()
    try:
        put_photo(s3, sample_dir, "uploads/later.jpg")
        deadline = time.monotonic() + 30
        while poller.delivered == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        poller.stop()

    assert poller.delivered == 1
    assert read_result(s3, "uploads/later.jpg")["matches"][0]["plant_id"] == "3"
