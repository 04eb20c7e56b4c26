"""Reference thumbnails: written by the indexer and its merge, served by GET /species/{plant_id}/thumbnail."""

from __future__ import annotations

import io
import json
import urllib.parse
from pathlib import Path

import httpx
import pytest
from PIL import Image

from handler.app import create_app
from handler.config import Settings
from indexer.cli import main as indexer_main
from indexer.shards import merge_indexes
from indexer.thumbnails import MAX_SIDE, make_thumbnail, write_thumbnails
from shared import storage
from shared.index_store import POINTER_FILE, load_index, write_index
from tests.handler_support import reference_photos, running_server, tiny_index

INDEX_BUCKET = "plant-id-thumbnail-index"


def build_index(sample_dir: Path, model_dir: Path, out: str, *extra: str) -> None:
    argv = [
        "--images", str(sample_dir / "reference"),
        "--csv", str(sample_dir / "species.csv"),
        "--out", out,
        "--model", str(model_dir),
        "--augmentations", "0",
        "--no-progress",
        *extra,
    ]
    assert indexer_main(argv) == 0


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return image.size


def photo_bytes(size: tuple[int, int], orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, (40, 120, 60))
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, format="JPEG")
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def local_index(tmp_path_factory, sample_dir, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("thumbnail-index")
    build_index(sample_dir, tiny_model_dir, str(out))
    return out


@pytest.fixture(scope="module")
def local_url(local_index, tiny_model_dir) -> str:
    settings = Settings(index_location=str(local_index), model=str(tiny_model_dir))
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(local_url):
    with httpx.Client(base_url=local_url, timeout=60) as http:
        yield http


# Making thumbnails.


def test_thumbnail_longest_side():
    data = make_thumbnail(photo_bytes((1200, 600)))

    assert jpeg_size(data) == (MAX_SIDE, MAX_SIDE // 2)


def test_thumbnail_never_enlarges():
    data = make_thumbnail(photo_bytes((100, 80)))

    assert jpeg_size(data) == (100, 80)


def test_thumbnail_upright():
    # EXIF orientation 6: the stored 400x200 pixels show as a 200x400 portrait.
    data = make_thumbnail(photo_bytes((400, 200), orientation=6))

    assert jpeg_size(data) == (128, 256)


def test_unreadable_photo_skipped(tmp_path, sample_dir):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    photos = {"3": sample_dir / "reference" / "plant_species_thumbnail_image_3.jpg", "bad": bad}

    written = write_thumbnails(photos, storage.parse_location(str(tmp_path / "version")))

    assert written == 1
    assert (tmp_path / "version" / "thumbnails" / "3.jpg").is_file()
    assert not (tmp_path / "version" / "thumbnails" / "bad.jpg").exists()


# The indexer writes them.


def test_indexer_writes_every_thumbnail(local_index, sample_dir):
    index = load_index(str(local_index))
    folder = Path(index.folder.path) / "thumbnails"

    assert sorted(path.stem for path in folder.glob("*.jpg")) == sorted(reference_photos(sample_dir))
    assert index.meta["thumbnails"]["max_side"] == MAX_SIDE
    assert max(jpeg_size((folder / "3.jpg").read_bytes())) == MAX_SIDE


def test_thumbnails_in_version_folder(local_index):
    index = load_index(str(local_index))

    assert Path(index.folder.path) == local_index / "versions" / index.version


def test_before_pointer_runs_first(tmp_path):
    import numpy as np

    seen = []

    def check(folder):
        seen.append((folder.path, (tmp_path / POINTER_FILE).exists()))

    version = write_index(str(tmp_path), np.eye(2, dtype=np.float32), ["a", "b"], {}, before_pointer=check)

    assert seen == [(str(tmp_path / "versions" / version), False)]
    assert (tmp_path / POINTER_FILE).exists()


def test_merge_copies_thumbnails(tmp_path, sample_dir, tiny_model_dir):
    build_index(sample_dir, tiny_model_dir, str(tmp_path / "part0"), "--shard", "0/2")
    build_index(sample_dir, tiny_model_dir, str(tmp_path / "part1"), "--shard", "1/2")

    merge_indexes([str(tmp_path / "part0"), str(tmp_path / "part1")], str(tmp_path / "merged"))

    merged = load_index(str(tmp_path / "merged"))
    folder = Path(merged.folder.path) / "thumbnails"
    part = load_index(str(tmp_path / "part1"))
    plant_id = part.plant_ids[0]
    assert sorted(path.stem for path in folder.glob("*.jpg")) == sorted(merged.plant_ids)
    assert merged.meta["thumbnails"]["folder"] == "thumbnails"
    assert (folder / f"{plant_id}.jpg").read_bytes() == (Path(part.folder.path) / "thumbnails" / f"{plant_id}.jpg").read_bytes()


# Served from a local index.


def test_local_thumbnail_bytes(client):
    response = client.get("/species/3/thumbnail")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert max(jpeg_size(response.content)) == MAX_SIDE


def test_local_cache_headers(client):
    response = client.get("/species/3/thumbnail")

    assert "max-age" in response.headers["cache-control"]
    assert response.headers["etag"]


def test_local_not_modified(client):
    etag = client.get("/species/3/thumbnail").headers["etag"]

    response = client.get("/species/3/thumbnail", headers={"If-None-Match": etag})

    assert response.status_code == 304


def test_unknown_species_404(client):
    response = client.get("/species/999/thumbnail")

    assert response.status_code == 404
    assert response.json()["error"] == "species_not_found"


@pytest.mark.parametrize("plant_id", ["a b", "-3", "x" * 201, "3.jpg", "%2E%2E"])
def test_invalid_plant_id_400(client, plant_id):
    response = client.get(f"/species/{urllib.parse.quote(plant_id)}/thumbnail")

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_plant_id"


def test_identify_gives_thumbnail_url(client, sample_dir):
    photo = sample_dir / "reference" / "plant_species_thumbnail_image_3.jpg"
    body = client.post("/identify", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
    first = body["matches"][0]

    assert first["thumbnail_url"] == f"/species/3/thumbnail?v={body['index_version']}"
    assert client.get(first["thumbnail_url"]).status_code == 200


def test_index_without_thumbnails_404(tmp_path, sample_dir, tiny_model_dir):
    index_dir = tiny_index(tiny_model_dir, sample_dir, tmp_path / "bare")
    settings = Settings(index_location=str(index_dir), model=str(tiny_model_dir))

    with running_server(create_app(settings)) as url:
        response = httpx.get(f"{url}/species/3/thumbnail", timeout=60)

    assert response.status_code == 404
    assert response.json()["error"] == "thumbnail_not_found"


def test_no_index_503(tmp_path, tiny_model_dir):
    settings = Settings(index_location=str(tmp_path / "missing"), model=str(tiny_model_dir))

    with running_server(create_app(settings)) as url:
        response = httpx.get(f"{url}/species/3/thumbnail", timeout=60)

    assert response.status_code == 503


# Served from an index in S3.


@pytest.fixture(scope="module")
def s3_index(s3_env, sample_dir, tiny_model_dir) -> str:
    s3_env.create_bucket(INDEX_BUCKET)
    location = f"s3://{INDEX_BUCKET}/index"
    build_index(sample_dir, tiny_model_dir, location)
    return location


@pytest.fixture(scope="module")
def s3_url(s3_index, tiny_model_dir) -> str:
    settings = Settings(index_location=s3_index, model=str(tiny_model_dir))
    with running_server(create_app(settings)) as url:
        yield url


def test_s3_thumbnails_written(s3_env, s3_index):
    index = load_index(s3_index)
    listed = s3_env.client().list_objects_v2(Bucket=INDEX_BUCKET, Prefix=f"{index.folder.path}/thumbnails/")
    keys = sorted(item["Key"].rsplit("/", 1)[1] for item in listed["Contents"])
    head = s3_env.client().head_object(Bucket=INDEX_BUCKET, Key=f"{index.folder.path}/thumbnails/3.jpg")

    assert keys == sorted(f"{plant_id}.jpg" for plant_id in index.plant_ids)
    assert head["ContentType"] == "image/jpeg"


def test_s3_redirect_presigned(s3_url, s3_index):
    index = load_index(s3_index)
    response = httpx.get(f"{s3_url}/species/3/thumbnail", timeout=60, follow_redirects=False)
    location = urllib.parse.urlsplit(response.headers["location"])
    query = urllib.parse.parse_qs(location.query)

    assert response.status_code == 307
    assert location.path == f"/{INDEX_BUCKET}/{index.folder.path}/thumbnails/3.jpg"
    assert query["X-Amz-Expires"] == ["300"]
    assert "X-Amz-Signature" in query
    assert "max-age" in response.headers["cache-control"]


def test_s3_redirect_serves_jpeg(s3_url):
    # The presigned URL works without credentials, as in a browser's <img>.
    response = httpx.get(f"{s3_url}/species/3/thumbnail", timeout=60, follow_redirects=True)

    assert [step.status_code for step in response.history] == [307]
    assert response.status_code == 200
    assert max(jpeg_size(response.content)) == MAX_SIDE


def test_s3_unknown_species_404(s3_url):
    response = httpx.get(f"{s3_url}/species/999/thumbnail", timeout=60, follow_redirects=False)

    assert response.status_code == 404
    assert json.loads(response.text)["error"] == "species_not_found"
