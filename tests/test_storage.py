"""Tests for shared.storage on local disk and on a real moto S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shared import storage
from shared.errors import ConfigError, StorageError
from shared.storage import Location, ObjectNotFound
from tests.s3_server import S3Server, _free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point shared.storage at the moto server through the environment."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    storage.clear_s3_client_cache()
    yield s3_server
    storage.clear_s3_client_cache()


@pytest.fixture
def bucket(s3_env: S3Server) -> str:
    name = f"storage-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(name)
    return name


# Location parsing.


def test_parse_s3_with_prefix() -> None:
    loc = storage.parse_location("s3://my-bucket/indexes/prod/")
    assert loc.bucket == "my-bucket"
    assert loc.path == "indexes/prod"
    assert loc.is_s3


def test_parse_s3_bucket_only() -> None:
    loc = storage.parse_location("s3://my-bucket")
    assert loc.bucket == "my-bucket"
    assert loc.path == ""


def test_parse_s3_without_bucket() -> None:
    with pytest.raises(ConfigError, match="no bucket"):
        storage.parse_location("s3:///key")


def test_parse_local_path(tmp_path: Path) -> None:
    loc = storage.parse_location(tmp_path / "index")
    assert not loc.is_s3
    assert loc.path == str(tmp_path / "index")


def test_parse_file_url() -> None:
    loc = storage.parse_location("file:///srv/index")
    assert loc == Location(path="/srv/index")


def test_parse_unsupported_scheme() -> None:
    with pytest.raises(ConfigError, match="unsupported storage location"):
        storage.parse_location("gs://bucket/key")


def test_parse_empty_location() -> None:
    with pytest.raises(ConfigError):
        storage.parse_location("")


def test_join_s3_strips_slashes() -> None:
    loc = storage.join("s3://bkt/prefix/", "/versions/", "v1/meta.json")
    assert str(loc) == "s3://bkt/prefix/versions/v1/meta.json"


def test_join_s3_empty_prefix() -> None:
    loc = storage.join("s3://bkt", "latest.json")
    assert loc.path == "latest.json"


def test_join_local(tmp_path: Path) -> None:
    loc = storage.join(tmp_path, "versions", "v1")
    assert loc.path == str(tmp_path / "versions" / "v1")


def test_location_name() -> None:
    assert storage.parse_location("s3://bkt/a/b.json").name == "b.json"


# Local files.


def test_local_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "folder" / "data.bin"
    storage.write_bytes(target, b"\x00\x01payload")
    assert storage.read_bytes(target) == b"\x00\x01payload"


def test_local_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    storage.write_bytes(target, b"old")
    storage.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"


def test_local_write_leaves_no_temp_files(tmp_path: Path) -> None:
    storage.write_bytes(tmp_path / "data.bin", b"payload")
    assert sorted(os.listdir(tmp_path)) == ["data.bin"]


def test_local_write_honours_umask(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    storage.write_bytes(target, b"payload")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_local_read_missing(tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match="not found"):
        storage.read_bytes(tmp_path / "missing.bin")


def test_missing_is_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        storage.read_bytes(tmp_path / "missing.bin")


def test_local_read_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=str(tmp_path)):
        storage.read_bytes(tmp_path)


def test_local_write_under_file_fails(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(StorageError, match="writing"):
        storage.write_bytes(tmp_path / "plain" / "child.bin", b"payload")


def test_local_exists(tmp_path: Path) -> None:
    storage.write_bytes(tmp_path / "data.bin", b"payload")
    assert storage.exists(tmp_path / "data.bin")
    assert not storage.exists(tmp_path / "other.bin")


def test_local_folder_not_exists(tmp_path: Path) -> None:
    assert not storage.exists(tmp_path)


# S3 client settings.


def test_client_region_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    storage.clear_s3_client_cache()
    assert storage.s3_client().meta.region_name == "eu-west-1"
    storage.clear_s3_client_cache()


def test_client_default_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    storage.clear_s3_client_cache()
    assert storage.s3_client().meta.region_name == "us-east-1"
    storage.clear_s3_client_cache()


def test_client_s3_endpoint_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    storage.clear_s3_client_cache()
    assert storage.s3_client().meta.endpoint_url == "http://127.0.0.1:2"
    storage.clear_s3_client_cache()


def test_client_signs_s3v4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    storage.clear_s3_client_cache()
    assert storage.s3_client().meta.config.signature_version == "s3v4"
    storage.clear_s3_client_cache()


def test_client_is_cached(s3_env: S3Server) -> None:
    assert storage.s3_client() is storage.s3_client()


# S3 objects on the moto server.


def test_s3_round_trip(bucket: str) -> None:
    storage.write_bytes(f"s3://{bucket}/prefix/data.bin", b"\x00payload")
    assert storage.read_bytes(f"s3://{bucket}/prefix/data.bin") == b"\x00payload"


def test_s3_object_visible_to_boto3(bucket: str, s3_env: S3Server) -> None:
    storage.write_bytes(f"s3://{bucket}/meta.json", b"{}", content_type="application/json")
    head = s3_env.client().head_object(Bucket=bucket, Key="meta.json")
    assert head["ContentType"] == "application/json"


def test_s3_exists(bucket: str) -> None:
    storage.write_bytes(f"s3://{bucket}/data.bin", b"payload")
    assert storage.exists(f"s3://{bucket}/data.bin")
    assert not storage.exists(f"s3://{bucket}/other.bin")


def test_s3_missing_key(bucket: str) -> None:
    with pytest.raises(ObjectNotFound, match="not found"):
        storage.read_bytes(f"s3://{bucket}/missing.bin")


def test_s3_missing_bucket(s3_env: S3Server) -> None:
    with pytest.raises(ObjectNotFound, match="bucket"):
        storage.read_bytes("s3://no-such-bucket-here/key.bin")


def test_s3_write_needs_key(bucket: str) -> None:
    with pytest.raises(StorageError, match="must name an object"):
        storage.write_bytes(f"s3://{bucket}", b"payload")


def test_s3_unreachable_names_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    storage.clear_s3_client_cache()
    try:
        with pytest.raises(StorageError) as caught:
            storage.read_bytes("s3://bkt/index/latest.json")
    finally:
        storage.clear_s3_client_cache()

    assert endpoint in caught.value.message
    assert "s3://bkt/index/latest.json" in caught.value.message


def test_server_env_in_subprocess(bucket: str, s3_server: S3Server) -> None:
    s3_server.client().put_object(Bucket=bucket, Key="hello.txt", Body=b"hi from moto")
    code = f"from shared import storage; print(storage.read_bytes('s3://{bucket}/hello.txt').decode())"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    environment.update(s3_server.env())

    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hi from moto"
