"""The development-only proxy encoder (ImageNet EfficientNet-Lite0) behind the ImageEncoder interface."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from indexer.cli import main as indexer_main
from indexer.encoders import load_model
from shared.errors import ModelLoadError
from shared.imaging import decode_image
from shared.index_store import load_index

PROXY = "proxy:efficientnet-lite0"


@pytest.fixture(scope="module")
def encoder():
    # The indexer loads with device "auto", so the same key reuses this load.
    return load_model(PROXY, device="auto")


@pytest.fixture(scope="module")
def photos(sample_dir) -> list[Image.Image]:
    paths = sorted((sample_dir / "reference").glob("*.jpg"))[:3]
    return [decode_image(path.read_bytes()) for path in paths]


def test_attributes(encoder) -> None:
    assert encoder.model_id == PROXY
    assert encoder.dimension == 1280
    assert encoder.is_test_model is False
    assert encoder.preprocess.mean == (0.485, 0.456, 0.406)


def test_unit_embeddings(encoder, photos) -> None:
    embeddings = encoder.encode(photos)
    assert embeddings.shape == (3, 1280)
    assert embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_deterministic(encoder, photos) -> None:
    assert np.array_equal(encoder.encode(photos[:1]), encoder.encode(photos[:1]))


def test_mirror_closer_than_other_species(encoder, photos) -> None:
    """Real features: a mirrored photo stays closer to itself than another species' photo."""
    original, mirrored, other = encoder.encode([photos[0], ImageOps.mirror(photos[0]), photos[1]])
    assert float(original @ mirrored) > float(original @ other)


def test_unknown_proxy_name() -> None:
    with pytest.raises(ModelLoadError, match="unknown proxy encoder"):
        load_model("proxy:resnet50")


def test_indexer_accepts_proxy(encoder, sample_dir, tmp_path) -> None:
    code = indexer_main([
        "--images", str(sample_dir / "reference"), "--out", str(tmp_path), "--model", PROXY,
        "--augmentations", "0", "--no-progress",
    ])
    index = load_index(tmp_path)

    assert code == 0
    assert index.model_id == PROXY
    assert index.dimension == 1280
