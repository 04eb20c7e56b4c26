"""Tests of the reference photo scan."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.scan import (
    REFERENCE_PREFIX,
    ScanResult,
    find_reference_photos,
    is_valid_plant_id,
)
from shared.errors import ConfigError


@pytest.fixture(scope="module")
def cases_scan(cases_dir: Path) -> ScanResult:
    return find_reference_photos(cases_dir / "indexer_folder")


def skipped_reason(result: ScanResult, name: str) -> str:
    reasons = [skipped.reason for skipped in result.skipped if skipped.path.name == name]
    assert len(reasons) == 1, f"{name} skipped {len(reasons)} times"
    return reasons[0]


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"")


def test_cases_photo_ids(cases_scan):
    ids = [photo.plant_id for photo in cases_scan.photos]
    assert ids == ["007", "1", "2", "3", "99"]


def test_cases_duplicate_prefers_jpg(cases_scan):
    chosen = {photo.plant_id: photo.path.name for photo in cases_scan.photos}
    assert chosen["2"] == f"{REFERENCE_PREFIX}2.jpg"


def test_cases_duplicate_skipped(cases_scan):
    reason = skipped_reason(cases_scan, f"{REFERENCE_PREFIX}2.jpeg")
    assert f"{REFERENCE_PREFIX}2.jpg" in reason
    assert f"{REFERENCE_PREFIX}2.jpeg" in reason


def test_cases_invalid_id_skipped(cases_scan):
    reason = skipped_reason(cases_scan, f"{REFERENCE_PREFIX} 7 \u00e9.jpg")
    assert "plant id ' 7 \u00e9' is invalid" in reason


def test_cases_empty_id_skipped(cases_scan):
    reason = skipped_reason(cases_scan, f"{REFERENCE_PREFIX}.jpg")
    assert "empty" in reason


def test_cases_hidden_not_reported(cases_scan):
    names = [skipped.path.name for skipped in cases_scan.skipped]
    assert ".DS_Store" not in names


def test_cases_csv_skipped(cases_scan):
    reason = skipped_reason(cases_scan, "plants.csv")
    assert "'.csv'" in reason


def test_extensions_case_insensitive(tmp_path):
    touch(tmp_path, f"{REFERENCE_PREFIX}X.JPG", f"{REFERENCE_PREFIX}Y.WebP", f"{REFERENCE_PREFIX}Z.Png")
    result = find_reference_photos(tmp_path)
    assert [photo.plant_id for photo in result.photos] == ["X", "Y", "Z"]
    assert result.skipped == []


def test_duplicate_fixed_order(tmp_path):
    touch(tmp_path, f"{REFERENCE_PREFIX}a.webp", f"{REFERENCE_PREFIX}a.png", f"{REFERENCE_PREFIX}a.JPEG")
    result = find_reference_photos(tmp_path)
    assert [photo.path.name for photo in result.photos] == [f"{REFERENCE_PREFIX}a.JPEG"]
    assert len(result.skipped) == 2


def test_prefix_required(tmp_path):
    touch(tmp_path, "rose.jpg")
    result = find_reference_photos(tmp_path)
    assert result.photos == []
    assert "does not start with" in skipped_reason(result, "rose.jpg")


def test_unsupported_extension(tmp_path):
    touch(tmp_path, f"{REFERENCE_PREFIX}1.heic", f"{REFERENCE_PREFIX}2")
    result = find_reference_photos(tmp_path)
    assert result.photos == []
    assert len(result.skipped) == 2


def test_subfolder_skipped(tmp_path):
    (tmp_path / "more").mkdir()
    touch(tmp_path / "more", f"{REFERENCE_PREFIX}1.jpg")
    result = find_reference_photos(tmp_path)
    assert result.photos == []
    assert "folder" in skipped_reason(result, "more")


def test_hidden_photo_ignored(tmp_path):
    touch(tmp_path, f"._{REFERENCE_PREFIX}1.jpg")
    result = find_reference_photos(tmp_path)
    assert result.photos == []
    assert result.skipped == []


def test_trailing_newline_id_rejected(tmp_path):
    touch(tmp_path, f"{REFERENCE_PREFIX}5\n.jpg")
    result = find_reference_photos(tmp_path)
    assert result.photos == []


@pytest.mark.parametrize("plant_id", ["1", "007", "Rosa_canina-2", "A"])
def test_valid_ids(plant_id):
    assert is_valid_plant_id(plant_id)


@pytest.mark.parametrize("plant_id", ["", " 7", "7 ", "7\n", "-7", "_7", "7.1", "\u00e97", "a/b"])
def test_invalid_ids(plant_id):
    assert not is_valid_plant_id(plant_id)


def test_folder_not_found(tmp_path):
    with pytest.raises(ConfigError) as caught:
        find_reference_photos(tmp_path / "missing")
    assert "not found" in caught.value.message


def test_path_is_file(tmp_path):
    touch(tmp_path, "file.jpg")
    with pytest.raises(ConfigError) as caught:
        find_reference_photos(tmp_path / "file.jpg")
    assert "not a folder" in caught.value.message
