"""`python -m infra.write_web_config`: the page's config.js with the API base URL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.write_web_config import config_script, normalise_api_url
from shared.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def config_value(script: str) -> dict:
    match = re.search(r"window\.PLANT_ID_CONFIG = (\{.*\});", script)
    assert match, script
    return json.loads(match.group(1))


def test_script_sets_base_url():
    script = config_script("https://abc123.execute-api.eu-west-1.amazonaws.com/")

    assert config_value(script) == {"apiBaseUrl": "https://abc123.execute-api.eu-west-1.amazonaws.com"}


def test_stage_path_kept():
    assert normalise_api_url("https://example.org/prod/") == "https://example.org/prod"


def test_empty_means_same_origin():
    assert config_value(config_script("")) == {"apiBaseUrl": ""}


@pytest.mark.parametrize("url", ["example.org", "ftp://example.org", "https://", "https://example.org/?a=1", "javascript:alert(1)"])
def test_invalid_url_rejected(url):
    with pytest.raises(ConfigError):
        normalise_api_url(url)


def test_command_writes_file(tmp_path):
    out = tmp_path / "web" / "config.js"

    result = subprocess.run(
        [sys.executable, "-m", "infra.write_web_config", "--api-url", "http://127.0.0.1:8000", "--out", str(out)],
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert config_value(out.read_text()) == {"apiBaseUrl": "http://127.0.0.1:8000"}


def test_command_rejects_bad_url(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "infra.write_web_config", "--api-url", "not a url", "--out", str(tmp_path / "config.js")],
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "invalid" in result.stderr
