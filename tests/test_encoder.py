"""The CLIP image encoder: torch and ONNX backends, caching and load errors, on the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.encoder import (
    DEFAULT_MODEL_ID,
    available_cpus,
    configured_threads,
    load_count,
    load_encoder,
)
from shared.errors import ConfigError, ModelLoadError
from shared.onnx_export import export_encoder
from shared.preprocess import PreprocessConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DIMENSION = 512


@pytest.fixture(scope="module")
def photos(plants_dir: Path) -> list[Image.Image]:
    paths = sorted((plants_dir / "reference").glob("*.jpg"))[:4] + sorted((plants_dir / "queries").glob("*.jpg"))[:3]
    assert len(paths) == 7
    return [Image.open(path).convert("RGB") for path in paths]


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_encoder(str(tiny_model_dir), tmp_path_factory.mktemp("tiny-onnx"))


@pytest.fixture(scope="module", params=["torch", "onnx"])
def encoder(request: pytest.FixtureRequest, tiny_model_dir: Path):
    # float32, because int8 activation scales depend on the whole batch (tests/test_precision.py).
    if request.param == "onnx":
        return load_encoder(str(request.getfixturevalue("onnx_dir")), precision="float32")
    return load_encoder(str(tiny_model_dir), precision="float32")


def inherited_environment() -> dict[str, str]:
    """Return this process's environment without Hugging Face settings that other tests may have set."""
    return {key: value for key, value in os.environ.items() if not key.startswith("HF_")}


def run_python(code: str, env: dict[str, str] | None = None) -> dict:
    """Run code in a fresh interpreter at the repository root and parse its last output line as JSON."""
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env={**inherited_environment(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_backend_selected(encoder, request: pytest.FixtureRequest) -> None:
    assert encoder.backend == request.node.callspec.params["encoder"]


def test_output_shape(encoder, photos: list[Image.Image]) -> None:
    assert encoder.encode(photos).shape == (len(photos), DIMENSION)


def test_output_dtype(encoder, photos: list[Image.Image]) -> None:
    assert encoder.encode(photos[:2]).dtype == np.float32


def test_output_unit_norm(encoder, photos: list[Image.Image]) -> None:
    norms = np.linalg.norm(encoder.encode(photos), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_batching_matches_single(encoder, photos: list[Image.Image]) -> None:
    batched = encoder.encode(photos, batch_size=3)
    single = np.concatenate([encoder.encode([photo], batch_size=1) for photo in photos])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_empty_input(encoder) -> None:
    assert encoder.encode([]).shape == (0, DIMENSION)


def test_invalid_batch_size(encoder, photos: list[Image.Image]) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(photos[:1], batch_size=0)


def test_attributes(encoder) -> None:
    assert encoder.dimension == DIMENSION
    assert encoder.device == "cpu"
    assert encoder.revision is None
    assert encoder.preprocess == PreprocessConfig()


def test_tiny_is_test_model(encoder) -> None:
    assert encoder.is_test_model is True


def test_onnx_matches_torch(tiny_model_dir: Path, onnx_dir: Path, photos: list[Image.Image]) -> None:
    torch_embeddings = load_encoder(str(tiny_model_dir), backend="torch", precision="float32").encode(photos)
    onnx_embeddings = load_encoder(str(onnx_dir), backend="onnx", precision="float32").encode(photos)
    cosines = np.sum(torch_embeddings * onnx_embeddings, axis=1)
    assert cosines.min() > 0.9999


def test_onnx_keeps_model_id(tiny_model_dir: Path, onnx_dir: Path) -> None:
    assert load_encoder(str(onnx_dir)).model_id == str(tiny_model_dir)


def test_export_writes_info(tiny_model_dir: Path, onnx_dir: Path) -> None:
    info = json.loads((onnx_dir / "encoder.json").read_text(encoding="utf-8"))
    assert info["model_id"] == str(tiny_model_dir)
    assert info["exported_from"] == str(tiny_model_dir)
    assert info["dimension"] == DIMENSION
    assert info["revision"] is None
    assert info["test_model"] is True


def test_export_writes_preprocessor(onnx_dir: Path) -> None:
    assert PreprocessConfig.from_pretrained(onnx_dir) == PreprocessConfig()


def test_cache_returns_same_object(tiny_model_dir: Path) -> None:
    first = load_encoder(str(tiny_model_dir))
    assert load_encoder(str(tiny_model_dir)) is first


def test_cache_resolves_auto(tiny_model_dir: Path) -> None:
    first = load_encoder(str(tiny_model_dir))
    assert load_encoder(str(tiny_model_dir), device="cpu", backend="torch") is first


def test_cache_counts_one_load(tiny_model_dir: Path) -> None:
    load_encoder(str(tiny_model_dir))
    before = load_count()
    load_encoder(str(tiny_model_dir))
    load_encoder(str(tiny_model_dir) + "/")
    assert load_count() == before


def test_missing_folder_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=str(missing)):
        load_encoder(str(missing))


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json") as raised:
        load_encoder(str(tmp_path))
    assert str(tmp_path) in raised.value.message


def test_onnx_backend_needs_export(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="shared.onnx_export"):
        load_encoder(str(tiny_model_dir), backend="onnx")


def test_invalid_backend(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="backend"):
        load_encoder(str(tiny_model_dir), backend="tensorflow")


def test_invalid_device(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="device"):
        load_encoder(str(tiny_model_dir), device="tpu")


def test_cuda_unavailable(tiny_model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelLoadError, match="cuda"):
        load_encoder(str(tiny_model_dir), device="cuda")


def test_missing_weights_rejected(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "no-projection"
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(folder / "model.safetensors")
    del weights["visual_projection.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ModelLoadError, match="visual_projection"):
        load_encoder(str(folder))


def test_unmarked_model_not_test(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "unmarked"
    shutil.copytree(tiny_model_dir, folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    del config["plant_id_test_model"]
    config_path.write_text(json.dumps(config), encoding="utf-8")

    assert load_encoder(str(folder)).is_test_model is False


UNCACHED_HUB_ID = "openai/clip-vit-large-patch14"
CACHED_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def offline_hub(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Load one cached and one uncached hub id in a fresh interpreter with the hub offline.

    The cache contains the tiny model under DEFAULT_MODEL_ID, laid out as huggingface_hub
    stores downloads. One subprocess serves both cases because importing transformers
    takes seconds.
    """
    hf_home = tmp_path_factory.mktemp("hf-home")
    repository = hf_home / "hub" / ("models--" + DEFAULT_MODEL_ID.replace("/", "--"))
    shutil.copytree(tiny_model_dir, repository / "snapshots" / CACHED_COMMIT)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(CACHED_COMMIT, encoding="utf-8")

    return run_python(
        f"""
        import json
        from shared.encoder import load_encoder
        from shared.errors import ModelLoadError
        result = {{}}
        encoder = load_encoder({DEFAULT_MODEL_ID!r})
        result["cached"] = {{
            "model_id": encoder.model_id,
            "revision": encoder.revision,
            "test_model": encoder.is_test_model,
            "dimension": encoder.dimension,
        }}
        try:
            load_encoder({UNCACHED_HUB_ID!r})
        except ModelLoadError as error:
            result["uncached"] = {{"code": error.code, "message": error.message}}
        else:
            result["uncached"] = {{"code": None, "message": ""}}
        print(json.dumps(result))
        """,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)},
    )


def test_hub_offline_message(offline_hub: dict) -> None:
    uncached = offline_hub["uncached"]
    assert uncached["code"] == "model_unavailable"
    assert UNCACHED_HUB_ID in uncached["message"]
    assert "--model" in uncached["message"]
    assert "HF_HOME" in uncached["message"]


def test_hub_cache_loads_offline(offline_hub: dict) -> None:
    cached = offline_hub["cached"]
    assert cached["model_id"] == DEFAULT_MODEL_ID
    assert cached["revision"] == CACHED_COMMIT
    assert cached["test_model"] is True
    assert cached["dimension"] == DIMENSION


def test_onnx_path_skips_torch(onnx_dir: Path, photos: list[Image.Image], tmp_path: Path) -> None:
    photo_path = tmp_path / "photo.png"
    photos[0].save(photo_path)
    result = run_python(
        f"""
        import json, sys
        from PIL import Image
        from shared.encoder import load_encoder
        encoder = load_encoder({str(onnx_dir)!r})
        embeddings = encoder.encode([Image.open({str(photo_path)!r}).convert("RGB")])
        print(json.dumps({{
            "backend": encoder.backend,
            "shape": list(embeddings.shape),
            "torch": "torch" in sys.modules,
            "transformers": "transformers" in sys.modules,
        }}))
        """
    )
    assert result["backend"] == "onnx"
    assert result["shape"] == [1, DIMENSION]
    assert result["torch"] is False
    assert result["transformers"] is False


@pytest.mark.parametrize(
    ("plant_id_threads", "omp_threads", "expected"),
    [
        ("1", None, 1),
        (None, "1", 1),
        ("1", "2", 1),
        ("abc", None, None),
        ("0", None, None),
        ("-3", "1", 1),
        (None, None, None),
    ],
)
def test_thread_setting(
    monkeypatch: pytest.MonkeyPatch, plant_id_threads: str | None, omp_threads: str | None, expected: int | None
) -> None:
    for name, value in (("PLANT_ID_THREADS", plant_id_threads), ("OMP_NUM_THREADS", omp_threads)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert configured_threads() == expected


def test_threads_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANT_ID_THREADS", "100000")
    assert configured_threads() == available_cpus()
