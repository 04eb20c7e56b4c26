"""Labelled query photos of the evaluation: labels CSV, file names and unknown species."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.eval_queries import QueryPhoto, mark_unindexed, queries_from_names, read_labels_csv, unknown_photos
from shared.errors import ConfigError


@pytest.fixture()
def queries(tmp_path: Path) -> Path:
    folder = tmp_path / "queries"
    folder.mkdir()
    for name in ("3_1.jpg", "3_2.JPG", "12_1.png", "x.jpg"):
        (folder / name).write_bytes(b"not decoded here")
    (folder / "notes.txt").write_text("ignored")
    (folder / ".DS_Store").write_bytes(b"")
    return folder


def write_csv(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes(("\ufeff" if bom else "").encode("utf-8") + text.encode("utf-8"))
    return path


def test_csv_with_bom(queries, tmp_path) -> None:
    labels = write_csv(tmp_path / "labels.csv", "file,plant_id\n3_1.jpg,3\n12_1.png,12\n", bom=True)
    photos = read_labels_csv(labels, queries)
    assert photos == [QueryPhoto(queries / "3_1.jpg", "3"), QueryPhoto(queries / "12_1.png", "12")]


def test_empty_plant_id_is_unknown(queries, tmp_path) -> None:
    labels = write_csv(tmp_path / "labels.csv", "file,plant_id\nx.jpg,\n3_1.jpg, 3 \n")
    photos = read_labels_csv(labels, queries)

    assert photos[0].plant_id is None
    assert not photos[0].is_known
    assert photos[1].plant_id == "3"


def test_extra_columns_and_crlf(queries, tmp_path) -> None:
    labels = write_csv(tmp_path / "labels.csv", "note,plant_id,file\r\n\"a, b\",12,12_1.png\r\n")
    assert read_labels_csv(labels, queries) == [QueryPhoto(queries / "12_1.png", "12")]


def test_missing_file_named(queries, tmp_path) -> None:
    labels = write_csv(tmp_path / "labels.csv", "file,plant_id\n3_1.jpg,3\nmissing.jpg,4\n")
    with pytest.raises(ConfigError, match=r"line 3: file 'missing.jpg' not found"):
        read_labels_csv(labels, queries)


def test_missing_column(queries, tmp_path) -> None:
    labels = write_csv(tmp_path / "labels.csv", "photo,plant_id\n3_1.jpg,3\n")
    with pytest.raises(ConfigError, match="has no file column"):
        read_labels_csv(labels, queries)


def test_duplicate_file(queries, tmp_path) -> None:
    labels = write_csv(tmp_path / "labels.csv", "file,plant_id\n3_1.jpg,3\n3_1.jpg,4\n")
    with pytest.raises(ConfigError, match="listed twice"):
        read_labels_csv(labels, queries)


def test_invalid_plant_id(queries, tmp_path) -> None:
    labels = write_csv(tmp_path / "labels.csv", "file,plant_id\n3_1.jpg,3 a\n")
    with pytest.raises(ConfigError, match="plant id '3 a' is invalid"):
        read_labels_csv(labels, queries)


def test_empty_csv(queries, tmp_path) -> None:
    labels = write_csv(tmp_path / "labels.csv", "file,plant_id\n")
    with pytest.raises(ConfigError, match="lists no photos"):
        read_labels_csv(labels, queries)


def test_csv_not_found(queries, tmp_path) -> None:
    with pytest.raises(ConfigError, match="could not read the labels CSV"):
        read_labels_csv(tmp_path / "absent.csv", queries)


def test_names_give_labels(tmp_path) -> None:
    folder = tmp_path / "named"
    folder.mkdir()
    for name in ("3_1.jpg", "a_b_2.jpeg", "12_1.png"):
        (folder / name).write_bytes(b"")
    photos = queries_from_names(folder)
    assert [(photo.path.name, photo.plant_id) for photo in photos] == [
        ("12_1.png", "12"), ("3_1.jpg", "3"), ("a_b_2.jpeg", "a_b"),
    ]


def test_bad_name_rejected(queries) -> None:
    with pytest.raises(ConfigError, match="'x.jpg' is not named"):
        queries_from_names(queries)


def test_unknown_folder_lists_photos(queries) -> None:
    photos = unknown_photos(queries)
    assert [photo.path.name for photo in photos] == ["12_1.png", "3_1.jpg", "3_2.JPG", "x.jpg"]
    assert all(photo.plant_id is None for photo in photos)


def test_missing_folder(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown species folder not found"):
        unknown_photos(tmp_path / "absent")


def test_unindexed_labels_become_unknown(tmp_path) -> None:
    photos = [QueryPhoto(tmp_path / "1.jpg", "1"), QueryPhoto(tmp_path / "2.jpg", "2"), QueryPhoto(tmp_path / "3.jpg", None)]
    updated, changed = mark_unindexed(photos, {"1"})

    assert [photo.plant_id for photo in updated] == ["1", None, None]
    assert changed == [photos[1]]
