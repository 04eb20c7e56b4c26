"""shared.preprocess against transformers' CLIPImageProcessor, on real photos and odd sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import ConfigError
from shared.preprocess import PreprocessConfig, shrink_for_views, to_pixel_values

# Pillow and torchvision round resized pixels differently, by one or two grey levels on
# the photos and sizes below. 0.05 in normalised units is about three grey levels.
MAX_ABS_DIFF = 0.05
MAX_MEAN_ABS_DIFF = 0.002


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def photos(plants_dir: Path) -> list[Image.Image]:
    paths = sorted((plants_dir / "reference").glob("*.jpg"))[:3] + sorted((plants_dir / "queries").glob("*.jpg"))[:3]
    assert len(paths) == 6
    return [Image.open(path).convert("RGB") for path in paths]


def reference_pixels(processor, image: Image.Image) -> np.ndarray:
    if image.mode != "RGB":
        return processor(images=[image], return_tensors="np")["pixel_values"]
    pixels = np.array(image)
    return processor(images=[pixels], return_tensors="np", input_data_format="channels_last")["pixel_values"]


def assert_close_to_processor(processor, image: Image.Image) -> None:
    expected = reference_pixels(processor, image)
    actual = to_pixel_values([image], PreprocessConfig())
    assert actual.shape == expected.shape
    difference = np.abs(actual - expected)
    assert difference.max() < MAX_ABS_DIFF, f"max abs diff {difference.max():.4f} for size {image.size}"
    assert difference.mean() < MAX_MEAN_ABS_DIFF, f"mean abs diff {difference.mean():.5f} for size {image.size}"


def test_real_photos_match_processor(processor, photos: list[Image.Image]) -> None:
    for photo in photos:
        assert_close_to_processor(processor, photo)


@pytest.mark.parametrize(
    "size",
    [(300, 400), (400, 300), (224, 224), (24, 32), (32, 24), (500, 223), (225, 224), (1000, 50)],
    ids=["portrait", "landscape", "exact", "tiny-portrait", "tiny-landscape", "short-height", "off-by-one", "strip"],
)
def test_odd_sizes_match_processor(processor, photos: list[Image.Image], size: tuple[int, int]) -> None:
    image = photos[0].resize(size, Image.Resampling.BILINEAR)
    assert_close_to_processor(processor, image)


def test_alpha_composited_on_white(processor) -> None:
    image = Image.new("RGBA", (120, 90), (200, 30, 60, 0))
    image.paste((10, 120, 40, 255), (30, 20, 90, 70))
    assert_close_to_processor(processor, image)


def test_grayscale_matches_processor(processor, photos: list[Image.Image]) -> None:
    assert_close_to_processor(processor, photos[1].convert("L"))


def test_batch_shape_and_dtype(photos: list[Image.Image]) -> None:
    pixels = to_pixel_values(photos[:4], PreprocessConfig())
    assert pixels.shape == (4, 3, 224, 224)
    assert pixels.dtype == np.float32


def test_empty_batch() -> None:
    pixels = to_pixel_values([], PreprocessConfig())
    assert pixels.shape == (0, 3, 224, 224)


def test_config_from_model_folder(tiny_model_dir: Path) -> None:
    assert PreprocessConfig.from_pretrained(tiny_model_dir) == PreprocessConfig()


def test_config_dict_round_trip() -> None:
    config = PreprocessConfig(shortest_edge=256, crop_size=240, resample="bilinear")
    assert PreprocessConfig.from_dict(config.to_dict()) == config


def test_config_reads_legacy_ints() -> None:
    config = PreprocessConfig.from_dict({"size": 224, "crop_size": 224, "resample": 3})
    assert config == PreprocessConfig()


def test_config_rejects_fixed_size() -> None:
    with pytest.raises(ConfigError, match="shortest_edge"):
        PreprocessConfig.from_dict({"size": {"height": 224, "width": 224}})


def test_config_rejects_disabled_normalize() -> None:
    with pytest.raises(ConfigError, match="do_normalize"):
        PreprocessConfig.from_dict({"do_normalize": False})


def test_config_missing_file_names_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        PreprocessConfig.from_pretrained(tmp_path)


def test_shrink_large_image() -> None:
    image = Image.new("RGB", (3000, 2000), (10, 200, 30))
    shrunk = shrink_for_views(image, PreprocessConfig())
    assert min(shrunk.size) == 448
    assert shrunk.size[0] == 672


def test_shrink_keeps_small_image() -> None:
    image = Image.new("RGB", (640, 448), (10, 200, 30))
    assert shrink_for_views(image, PreprocessConfig()) is image
