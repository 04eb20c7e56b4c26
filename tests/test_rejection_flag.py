"""The "no confident match" flag through the Identifier, the HTTP API and the identify command."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from handler.app import create_app
from handler.cli import main as handler_main
from handler.config import Settings
from handler.query import Identifier
from shared.encoder import load_encoder
from shared.errors import IndexValidationError
from shared.imaging import decode_image
from shared.index_store import load_index, write_index
from shared.search import build_search
from tests.handler_support import running_server, tiny_index

# No real identification passes: a margin of 2 needs a top score of +1 and a second of -1.
REJECT_ALL = {"min_score": 1.0, "min_margin": 2.0}
ACCEPT_ALL = {"min_score": -1.0, "min_margin": 0.0}


def index_with_rule(source: Path, dest: Path, rule: dict | None) -> Path:
    """Copy an index into `dest` with `rule` stored under meta.json "rejection"."""
    index = load_index(source)
    meta = {key: value for key, value in index.meta.items() if key not in ("version", "created_at")}
    meta["species"] = [dict(row) for row in index.species]
    if rule is not None:
        meta["rejection"] = rule
    write_index(str(dest), index.embeddings, list(index.plant_ids), meta)
    return dest


@pytest.fixture(scope="module")
def base_index(tmp_path_factory, tiny_model_dir, sample_dir) -> Path:
    return tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("rule-base"))


@pytest.fixture(scope="module")
def strict_index(base_index, tmp_path_factory) -> Path:
    return index_with_rule(base_index, tmp_path_factory.mktemp("rule-strict"), REJECT_ALL)


@pytest.fixture(scope="module")
def photo(sample_dir) -> Path:
    return sample_dir / "reference" / "plant_species_thumbnail_image_3.jpg"


def identifier_for(index_dir: Path, model_dir: Path) -> Identifier:
    index = load_index(index_dir)
    return Identifier(load_encoder(str(model_dir)), index, build_search(index.embeddings, index.plant_ids))


# Identifier.


def test_no_rule_is_confident(base_index, tiny_model_dir, photo) -> None:
    result = identifier_for(base_index, tiny_model_dir).identify(decode_image(photo.read_bytes()))
    assert result.confident is True


def test_strict_rule_not_confident(strict_index, tiny_model_dir, photo) -> None:
    result = identifier_for(strict_index, tiny_model_dir).identify(decode_image(photo.read_bytes()), top_k=3)

    assert result.confident is False
    assert [match.rank for match in result.matches] == [1, 2, 3]
    assert result.matches[0].plant_id == "3"


def test_margin_applies_with_top_one(strict_index, tiny_model_dir, photo, tmp_path) -> None:
    """With top_k=1 the second score is still searched, so a margin rule can reject."""
    margin_only = index_with_rule(strict_index, tmp_path / "margin", {"min_score": -1.0, "min_margin": 2.0})
    result = identifier_for(margin_only, tiny_model_dir).identify(decode_image(photo.read_bytes()), top_k=1)

    assert result.confident is False
    assert len(result.matches) == 1


def test_accepting_rule_confident(base_index, tiny_model_dir, photo, tmp_path) -> None:
    accepting = index_with_rule(base_index, tmp_path / "accept", ACCEPT_ALL)
    result = identifier_for(accepting, tiny_model_dir).identify(decode_image(photo.read_bytes()), top_k=1)
    assert result.confident is True


def test_invalid_rule_rejected(base_index, tiny_model_dir, tmp_path) -> None:
    broken = index_with_rule(base_index, tmp_path / "broken", {"min_score": 0.5})
    with pytest.raises(IndexValidationError, match="invalid rejection rule.*min_margin"):
        identifier_for(broken, tiny_model_dir)


# HTTP API.


def post_photo(base_url: str, photo: Path) -> dict:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        response = client.post("/identify", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()


def test_api_flags_strict_index(strict_index, tiny_model_dir, photo) -> None:
    settings = Settings(index_location=str(strict_index), model=str(tiny_model_dir), index_check_seconds=60)
    with running_server(create_app(settings)) as base_url:
        body = post_photo(base_url, photo)

    assert body["confident"] is False
    assert body["no_confident_match"] is True
    assert body["matches"][0]["plant_id"] == "3"


def test_api_confident_without_rule(base_index, tiny_model_dir, photo) -> None:
    settings = Settings(index_location=str(base_index), model=str(tiny_model_dir), index_check_seconds=60)
    with running_server(create_app(settings)) as base_url:
        body = post_photo(base_url, photo)

    assert body["confident"] is True
    assert body["no_confident_match"] is False


def test_openapi_documents_flag(base_index, tiny_model_dir) -> None:
    settings = Settings(index_location=str(base_index), model=str(tiny_model_dir), index_check_seconds=60)
    schema = create_app(settings, warm_up=False).openapi()
    properties = schema["components"]["schemas"]["IdentifyResponse"]["properties"]

    assert "rejection rule" in properties["confident"]["description"]
    assert "not in the index" in properties["no_confident_match"]["description"]


# Command line.


def test_cli_table_says_no_match(strict_index, tiny_model_dir, photo, capsys) -> None:
    code = handler_main(["identify", "--index", str(strict_index), "--model", str(tiny_model_dir), str(photo)])
    lines = capsys.readouterr().out.splitlines()

    assert code == 0
    assert lines[1].strip().startswith("no confident match")
    assert lines[2].split()[:2] == ["rank", "plant"]


def test_cli_table_without_rule(base_index, tiny_model_dir, photo, capsys) -> None:
    code = handler_main(["identify", "--index", str(base_index), "--model", str(tiny_model_dir), str(photo)])
    out = capsys.readouterr().out

    assert code == 0
    assert "no confident match" not in out


def test_cli_json_flag(strict_index, tiny_model_dir, photo, capsys) -> None:
    code = handler_main(["identify", "--index", str(strict_index), "--model", str(tiny_model_dir), "--json", str(photo)])
    result = json.loads(capsys.readouterr().out)

    assert code == 0
    assert result["confident"] is False
