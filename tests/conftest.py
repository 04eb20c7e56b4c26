"""Fixtures shared by the whole suite: test data folders, a tiny CLIP model and a real S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Test data that lives beside the checkout and is not part of the project. Both
# folders can be moved with environment variables.
EXTERNAL_SHARED = Path(os.environ.get("PLANT_ID_SHARED_DIR", REPO_ROOT.parent / "shared"))
CASES_DIR = Path(os.environ.get("PLANT_ID_CASES_DIR", EXTERNAL_SHARED / "cases"))
PLANTS_DIR = Path(os.environ.get("PLANT_ID_PLANTS_DIR", EXTERNAL_SHARED / "data" / "plants"))

# Photos committed with the project (licence and attribution in tests/data/README.md).
SAMPLE_DIR = REPO_ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    if not CASES_DIR.is_dir():
        pytest.fail(f"fault cases folder not found: {CASES_DIR}; set PLANT_ID_CASES_DIR")
    return CASES_DIR


@pytest.fixture(scope="session")
def plants_dir() -> Path:
    if not PLANTS_DIR.is_dir():
        pytest.skip(f"real plant photos not found: {PLANTS_DIR}; set PLANT_ID_PLANTS_DIR")
    return PLANTS_DIR


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised CLIP saved with save_pretrained, loaded like any local model."""
    from tests.tiny_model import write_tiny_clip

    folder = tmp_path_factory.mktemp("tiny-clip")
    write_tiny_clip(folder)
    return folder


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server in its own process on 127.0.0.1, reached by boto3 over HTTP."""
    from tests.s3_server import S3Server

    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """Point boto3 in this process at the moto server and create the upload bucket."""
    from botocore.exceptions import ClientError

    from shared import storage
    from tests.handler_support import UPLOAD_BUCKET

    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env().items():
            patch.setenv(name, value)
        patch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        storage.clear_s3_client_cache()
        try:
            s3_server.create_bucket(UPLOAD_BUCKET)
        except ClientError as error:
            if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise
        yield s3_server
    storage.clear_s3_client_cache()
