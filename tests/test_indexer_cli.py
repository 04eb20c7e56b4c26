"""The offline indexer end to end: real photos, the tiny CLIP model, local and S3 destinations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.build import photo_seed
from indexer.cli import main as indexer_main
from shared.augment import DEFAULT_RECIPE, reference_views
from shared.encoder import load_encoder, mean_embedding
from shared.imaging import decode_image
from shared.index_store import load_index
from shared.preprocess import shrink_for_views

AUGMENTATIONS = 4


def run_indexer(images: Path, out: str, model: Path, *extra: str) -> int:
    return indexer_main([
        "--images", str(images), "--out", out, "--model", str(model),
        "--augmentations", str(AUGMENTATIONS), "--no-progress", *extra,
    ])


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory, sample_dir, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("sample-index")
    code = run_indexer(sample_dir / "reference", str(out), tiny_model_dir, "--csv", str(sample_dir / "species.csv"))
    assert code == 0
    return out


def test_sample_index_has_every_species(sample_index, sample_dir):
    index = load_index(str(sample_index))
    photos = sorted((sample_dir / "reference").glob("*.jpg"))
    expected = {path.stem.rsplit("_", 1)[1] for path in photos}
    assert set(index.plant_ids) == expected
    assert index.count == len(photos)


def test_sample_index_records_settings(sample_index, tiny_model_dir):
    index = load_index(str(sample_index))
    assert index.meta["augmentation"]["count"] == AUGMENTATIONS
    assert index.meta["augmentation"]["seed"] == 0
    assert index.meta["augmentation"]["recipe"]["name"] == DEFAULT_RECIPE.name
    assert index.meta["dimension"] == 512
    assert index.meta["test_model"] is True
    assert index.meta["image_processor"]["crop_size"] == {"height": 224, "width": 224}


def test_sample_index_has_names(sample_index):
    index = load_index(str(sample_index))
    row = index.species[index.plant_ids.index("3")]
    assert row["scientific_name"] == "Celtis occidentalis"


def test_prototype_is_mean_of_views(sample_index, sample_dir, tiny_model_dir):
    index = load_index(str(sample_index))
    encoder = load_encoder(str(tiny_model_dir))
    plant_id = "10"
    photo = sample_dir / "reference" / f"plant_species_thumbnail_image_{plant_id}.jpg"

    image = shrink_for_views(decode_image(photo.read_bytes()), encoder.preprocess)
    views = reference_views(image, DEFAULT_RECIPE, AUGMENTATIONS, photo_seed(0, plant_id))
    embeddings = encoder.encode(views)
    expected = embeddings.mean(axis=0)
    expected /= np.linalg.norm(expected)

    stored = index.embeddings[index.plant_ids.index(plant_id)].astype(np.float32)
    assert len(views) == AUGMENTATIONS + 1
    assert np.allclose(stored, expected, atol=2e-3)
    assert np.allclose(mean_embedding(embeddings), expected, atol=1e-6)


def test_same_seed_same_bytes(tmp_path, sample_dir, tiny_model_dir):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("plant_species_thumbnail_image_3.jpg", "plant_species_thumbnail_image_20.jpg"):
        shutil.copy(sample_dir / "reference" / name, images / name)

    for run in ("a", "b", "c"):
        seed = "1" if run == "c" else "7"
        assert run_indexer(images, str(tmp_path / run), tiny_model_dir, "--seed", seed) == 0
    first, second, other_seed = (load_index(str(tmp_path / run)) for run in ("a", "b", "c"))

    assert first.embeddings.tobytes() == second.embeddings.tobytes()
    assert first.embeddings.tobytes() != other_seed.embeddings.tobytes()


def test_cases_folder_outcome(tmp_path, cases_dir, tiny_model_dir, capsys):
    folder = cases_dir / "indexer_folder"
    code = run_indexer(folder, str(tmp_path / "index"), tiny_model_dir, "--csv", str(folder / "plants.csv"))
    report = capsys.readouterr().err

    assert code == 0
    index = load_index(str(tmp_path / "index"))
    assert sorted(index.plant_ids) == ["007", "1", "2"]
    assert "plant_species_thumbnail_image_3.jpg" in report
    assert "plant_species_thumbnail_image_99.jpg" in report
    assert "plant_species_thumbnail_image_ 7 é.jpg" in report
    assert "plant_species_thumbnail_image_.jpg" in report
    assert "plant_species_thumbnail_image_2.jpeg" in report
    assert "'404'" in report
    assert ".DS_Store" not in report


def test_cases_folder_names_and_ids(tmp_path, cases_dir, tiny_model_dir):
    folder = cases_dir / "indexer_folder"
    run_indexer(folder, str(tmp_path / "index"), tiny_model_dir, "--csv", str(folder / "plants.csv"))
    index = load_index(str(tmp_path / "index"))
    names = {row["plant_id"]: row["scientific_name"] for row in index.species}
    assert names["007"] == "Sansevieria trifasciata"
    assert names["2"] == "Ficus lyrata"
    assert "7" not in names


def test_nothing_valid_exits_nonzero(tmp_path, cases_dir, tiny_model_dir, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(cases_dir / "images" / "truncated.jpg", images / "plant_species_thumbnail_image_5.jpg")
    (images / "plant_species_thumbnail_image_6.png").write_bytes(b"")

    code = run_indexer(images, str(tmp_path / "index"), tiny_model_dir)

    assert code == 1
    assert "no valid reference photo" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_missing_images_folder_reports(tmp_path, tiny_model_dir, capsys):
    code = run_indexer(tmp_path / "absent", str(tmp_path / "index"), tiny_model_dir)
    assert code == 2
    assert str(tmp_path / "absent") in capsys.readouterr().err


def test_negative_augmentations_rejected(tmp_path, sample_dir, tiny_model_dir, capsys):
    code = indexer_main([
        "--images", str(sample_dir / "reference"), "--out", str(tmp_path / "i"),
        "--model", str(tiny_model_dir), "--augmentations", "-1",
    ])
    assert code == 2
    assert "--augmentations" in capsys.readouterr().err


def test_s3_index_equals_local(s3_server, monkeypatch, tmp_path, sample_dir, tiny_model_dir, sample_index):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3_server.create_bucket("plant-index")

    code = run_indexer(
        sample_dir / "reference", "s3://plant-index/indexes/sample", tiny_model_dir,
        "--csv", str(sample_dir / "species.csv"),
    )
    assert code == 0

    remote = load_index("s3://plant-index/indexes/sample")
    local = load_index(str(sample_index))
    assert remote.plant_ids == local.plant_ids
    assert np.array_equal(remote.embeddings, local.embeddings)
    assert remote.species == local.species

    pointer = json.loads(
        s3_server.client().get_object(Bucket="plant-index", Key="indexes/sample/latest.json")["Body"].read()
    )
    assert pointer["version"] == remote.version
