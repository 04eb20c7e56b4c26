"""Several photos of one plant: the combined query (HTTP, command line) and several reference photos per species."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from handler.app import create_app
from handler.cli import main as handler_main
from handler.config import Settings
from handler.query import MAX_PHOTOS, Identifier
from indexer.build import build_prototypes, encode_views, view_seed_key
from indexer.cli import main as indexer_main
from indexer.scan import REFERENCE_PREFIX, find_reference_photos
from shared.augment import DEFAULT_RECIPE
from shared.encoder import load_encoder, mean_embedding
from shared.imaging import decode_image
from shared.index_store import load_index
from shared.search import build_search
from tests.handler_support import UPLOAD_BUCKET, reference_photos, tiny_index


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model_dir, sample_dir) -> Path:
    return tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("multi-index"))


@pytest.fixture(scope="module")
def client(index_dir, tiny_model_dir):
    settings = Settings(index_location=str(index_dir), model=str(tiny_model_dir))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def identifier(index_dir, tiny_model_dir) -> Identifier:
    index = load_index(str(index_dir))
    return Identifier(load_encoder(str(tiny_model_dir)), index, build_search(index.embeddings, index.plant_ids))


def query_files(sample_dir: Path, count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    photos = sorted((sample_dir / "queries").glob("*.jpg"))[:count]
    return [("file", (photo.name, photo.read_bytes(), "image/jpeg")) for photo in photos]


def sample_photo(sample_dir: Path, name: str = "3_1.jpg"):
    return decode_image((sample_dir / "queries" / name).read_bytes())


# Identifier.


def test_identify_many_single_equals_identify(identifier, sample_dir):
    image = sample_photo(sample_dir)
    single = identifier.identify(image, top_k=5)
    many = identifier.identify_many([image], top_k=5)
    assert single.matches == many.matches


def test_identify_many_counts_photos(identifier, sample_dir):
    result = identifier.identify_many([sample_photo(sample_dir, "3_1.jpg"), sample_photo(sample_dir, "15_1.jpg")])
    assert result.photos == 2


def test_combined_embedding_is_mean(identifier, sample_dir):
    images = [sample_photo(sample_dir, "3_1.jpg"), sample_photo(sample_dir, "15_1.jpg")]
    expected = mean_embedding(np.stack([identifier.embed(image) for image in images]))
    np.testing.assert_allclose(identifier.embed_many(images), expected, atol=1e-6)


def test_identify_many_rejects_six(identifier, sample_dir):
    with pytest.raises(ValueError, match="1 to 5 photos"):
        identifier.identify_many([sample_photo(sample_dir)] * (MAX_PHOTOS + 1))


def test_same_photo_twice_same_ranking(identifier, sample_dir):
    image = sample_photo(sample_dir)
    once = identifier.identify(image, top_k=5)
    twice = identifier.identify_many([image, image], top_k=5)
    assert [match.plant_id for match in twice.matches] == [match.plant_id for match in once.matches]


# HTTP.


def test_http_two_files(client, sample_dir):
    response = client.post("/identify", files=query_files(sample_dir, 2))
    assert response.status_code == 200, response.text
    assert response.json()["photos"] == 2


def test_http_one_file_counts_one(client, sample_dir):
    response = client.post("/identify", files=query_files(sample_dir, 1))
    assert response.json()["photos"] == 1


def test_http_five_files(client, sample_dir):
    response = client.post("/identify", files=query_files(sample_dir, 5))
    assert response.status_code == 200, response.text


def test_http_six_files_rejected(client, sample_dir):
    response = client.post("/identify", files=query_files(sample_dir, 6))
    assert response.status_code == 422
    assert "1 to 5 photos" in response.json()["detail"][0]["msg"]
    assert "got 6" in response.json()["detail"][0]["msg"]


def test_http_bad_photo_named(client, sample_dir, cases_dir):
    files = query_files(sample_dir, 1)
    files.append(("file", ("broken.jpg", (cases_dir / "images" / "truncated.jpg").read_bytes(), "image/jpeg")))
    response = client.post("/identify", files=files)

    assert response.status_code == 400
    assert response.json()["message"].startswith("photo 2 (broken.jpg): ")


def test_http_every_bad_photo_named(client, cases_dir):
    files = [
        ("file", ("empty.jpg", b"", "image/jpeg")),
        ("file", ("text.jpg", b"not an image at all", "image/jpeg")),
    ]
    message = client.post("/identify", files=files).json()["message"]
    assert "photo 1 (empty.jpg)" in message
    assert "photo 2 (text.jpg)" in message


def test_http_single_error_unchanged(client, cases_dir):
    files = [("file", ("broken.jpg", (cases_dir / "images" / "truncated.jpg").read_bytes(), "image/jpeg"))]
    message = client.post("/identify", files=files).json()["message"]
    assert not message.startswith("photo 1")


def test_http_keys_and_key_rejected(client):
    response = client.post("/identify", json={"key": "uploads/a.jpg", "keys": ["uploads/b.jpg"]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "keys"]


def test_http_six_keys_rejected(client):
    response = client.post("/identify", json={"keys": [f"uploads/{number}.jpg" for number in range(6)]})
    assert response.status_code == 422


def test_http_empty_keys_rejected(client):
    assert client.post("/identify", json={"keys": []}).status_code == 422


def test_openapi_documents_keys(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/identify"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["file"]["maxItems"] == MAX_PHOTOS
    assert "keys" in body["application/json"]["schema"]["properties"]


@pytest.fixture(scope="module")
def s3_client_with_photos(s3_env, sample_dir):
    client = s3_env.client()
    for photo in sorted((sample_dir / "queries").glob("*.jpg"))[:2]:
        client.put_object(Bucket=UPLOAD_BUCKET, Key=f"uploads/multi-{photo.name}", Body=photo.read_bytes())
    client.put_object(Bucket=UPLOAD_BUCKET, Key="uploads/multi-bad.jpg", Body=b"not an image")
    return client


@pytest.fixture(scope="module")
def bucket_client(s3_client_with_photos, index_dir, tiny_model_dir, sample_dir):
    settings = Settings(index_location=str(index_dir), model=str(tiny_model_dir), upload_bucket=UPLOAD_BUCKET)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_http_two_keys(bucket_client, sample_dir):
    keys = [f"uploads/multi-{photo.name}" for photo in sorted((sample_dir / "queries").glob("*.jpg"))[:2]]
    response = bucket_client.post("/identify", json={"keys": keys, "top_k": 3})

    assert response.status_code == 200, response.text
    assert response.json()["photos"] == 2
    assert len(response.json()["matches"]) == 3


def test_http_bad_key_named(bucket_client, sample_dir):
    first = f"uploads/multi-{sorted((sample_dir / 'queries').glob('*.jpg'))[0].name}"
    response = bucket_client.post("/identify", json={"keys": [first, "uploads/multi-bad.jpg"]})

    assert response.status_code == 400
    assert response.json()["message"].startswith("photo 2 (uploads/multi-bad.jpg): ")


def test_http_missing_key_named(bucket_client, sample_dir):
    first = f"uploads/multi-{sorted((sample_dir / 'queries').glob('*.jpg'))[0].name}"
    response = bucket_client.post("/identify", json={"keys": [first, "uploads/multi-missing.jpg"]})

    assert response.status_code == 404
    assert response.json()["message"].startswith("photo 2 (uploads/multi-missing.jpg): ")


# Command line.


def identify_cli(index_dir: Path, model: Path, photos: list[Path], capsys, *extra: str) -> tuple[int, list[dict], str]:
    code = handler_main(["identify", "--index", str(index_dir), "--model", str(model), "--json", *extra, *map(str, photos)])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines() if line.strip()], captured.err


def test_cli_combine_one_result(index_dir, tiny_model_dir, sample_dir, capsys):
    photos = sorted((sample_dir / "queries").glob("*.jpg"))[:3]
    code, results, _ = identify_cli(index_dir, tiny_model_dir, photos, capsys, "--combine")

    assert code == 0
    assert len(results) == 1
    assert results[0]["photos"] == 3
    assert results[0]["files"] == [str(photo) for photo in photos]


def test_cli_without_combine_one_per_photo(index_dir, tiny_model_dir, sample_dir, capsys):
    photos = sorted((sample_dir / "queries").glob("*.jpg"))[:2]
    code, results, _ = identify_cli(index_dir, tiny_model_dir, photos, capsys)

    assert code == 0
    assert [result["photos"] for result in results] == [1, 1]


def test_cli_combine_matches_http(index_dir, tiny_model_dir, sample_dir, client, capsys):
    photos = sorted((sample_dir / "queries").glob("*.jpg"))[:2]
    _, results, _ = identify_cli(index_dir, tiny_model_dir, photos, capsys, "--combine")
    body = client.post("/identify", files=query_files(sample_dir, 2)).json()

    assert [match["plant_id"] for match in results[0]["matches"]] == [match["plant_id"] for match in body["matches"]]


def test_cli_combine_six_rejected(index_dir, tiny_model_dir, sample_dir, capsys):
    photos = sorted((sample_dir / "queries").glob("*.jpg"))[:6]
    code, results, err = identify_cli(index_dir, tiny_model_dir, photos, capsys, "--combine")

    assert code == 2
    assert results == []
    assert "at most 5 photos" in err


def test_cli_combine_bad_photo(index_dir, tiny_model_dir, sample_dir, cases_dir, capsys):
    bad = cases_dir / "images" / "truncated.jpg"
    code, results, err = identify_cli(index_dir, tiny_model_dir, [sample_dir / "queries" / "3_1.jpg", bad], capsys, "--combine")

    assert code == 1
    assert results == []
    assert f"{bad}: error:" in err


# Several reference photos per species.


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"")


def test_scan_numbered_photos_grouped(tmp_path):
    touch(tmp_path, f"{REFERENCE_PREFIX}rosa__2.jpg", f"{REFERENCE_PREFIX}rosa.jpg", f"{REFERENCE_PREFIX}rosa__10.png")
    photos = find_reference_photos(tmp_path).photos

    assert [photo.plant_id for photo in photos] == ["rosa"]
    assert [path.name for path in photos[0].paths] == [
        f"{REFERENCE_PREFIX}rosa.jpg",
        f"{REFERENCE_PREFIX}rosa__2.jpg",
        f"{REFERENCE_PREFIX}rosa__10.png",
    ]


@pytest.mark.parametrize("plant_id", ["007", "a_1", "1_2", "a-2", "x_1_2", "a__b"])
def test_scan_single_underscore_ids_kept(tmp_path, plant_id):
    touch(tmp_path, f"{REFERENCE_PREFIX}{plant_id}.jpg")
    photos = find_reference_photos(tmp_path).photos
    assert [(photo.plant_id, len(photo.paths)) for photo in photos] == [(plant_id, 1)]


def test_scan_double_underscore_is_photo_number(tmp_path):
    touch(tmp_path, f"{REFERENCE_PREFIX}a_1__3.jpg")
    photos = find_reference_photos(tmp_path).photos
    assert [photo.plant_id for photo in photos] == ["a_1"]


def test_scan_last_suffix_only(tmp_path):
    touch(tmp_path, f"{REFERENCE_PREFIX}a__1__2.jpg")
    photos = find_reference_photos(tmp_path).photos
    assert [photo.plant_id for photo in photos] == ["a__1"]


def test_scan_duplicate_photo_number(tmp_path):
    touch(tmp_path, f"{REFERENCE_PREFIX}rosa__1.jpg", f"{REFERENCE_PREFIX}rosa__1.png")
    result = find_reference_photos(tmp_path)

    assert [path.name for path in result.photos[0].paths] == [f"{REFERENCE_PREFIX}rosa__1.jpg"]
    assert "duplicate photo 1 of plant id 'rosa'" in result.skipped[0].reason


def test_scan_empty_id_before_number(tmp_path):
    touch(tmp_path, f"{REFERENCE_PREFIX}__1.jpg")
    result = find_reference_photos(tmp_path)
    assert result.photos == []
    assert len(result.skipped) == 1


def test_scan_cases_folder_unchanged(cases_dir):
    photos = find_reference_photos(cases_dir / "indexer_folder").photos
    assert [(photo.plant_id, len(photo.paths)) for photo in photos] == [
        ("007", 1), ("1", 1), ("2", 1), ("3", 1), ("99", 1),
    ]


def test_photo_table_assigns_ids(tmp_path):
    touch(tmp_path, "leaf.jpg", "flower.jpg", f"{REFERENCE_PREFIX}x__2.jpg")
    table = tmp_path / "photos.csv"
    table.write_text(f"file,plant_id\nleaf.jpg,x__2\nflower.jpg,x__2\n{REFERENCE_PREFIX}x__2.jpg,x__2\n", encoding="utf-8")
    result = find_reference_photos(tmp_path, table)

    assert [photo.plant_id for photo in result.photos] == ["x__2"]
    assert [path.name for path in result.photos[0].paths] == ["leaf.jpg", "flower.jpg", f"{REFERENCE_PREFIX}x__2.jpg"]


def test_photo_table_adds_to_name_rule(tmp_path):
    touch(tmp_path, f"{REFERENCE_PREFIX}7.jpg", "extra.jpg")
    table = tmp_path / "photos.csv"
    table.write_text("file,plant_id\nextra.jpg,7\n", encoding="utf-8")
    photos = find_reference_photos(tmp_path, table).photos

    assert [path.name for path in photos[0].paths] == [f"{REFERENCE_PREFIX}7.jpg", "extra.jpg"]


def test_photo_table_bad_rows_skipped(tmp_path):
    touch(tmp_path, "a.jpg", "notes.txt")
    table = tmp_path / "photos.csv"
    table.write_text("file,plant_id\nmissing.jpg,x\na.jpg, 7 é\nnotes.txt,y\na.jpg,z\na.jpg,z\n", encoding="utf-8")
    result = find_reference_photos(tmp_path, table)

    reasons = [skipped.reason for skipped in result.skipped if "photo table" in skipped.reason]
    assert any("file not found" in reason for reason in reasons)
    assert any("is invalid" in reason for reason in reasons)
    assert any("not a supported image type" in reason for reason in reasons)
    assert any("repeats the file of row 5" in reason for reason in reasons)


def test_photo_table_missing_column(tmp_path):
    table = tmp_path / "photos.csv"
    table.write_text("name,plant_id\na.jpg,x\n", encoding="utf-8")
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="no column file"):
        find_reference_photos(tmp_path, table)


@pytest.fixture(scope="module")
def two_photo_folder(tmp_path_factory, sample_dir) -> Path:
    """Species '3' with two reference photos (by name) and species '15' with one."""
    folder = tmp_path_factory.mktemp("two-photos")
    photos = reference_photos(sample_dir)
    (folder / f"{REFERENCE_PREFIX}3.jpg").write_bytes(photos["3"].read_bytes())
    (folder / f"{REFERENCE_PREFIX}3__2.jpg").write_bytes((sample_dir / "queries" / "3_1.jpg").read_bytes())
    (folder / f"{REFERENCE_PREFIX}15.jpg").write_bytes(photos["15"].read_bytes())
    return folder


def test_prototype_averages_all_photos(two_photo_folder, tiny_model_dir):
    encoder = load_encoder(str(tiny_model_dir))
    (photo,) = [photo for photo in find_reference_photos(two_photo_folder).photos if photo.plant_id == "3"]
    result = build_prototypes([photo], encoder, DEFAULT_RECIPE, 2, seed=0, progress=False)

    views = [
        encode_views(path.read_bytes(), view_seed_key("3", position, path), encoder, DEFAULT_RECIPE, 2, 0, 32)
        for position, path in enumerate(photo.paths)
    ]
    expected = mean_embedding(np.concatenate(views))
    assert len(photo.paths) == 2
    np.testing.assert_allclose(result.prototypes[0], expected, atol=1e-6)


def test_bad_extra_photo_skipped(tmp_path, sample_dir, tiny_model_dir):
    (tmp_path / f"{REFERENCE_PREFIX}3.jpg").write_bytes(reference_photos(sample_dir)["3"].read_bytes())
    (tmp_path / f"{REFERENCE_PREFIX}3__2.jpg").write_bytes(b"broken")
    encoder = load_encoder(str(tiny_model_dir))
    result = build_prototypes(find_reference_photos(tmp_path).photos, encoder, DEFAULT_RECIPE, 1, seed=0, progress=False)

    assert result.plant_ids == ["3"]
    assert [skipped.path.name for skipped in result.skipped] == [f"{REFERENCE_PREFIX}3__2.jpg"]


def test_indexer_cli_multi_photo(two_photo_folder, tiny_model_dir, tmp_path):
    code = indexer_main([
        "--images", str(two_photo_folder), "--out", str(tmp_path / "index"), "--model", str(tiny_model_dir),
        "--augmentations", "1", "--no-progress",
    ])
    index = load_index(str(tmp_path / "index"))

    assert code == 0
    assert index.plant_ids == ("15", "3")


def test_indexer_hint_for_suffixed_id(tmp_path, sample_dir, tiny_model_dir, capsys):
    (tmp_path / f"{REFERENCE_PREFIX}x__2.jpg").write_bytes(reference_photos(sample_dir)["3"].read_bytes())
    (tmp_path / "species.csv").write_text("plant_id,scientific_name\nx__2,Rosa canina\n", encoding="utf-8")
    code = indexer_main([
        "--images", str(tmp_path), "--out", str(tmp_path / "index"), "--model", str(tiny_model_dir),
        "--csv", str(tmp_path / "species.csv"), "--augmentations", "1", "--no-progress",
    ])

    assert code == 1
    assert "--photos-csv" in capsys.readouterr().err
