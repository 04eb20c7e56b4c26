"""Tests for shared.index_store: the index fault cases, round trips and the latest.json pointer."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from shared import index_store, storage
from shared.errors import IndexNotFoundError, IndexValidationError
from shared.index_store import load_index, parse_index, read_index_version, write_index
from tests.s3_server import S3Server

CLIP_DIM = 512

# Every file of the index fault cases folder: (embeddings file, meta file, expected error
# fragment or None when the pair must load).
INDEX_CASES = [
    ("index_ok.npz", "meta_ok.json", None),
    ("index_pickled_object.npz", "meta_ok.json", "pickled object arrays"),
    ("index_fp16_unnormalized.npz", "meta_ok.json", "has norm 3.000"),
    ("index_wrong_dim.npz", "meta_ok.json", "dimension 768, expected 512"),
    ("index_missing_key.npz", "meta_ok.json", "no 'embeddings' array (found: vectors)"),
    ("index_not_npz.npz", "meta_ok.json", "not a valid .npz archive"),
    ("index_ok.npz", "meta_length_mismatch.json", "lists 2 species for 3 embeddings"),
]


def unit_rows(count: int, dimension: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((count, dimension)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def sample_meta() -> dict:
    return {
        "model": {"id": "tiny-clip", "revision": "abc123", "backend": "torch"},
        "augmentation": {"name": "light-v1", "count": 20},
        "image_processor": {"shortest_edge": 224, "crop_size": 224},
    }


@pytest.fixture
def index_case(cases_dir: Path):
    def read(name: str) -> bytes:
        return (cases_dir / "index" / name).read_bytes()

    return read


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
    name = f"index-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(name)
    return name


# Fault cases.


@pytest.mark.parametrize(("npz_name", "meta_name", "expected_error"), INDEX_CASES)
def test_case_file(index_case, npz_name: str, meta_name: str, expected_error: str | None) -> None:
    npz_bytes = index_case(npz_name)
    meta_bytes = index_case(meta_name)

    if expected_error is None:
        index = parse_index(npz_bytes, meta_bytes, expected_dim=CLIP_DIM)
        assert index.count == 3
    else:
        with pytest.raises(IndexValidationError, match=re.escape(expected_error)):
            parse_index(npz_bytes, meta_bytes, expected_dim=CLIP_DIM)


def test_cases_all_covered(cases_dir: Path) -> None:
    on_disk = {path.name for path in (cases_dir / "index").iterdir() if path.suffix in (".npz", ".json")}
    covered = {name for npz_name, meta_name, _ in INDEX_CASES for name in (npz_name, meta_name)}
    assert on_disk == covered


def test_case_ok_ids_from_meta(index_case) -> None:
    index = parse_index(index_case("index_ok.npz"), index_case("meta_ok.json"))
    assert index.plant_ids == ("1", "2", "12")


def test_case_ok_names(index_case) -> None:
    index = parse_index(index_case("index_ok.npz"), index_case("meta_ok.json"))
    assert index.name_of("12") == "Pilea peperomioides"


def test_case_ok_stored_fp16(index_case) -> None:
    index = parse_index(index_case("index_ok.npz"), index_case("meta_ok.json"))
    assert index.embeddings.dtype == np.float16


def test_case_ok_read_only(index_case) -> None:
    index = parse_index(index_case("index_ok.npz"), index_case("meta_ok.json"))
    assert not index.embeddings.flags.writeable


def test_case_ok_content_version(index_case) -> None:
    index = parse_index(index_case("index_ok.npz"), index_case("meta_ok.json"))
    assert index.version.startswith("unversioned-")


def test_case_ok_folder_load(index_case, tmp_path: Path) -> None:
    (tmp_path / index_store.EMBEDDINGS_FILE).write_bytes(index_case("index_ok.npz"))
    (tmp_path / index_store.META_FILE).write_bytes(index_case("meta_ok.json"))
    index = load_index(tmp_path, expected_dim=CLIP_DIM)
    assert index.plant_ids == ("1", "2", "12")


def test_case_bad_folder_load(index_case, tmp_path: Path) -> None:
    (tmp_path / index_store.EMBEDDINGS_FILE).write_bytes(index_case("index_wrong_dim.npz"))
    (tmp_path / index_store.META_FILE).write_bytes(index_case("meta_ok.json"))
    with pytest.raises(IndexValidationError, match="expected 512"):
        load_index(tmp_path, expected_dim=CLIP_DIM)


@pytest.mark.parametrize("row", [0, 1, 2])
def test_case_fp16_each_bad_row(index_case, tmp_path: Path, row: int) -> None:
    """The scaled, the all-zero and the fp16-overflow row are each rejected on their own."""
    with np.load(_as_file(tmp_path, index_case("index_ok.npz")), allow_pickle=False) as archive:
        good = archive["embeddings"].astype(np.float16)
    with np.load(_as_file(tmp_path, index_case("index_fp16_unnormalized.npz")), allow_pickle=False) as archive:
        bad = archive["embeddings"]
    good[row] = bad[row]

    with pytest.raises(IndexValidationError, match=rf"row {row} .*has norm"):
        parse_index(_npz(embeddings=good), index_case("meta_ok.json"))


def _as_file(folder: Path, data: bytes) -> Path:
    path = folder / f"{uuid.uuid4().hex}.npz"
    path.write_bytes(data)
    return path


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _rows_json(ids: list[str]) -> bytes:
    return json.dumps([{"plant_id": plant_id} for plant_id in ids]).encode()


# Validation beyond the case files.


def test_non_finite_row() -> None:
    rows = unit_rows(3, 8).astype(np.float16)
    rows[1, 0] = np.inf
    with pytest.raises(IndexValidationError, match="row 1 \\(plant id 'b'\\) contains non-finite"):
        parse_index(_npz(embeddings=rows), _rows_json(["a", "b", "c"]))


def test_nan_row() -> None:
    rows = unit_rows(3, 8)
    rows[2, 3] = np.nan
    with pytest.raises(IndexValidationError, match="non-finite"):
        parse_index(_npz(embeddings=rows), _rows_json(["a", "b", "c"]))


def test_zero_row_message() -> None:
    rows = unit_rows(3, 8)
    rows[1] = 0
    with pytest.raises(IndexValidationError, match=r"row 1 \(plant id 'b'\) has norm 0.000, expected 1 \+/- 0.01"):
        parse_index(_npz(embeddings=rows), _rows_json(["a", "b", "c"]))


def test_integer_embeddings() -> None:
    rows = np.ones((3, 8), dtype=np.int64)
    with pytest.raises(IndexValidationError, match="dtype int64"):
        parse_index(_npz(embeddings=rows), _rows_json(["a", "b", "c"]))


def test_one_dimensional_embeddings() -> None:
    with pytest.raises(IndexValidationError, match="expected \\[count, dimension\\]"):
        parse_index(_npz(embeddings=np.ones(8, np.float32)), _rows_json(["a"]))


def test_empty_embeddings() -> None:
    with pytest.raises(IndexValidationError, match="no embeddings"):
        parse_index(_npz(embeddings=np.zeros((0, 8), np.float32)), b"[]")


def test_plain_npy_rejected() -> None:
    buffer = io.BytesIO()
    np.save(buffer, unit_rows(3, 8))
    with pytest.raises(IndexValidationError, match="not a valid .npz"):
        parse_index(buffer.getvalue(), _rows_json(["a", "b", "c"]))


def test_truncated_npz() -> None:
    data = _npz(embeddings=unit_rows(30, 64))
    with pytest.raises(IndexValidationError):
        parse_index(data[: len(data) // 2], _rows_json([str(i) for i in range(30)]))


def test_meta_not_json() -> None:
    with pytest.raises(IndexValidationError, match="meta.json is not valid JSON"):
        parse_index(_npz(embeddings=unit_rows(3, 8)), b"{not json")


def test_meta_integer_ids() -> None:
    meta = json.dumps([{"plant_id": 1}, {"plant_id": 2}, {"plant_id": 3}]).encode()
    with pytest.raises(IndexValidationError, match="expected a string"):
        parse_index(_npz(embeddings=unit_rows(3, 8)), meta)


def test_meta_ids_disagree() -> None:
    npz = _npz(embeddings=unit_rows(2, 8), plant_ids=np.array(["a", "b"]))
    with pytest.raises(IndexValidationError, match="row 1 has plant_id 'c'"):
        parse_index(npz, _rows_json(["a", "c"]))


def test_object_ids_rejected() -> None:
    npz = _npz(embeddings=unit_rows(2, 8), plant_ids=np.array(["a", "b"], dtype=object))
    with pytest.raises(IndexValidationError, match="pickled object arrays \\(plant_ids\\)"):
        parse_index(npz, _rows_json(["a", "b"]))


def test_bytes_ids_rejected() -> None:
    npz = _npz(embeddings=unit_rows(2, 8), plant_ids=np.array([b"a", b"b"]))
    with pytest.raises(IndexValidationError, match="unicode"):
        parse_index(npz, _rows_json(["a", "b"]))


def test_duplicate_ids_in_meta() -> None:
    with pytest.raises(IndexValidationError, match="'2' appears twice"):
        parse_index(_npz(embeddings=unit_rows(3, 8)), _rows_json(["1", "2", "2"]))


def test_meta_count_disagrees() -> None:
    meta = {"count": 4, "dimension": 8, "species": [{"plant_id": "a"}, {"plant_id": "b"}]}
    with pytest.raises(IndexValidationError, match="has count 4"):
        parse_index(_npz(embeddings=unit_rows(2, 8)), json.dumps(meta).encode())


def test_meta_newer_format() -> None:
    meta = {"format_version": 99, "species": [{"plant_id": "a"}]}
    with pytest.raises(IndexValidationError, match="format_version 99"):
        parse_index(_npz(embeddings=unit_rows(1, 8)), json.dumps(meta).encode())


# Writing and loading.


def test_local_round_trip(tmp_path: Path) -> None:
    rows = unit_rows(20, 32)
    ids = [f"p{i}" for i in range(20)]
    version = write_index(tmp_path, rows, ids, sample_meta())
    index = load_index(tmp_path, expected_dim=32)

    assert index.version == version
    assert index.plant_ids == tuple(ids)
    np.testing.assert_array_equal(index.embeddings, rows.astype(np.float16))


def test_round_trip_meta(tmp_path: Path) -> None:
    write_index(tmp_path, unit_rows(4, 8), ["a", "b", "c", "d"], sample_meta())
    index = load_index(tmp_path)

    assert index.model_id == "tiny-clip"
    assert index.meta["augmentation"] == {"name": "light-v1", "count": 20}
    assert index.meta["image_processor"]["crop_size"] == 224
    assert index.meta["format_version"] == index_store.FORMAT_VERSION
    assert index.meta["count"] == 4
    assert index.meta["dimension"] == 8
    assert index.meta["created_at"].endswith("Z")


def test_round_trip_species_names(tmp_path: Path) -> None:
    meta = sample_meta()
    meta["species"] = [
        {"scientific_name": "Monstera deliciosa", "common_name": "Swiss cheese plant"},
        {"scientific_name": "Aloe vera", "common_name": "Aloe, true"},
    ]
    write_index(tmp_path, unit_rows(2, 8), ["1", "2"], meta)
    index = load_index(tmp_path)

    assert index.species[1] == {"plant_id": "2", "scientific_name": "Aloe vera", "common_name": "Aloe, true"}
    assert index.name_of("1") == "Monstera deliciosa"


def test_default_species_rows(tmp_path: Path) -> None:
    write_index(tmp_path, unit_rows(2, 8), ["1", "2"], {})
    index = load_index(tmp_path)
    assert index.species == ({"plant_id": "1"}, {"plant_id": "2"})


def test_unknown_plant_id(tmp_path: Path) -> None:
    write_index(tmp_path, unit_rows(2, 8), ["1", "2"], {})
    with pytest.raises(KeyError):
        load_index(tmp_path).name_of("3")


def test_unicode_ids_survive(tmp_path: Path) -> None:
    ids = ["007", "7", "Ficus é", "日本-12", "a_b-C"]
    write_index(tmp_path, unit_rows(5, 8), ids, {})
    assert load_index(tmp_path).plant_ids == tuple(ids)


def test_ids_stored_as_unicode(tmp_path: Path) -> None:
    version = write_index(tmp_path, unit_rows(2, 8), ["007", "7"], {})
    npz_path = tmp_path / "versions" / version / index_store.EMBEDDINGS_FILE
    with np.load(npz_path, allow_pickle=False) as archive:
        assert archive["plant_ids"].dtype.kind == "U"
        assert archive["embeddings"].dtype == np.float16


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    with pytest.raises(IndexValidationError, match="appears twice"):
        write_index(tmp_path, unit_rows(3, 8), ["1", "2", "1"], {})


def test_rejected_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(IndexValidationError):
        write_index(tmp_path, unit_rows(3, 8), ["1", "2", "1"], {})
    assert list(tmp_path.iterdir()) == []


def test_integer_ids_rejected(tmp_path: Path) -> None:
    with pytest.raises(IndexValidationError, match="must be strings"):
        write_index(tmp_path, unit_rows(2, 8), [7, 8], {})


def test_id_count_mismatch(tmp_path: Path) -> None:
    with pytest.raises(IndexValidationError, match="2 plant ids for 3 embeddings"):
        write_index(tmp_path, unit_rows(3, 8), ["1", "2"], {})


def test_unnormalised_write_rejected(tmp_path: Path) -> None:
    with pytest.raises(IndexValidationError, match="has norm 2.000"):
        write_index(tmp_path, unit_rows(3, 8) * 2, ["1", "2", "3"], {})


def test_version_format(tmp_path: Path) -> None:
    version = write_index(tmp_path, unit_rows(2, 8), ["1", "2"], {})
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", version)


def test_version_depends_on_data(tmp_path: Path) -> None:
    first = write_index(tmp_path, unit_rows(2, 8, seed=1), ["1", "2"], {})
    second = write_index(tmp_path, unit_rows(2, 8, seed=2), ["1", "2"], {})
    assert first.split("-")[1] != second.split("-")[1]


def test_layout_and_pointer(tmp_path: Path) -> None:
    version = write_index(tmp_path, unit_rows(3, 8), ["1", "2", "3"], sample_meta())
    pointer = json.loads((tmp_path / "latest.json").read_text())

    assert (tmp_path / pointer["embeddings"]).is_file()
    assert (tmp_path / pointer["meta"]).is_file()
    assert pointer["embeddings"] == f"versions/{version}/embeddings_fp16.npz"
    assert pointer["meta"] == f"versions/{version}/meta.json"
    assert pointer["version"] == version
    assert pointer["count"] == 3
    assert pointer["dimension"] == 8
    assert pointer["model_id"] == "tiny-clip"
    assert pointer["format_version"] == index_store.FORMAT_VERSION


def test_read_version_matches(tmp_path: Path) -> None:
    version = write_index(tmp_path, unit_rows(2, 8), ["1", "2"], {})
    assert read_index_version(tmp_path) == version


def test_read_version_folder(index_case, tmp_path: Path) -> None:
    (tmp_path / index_store.EMBEDDINGS_FILE).write_bytes(index_case("index_ok.npz"))
    (tmp_path / index_store.META_FILE).write_bytes(index_case("meta_ok.json"))
    assert read_index_version(tmp_path) == load_index(tmp_path).version


def test_newest_write_wins(tmp_path: Path) -> None:
    write_index(tmp_path, unit_rows(2, 8, seed=1), ["1", "2"], {})
    second = write_index(tmp_path, unit_rows(3, 8, seed=2), ["1", "2", "3"], {})
    assert load_index(tmp_path).version == second


def test_expected_dim_on_load(tmp_path: Path) -> None:
    write_index(tmp_path, unit_rows(2, 8), ["1", "2"], {})
    with pytest.raises(IndexValidationError, match="dimension 8, expected 512"):
        load_index(tmp_path, expected_dim=CLIP_DIM)


def test_newer_pointer_rejected(tmp_path: Path) -> None:
    write_index(tmp_path, unit_rows(2, 8), ["1", "2"], {})
    pointer = json.loads((tmp_path / "latest.json").read_text())
    pointer["format_version"] = index_store.FORMAT_VERSION + 1
    (tmp_path / "latest.json").write_text(json.dumps(pointer))

    with pytest.raises(IndexValidationError, match="format_version 2"):
        load_index(tmp_path)


def test_pointer_escape_rejected(tmp_path: Path) -> None:
    write_index(tmp_path, unit_rows(2, 8), ["1", "2"], {})
    pointer = json.loads((tmp_path / "latest.json").read_text())
    pointer["meta"] = "../elsewhere/meta.json"
    (tmp_path / "latest.json").write_text(json.dumps(pointer))

    with pytest.raises(IndexValidationError, match="must be relative"):
        load_index(tmp_path)


def test_pointer_version_mismatch(tmp_path: Path) -> None:
    write_index(tmp_path, unit_rows(2, 8), ["1", "2"], {})
    pointer = json.loads((tmp_path / "latest.json").read_text())
    pointer["version"] = "20000101T000000Z-00000000"
    (tmp_path / "latest.json").write_text(json.dumps(pointer))

    with pytest.raises(IndexValidationError, match="names version 20000101T000000Z-00000000"):
        load_index(tmp_path)


def test_pointer_to_missing_files(tmp_path: Path) -> None:
    version = write_index(tmp_path, unit_rows(2, 8), ["1", "2"], {})
    shutil.rmtree(tmp_path / "versions" / version)
    with pytest.raises(IndexNotFoundError, match="files are missing"):
        load_index(tmp_path)


def test_empty_folder_not_found(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="no index at"):
        load_index(tmp_path)


def test_missing_folder_not_found(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError):
        load_index(tmp_path / "missing")


def test_load_logs_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    version = write_index(tmp_path, unit_rows(2, 8), ["1", "2"], {})
    with caplog.at_level(logging.INFO, logger="shared.index_store"):
        load_index(tmp_path)
    assert any(version in record.getMessage() and "2 prototypes" in record.getMessage() for record in caplog.records)


def test_concurrent_reader_sees_whole_versions(tmp_path: Path) -> None:
    """A reader that loads while a writer publishes new versions gets one whole version every time."""
    first = unit_rows(6, 16, seed=100)
    written = {write_index(tmp_path, first, [str(i) for i in range(6)], {}): _digest(first)}
    loads: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            try:
                index = load_index(tmp_path, expected_dim=16)
            except BaseException as error:  # noqa: BLE001 - collected for the assert below
                errors.append(error)
                return
            loads.append((index.version, _digest(index.embeddings)))

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for seed in range(40):
            rows = unit_rows(6, 16, seed=seed)
            written[write_index(tmp_path, rows, [str(i) for i in range(6)], {})] = _digest(rows)
    finally:
        done.set()
        reader.join(timeout=60)

    assert errors == []
    assert len(loads) > 0
    assert all(written.get(version) == digest for version, digest in loads)


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.float16).tobytes()).hexdigest()


# S3.


def test_s3_round_trip(bucket: str) -> None:
    rows = unit_rows(10, 16)
    ids = ["007", "7", "é"] + [str(i) for i in range(7)]
    version = write_index(f"s3://{bucket}/indexes/prod", rows, ids, sample_meta())
    index = load_index(f"s3://{bucket}/indexes/prod", expected_dim=16)

    assert index.version == version
    assert index.plant_ids == tuple(ids)
    np.testing.assert_array_equal(index.embeddings, rows.astype(np.float16))


def test_s3_objects_written(bucket: str, s3_env: S3Server) -> None:
    version = write_index(f"s3://{bucket}/idx", unit_rows(2, 8), ["1", "2"], {})
    listing = s3_env.client().list_objects_v2(Bucket=bucket)
    keys = sorted(item["Key"] for item in listing["Contents"])

    assert keys == [
        "idx/latest.json",
        f"idx/versions/{version}/embeddings_fp16.npz",
        f"idx/versions/{version}/meta.json",
    ]


def test_s3_new_version_loaded(bucket: str, s3_env: S3Server) -> None:
    location = f"s3://{bucket}/idx"
    first = write_index(location, unit_rows(2, 8, seed=1), ["1", "2"], {})
    second = write_index(location, unit_rows(3, 8, seed=2), ["1", "2", "3"], {})

    assert load_index(location).version == second
    assert read_index_version(location) == second
    assert storage.exists(f"{location}/versions/{first}/meta.json")


def test_s3_missing_index(bucket: str) -> None:
    with pytest.raises(IndexNotFoundError, match="no index at"):
        load_index(f"s3://{bucket}/nothing-here")


def test_s3_bad_case_rejected(bucket: str, index_case) -> None:
    storage.write_bytes(f"s3://{bucket}/raw/embeddings_fp16.npz", index_case("index_pickled_object.npz"))
    storage.write_bytes(f"s3://{bucket}/raw/meta.json", index_case("meta_ok.json"))
    with pytest.raises(IndexValidationError, match="pickled object arrays"):
        load_index(f"s3://{bucket}/raw")
