"""`python -m handler identify`: the query path from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from handler.cli import main as handler_main
from indexer.cli import main as indexer_main

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, sample_dir, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("identify-index")
    code = indexer_main([
        "--images", str(sample_dir / "reference"), "--out", str(out), "--model", str(tiny_model_dir),
        "--csv", str(sample_dir / "species.csv"), "--augmentations", "20", "--no-progress",
    ])
    assert code == 0
    return out


def identify_json(index_dir: Path, model: Path, photos: list[Path], capsys, *extra: str) -> tuple[int, list[dict], str]:
    code = handler_main(["identify", "--index", str(index_dir), "--model", str(model), "--json", *extra, *map(str, photos)])
    captured = capsys.readouterr()
    results = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    return code, results, captured.err


def test_reference_photos_rank_first(index_dir, tiny_model_dir, sample_dir, capsys):
    photos = sorted((sample_dir / "reference").glob("*.jpg"))
    code, results, _ = identify_json(index_dir, tiny_model_dir, photos, capsys)

    assert code == 0
    assert len(results) == len(photos)
    for photo, result in zip(photos, results):
        expected = photo.stem.rsplit("_", 1)[1]
        assert result["matches"][0]["plant_id"] == expected, photo.name


def test_result_fields(index_dir, tiny_model_dir, sample_dir, capsys):
    photo = sample_dir / "queries" / "3_1.jpg"
    code, results, _ = identify_json(index_dir, tiny_model_dir, [photo], capsys, "--top-k", "3")

    assert code == 0
    result = results[0]
    assert [match["rank"] for match in result["matches"]] == [1, 2, 3]
    scores = [match["score"] for match in result["matches"]]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= score <= 1.0 for score in scores)
    assert result["views"] == 8
    assert result["index_version"]


def test_table_output(index_dir, tiny_model_dir, sample_dir, capsys):
    photo = sample_dir / "reference" / "plant_species_thumbnail_image_3.jpg"
    code = handler_main(["identify", "--index", str(index_dir), "--model", str(tiny_model_dir), str(photo)])
    out = capsys.readouterr().out

    assert code == 0
    first_row = out.splitlines()[2].split()
    assert first_row[:2] == ["1", "3"]
    assert "Celtis occidentalis" in out


def test_bad_photo_reports_error(index_dir, tiny_model_dir, sample_dir, cases_dir, capsys):
    good = sample_dir / "queries" / "3_1.jpg"
    bad = cases_dir / "images" / "not_an_image.jpg"
    code, results, err = identify_json(index_dir, tiny_model_dir, [bad, good], capsys)

    assert code == 1
    assert len(results) == 1
    assert f"{bad}: error:" in err
    assert "not an image" in err
    assert "Traceback" not in err


def test_missing_photo_reports_error(index_dir, tiny_model_dir, tmp_path, capsys):
    missing = tmp_path / "absent.jpg"
    code, _, err = identify_json(index_dir, tiny_model_dir, [missing], capsys)
    assert code == 1
    assert "cannot read the file" in err


def test_top_k_out_of_range(index_dir, tiny_model_dir, sample_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        handler_main(["identify", "--index", str(index_dir), "--top-k", "0", str(sample_dir / "queries" / "3_1.jpg")])
    assert exit_info.value.code == 2
    assert "top-K must be between 1 and 50" in capsys.readouterr().err


def test_missing_index_reports(tmp_path, tiny_model_dir, sample_dir, capsys):
    code = handler_main(["identify", "--index", str(tmp_path / "none"), "--model", str(tiny_model_dir), str(sample_dir / "queries" / "3_1.jpg")])
    assert code == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_cli_process_end_to_end(index_dir, tiny_model_dir, cases_dir):
    """The real module entry point in its own process: exit code and no traceback."""
    bad = cases_dir / "images" / "heic_stub_named.jpg"
    completed = subprocess.run(
        [sys.executable, "-m", "handler", "identify", "--index", str(index_dir), "--model", str(tiny_model_dir), str(bad)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 1
    assert "HEIC" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert "randomly initialised test model" in completed.stderr
