"""Encoder precisions: what "auto" picks, the int8 ONNX graph, accuracy against float32 and meta.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handler.config import PRECISIONS as SETTINGS_PRECISIONS
from handler.config import Settings
from indexer.cli import main as indexer_main
from shared.encoder import (
    MAX_AUTO_DEVIATION,
    ONNX_INT8_MODEL_FILE,
    PRECISIONS,
    cpu_has_native_bf16,
    load_encoder,
)
from shared.errors import ConfigError, ModelLoadError
from shared.index_store import load_index
from shared.onnx_export import export_encoder

# Largest 1 - cosine to float32 accepted here for the tiny model's embeddings.
TINY_TOLERANCE = MAX_AUTO_DEVIATION


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_encoder(str(tiny_model_dir), tmp_path_factory.mktemp("precision-onnx"))


@pytest.fixture(scope="module")
def photos(sample_dir: Path) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in sorted((sample_dir / "queries").glob("*.jpg"))[:6]]


def with_int8_record(source: Path, destination: Path, deviation: float | None) -> Path:
    """Copy an ONNX folder and set (or remove, for None) the recorded int8 deviation."""
    shutil.copytree(source, destination)
    info_path = destination / "encoder.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if deviation is None:
        info.pop("int8")
    else:
        info["int8"]["max_cosine_deviation"] = deviation
    info_path.write_text(json.dumps(info), encoding="utf-8")
    return destination


def max_deviation(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.max(1.0 - np.sum(reference * other, axis=1)))


# Export.


def test_export_writes_int8_graph(onnx_dir):
    assert (onnx_dir / ONNX_INT8_MODEL_FILE).is_file()


def test_export_records_int8_deviation(onnx_dir):
    record = json.loads((onnx_dir / "encoder.json").read_text(encoding="utf-8"))["int8"]
    assert record["file"] == ONNX_INT8_MODEL_FILE
    assert 0.0 <= record["max_cosine_deviation"] < MAX_AUTO_DEVIATION
    assert record["check_source"] == "synthetic"


def test_export_check_images(tiny_model_dir, sample_dir, tmp_path):
    out = export_encoder(str(tiny_model_dir), tmp_path / "onnx", check_images=sample_dir / "queries")
    record = json.loads((out / "encoder.json").read_text(encoding="utf-8"))["int8"]
    assert record["check_images"] == 12
    assert record["check_source"] == str(sample_dir / "queries")


def test_export_without_int8_removes_stale(onnx_dir, tiny_model_dir, tmp_path):
    folder = tmp_path / "onnx"
    shutil.copytree(onnx_dir, folder)
    export_encoder(str(tiny_model_dir), folder, int8=False)

    assert not (folder / ONNX_INT8_MODEL_FILE).exists()
    assert "int8" not in json.loads((folder / "encoder.json").read_text(encoding="utf-8"))


# Choice of precision.


def test_onnx_auto_picks_int8(onnx_dir):
    assert load_encoder(str(onnx_dir), device="cpu").precision == "int8"


def test_onnx_auto_rejects_inaccurate_int8(onnx_dir, tmp_path):
    folder = with_int8_record(onnx_dir, tmp_path / "onnx", MAX_AUTO_DEVIATION)
    assert load_encoder(str(folder), device="cpu").precision == "float32"


def test_onnx_auto_needs_recorded_deviation(onnx_dir, tmp_path):
    folder = with_int8_record(onnx_dir, tmp_path / "onnx", None)
    assert load_encoder(str(folder), device="cpu").precision == "float32"


def test_onnx_explicit_int8_without_graph(onnx_dir, tmp_path):
    folder = tmp_path / "onnx"
    shutil.copytree(onnx_dir, folder)
    (folder / ONNX_INT8_MODEL_FILE).unlink()
    with pytest.raises(ModelLoadError, match="shared.onnx_export"):
        load_encoder(str(folder), precision="int8")


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_onnx_rejects_half_precisions(onnx_dir, precision):
    with pytest.raises(ConfigError, match="not available with the onnx backend"):
        load_encoder(str(onnx_dir), precision=precision)


def test_torch_auto_on_cpu(tiny_model_dir):
    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert load_encoder(str(tiny_model_dir), device="cpu").precision == expected


def test_torch_float16_needs_cuda(tiny_model_dir):
    with pytest.raises(ConfigError, match="only on CUDA"):
        load_encoder(str(tiny_model_dir), device="cpu", precision="float16")


def test_invalid_precision(tiny_model_dir):
    with pytest.raises(ConfigError, match="invalid encoder precision"):
        load_encoder(str(tiny_model_dir), precision="float8")


def test_cache_keys_precision(tiny_model_dir):
    float32 = load_encoder(str(tiny_model_dir), precision="float32")
    int8 = load_encoder(str(tiny_model_dir), precision="int8")
    assert float32 is not int8
    assert load_encoder(str(tiny_model_dir), precision="int8") is int8


# Accuracy against float32 (tiny random model: trained weights may deviate more).


@pytest.mark.parametrize(("backend", "precision"), [("torch", "bfloat16"), ("torch", "int8"), ("onnx", "int8")])
def test_precision_close_to_float32(tiny_model_dir, onnx_dir, photos, backend, precision):
    reference = load_encoder(str(tiny_model_dir), precision="float32").encode(photos, batch_size=len(photos))
    folder = tiny_model_dir if backend == "torch" else onnx_dir
    encoder = load_encoder(str(folder), backend=backend, precision=precision)

    embeddings = encoder.encode(photos, batch_size=len(photos))
    assert encoder.precision == precision
    assert embeddings.dtype == np.float32
    assert max_deviation(reference, embeddings) < TINY_TOLERANCE


def test_int8_same_batch_same_output(onnx_dir, photos):
    encoder = load_encoder(str(onnx_dir), precision="int8")
    first = encoder.encode(photos, batch_size=len(photos))
    second = encoder.encode(photos, batch_size=len(photos))
    np.testing.assert_array_equal(first, second)


# Settings and meta.json.


def test_settings_precisions_match_encoder():
    assert SETTINGS_PRECISIONS == PRECISIONS


def test_settings_read_precision():
    settings = Settings.from_env({"PLANT_ID_INDEX": "/tmp/index", "PLANT_ID_PRECISION": "float32"})
    assert settings.precision == "float32"


def test_settings_default_precision():
    assert Settings.from_env({"PLANT_ID_INDEX": "/tmp/index"}).precision == "auto"


def test_settings_invalid_precision():
    with pytest.raises(ConfigError, match="PLANT_ID_PRECISION"):
        Settings.from_env({"PLANT_ID_INDEX": "/tmp/index", "PLANT_ID_PRECISION": "fp8"})


@pytest.mark.parametrize(("model", "precision", "expected"), [("torch", "float32", "float32"), ("onnx", "auto", "int8")])
def test_meta_records_precision(tiny_model_dir, onnx_dir, sample_dir, tmp_path, model, precision, expected):
    folder = tiny_model_dir if model == "torch" else onnx_dir
    images = tmp_path / "images"
    images.mkdir()
    for photo in sorted((sample_dir / "reference").glob("*.jpg"))[:2]:
        shutil.copy(photo, images / photo.name)

    code = indexer_main([
        "--images", str(images), "--out", str(tmp_path / "index"), "--model", str(folder),
        "--augmentations", "1", "--precision", precision, "--no-progress",
    ])

    assert code == 0
    assert load_index(str(tmp_path / "index")).meta["model"]["precision"] == expected
