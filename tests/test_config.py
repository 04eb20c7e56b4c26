"""Settings of the inference function read from PLANT_ID_* environment variables."""

from __future__ import annotations

import pytest

from handler.config import Settings
from handler.query import MAX_TOP_K
from shared.errors import ConfigError

BASE = {"PLANT_ID_INDEX": "s3://index-bucket/plant-index"}


def test_defaults():
    settings = Settings.from_env(BASE)

    assert settings.index_location == "s3://index-bucket/plant-index"
    assert settings.model == "openai/clip-vit-base-patch32"
    assert settings.upload_bucket is None
    assert settings.results_prefix == "results/"
    assert settings.upload_prefix == "uploads/"
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert settings.max_pixels == 40_000_000
    assert settings.top_k_max == 50
    assert settings.views == 8
    assert settings.index_check_seconds == 60.0
    assert settings.threads is None
    assert settings.cors_origins == ()
    assert settings.presign_expires == 300


def test_all_variables():
    environ = {
        **BASE,
        "PLANT_ID_MODEL": "/opt/model",
        "PLANT_ID_UPLOAD_BUCKET": "uploads-bucket",
        "PLANT_ID_RESULTS_PREFIX": "out",
        "PLANT_ID_UPLOAD_PREFIX": "in/",
        "PLANT_ID_MAX_UPLOAD_BYTES": "1000",
        "PLANT_ID_MAX_PIXELS": "2000",
        "PLANT_ID_TOP_K_MAX": "10",
        "PLANT_ID_VIEWS": "1",
        "PLANT_ID_INDEX_CHECK_SECONDS": "2.5",
        "PLANT_ID_THREADS": "2",
        "PLANT_ID_CORS_ORIGINS": "https://a.example, https://b.example/",
        "PLANT_ID_PRESIGN_EXPIRES": "60",
    }
    settings = Settings.from_env(environ)

    assert settings.model == "/opt/model"
    assert settings.upload_bucket == "uploads-bucket"
    assert settings.results_prefix == "out/"
    assert settings.upload_prefix == "in/"
    assert settings.max_upload_bytes == 1000
    assert settings.max_pixels == 2000
    assert settings.top_k_max == 10
    assert settings.views == 1
    assert settings.index_check_seconds == 2.5
    assert settings.threads == 2
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.presign_expires == 60


def test_missing_index():
    with pytest.raises(ConfigError, match="PLANT_ID_INDEX"):
        Settings.from_env({})


def test_blank_values_use_defaults():
    settings = Settings.from_env({**BASE, "PLANT_ID_VIEWS": " ", "PLANT_ID_MODEL": ""})

    assert settings.views == 8
    assert settings.model == "openai/clip-vit-base-patch32"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PLANT_ID_MAX_UPLOAD_BYTES", "ten"),
        ("PLANT_ID_MAX_UPLOAD_BYTES", "0"),
        ("PLANT_ID_MAX_PIXELS", "-5"),
        ("PLANT_ID_TOP_K_MAX", "0"),
        ("PLANT_ID_TOP_K_MAX", "51"),
        ("PLANT_ID_VIEWS", "1.5"),
        ("PLANT_ID_INDEX_CHECK_SECONDS", "-1"),
        ("PLANT_ID_INDEX_CHECK_SECONDS", "soon"),
        ("PLANT_ID_INDEX_CHECK_SECONDS", "nan"),
        ("PLANT_ID_THREADS", "0"),
        ("PLANT_ID_CORS_ORIGINS", "plants.example"),
        ("PLANT_ID_PRESIGN_EXPIRES", "0"),
        ("PLANT_ID_UPLOAD_PREFIX", "../uploads"),
        ("PLANT_ID_RESULTS_PREFIX", "/results"),
    ],
)
def test_invalid_value_names_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**BASE, name: value})


def test_top_k_limit_matches_query():
    with pytest.raises(ConfigError):
        Settings.from_env({**BASE, "PLANT_ID_TOP_K_MAX": str(MAX_TOP_K + 1)})


def test_default_top_k_capped():
    assert Settings.from_env({**BASE, "PLANT_ID_TOP_K_MAX": "3"}).default_top_k == 3


def test_settings_frozen():
    settings = Settings.from_env(BASE)
    with pytest.raises(AttributeError):
        settings.views = 2  # type: ignore[misc]
