"""decode_image(target_size=...): large JPEGs decode at reduced size, upright, with the same embedding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.encoder import load_encoder
from shared.errors import ImageTooLargeError
from shared.imaging import DecodeLimits, decode_image
from shared.preprocess import PreprocessConfig, shrink_for_views, to_pixel_values, view_source_side

TARGET = view_source_side(PreprocessConfig())

# EXIF tag 0x0112 (Orientation); 6 means "rotate 90 degrees clockwise to display".
ORIENTATION_TAG = 0x0112


def jpeg_bytes(image: Image.Image, orientation: int | None = None, quality: int = 92) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def large_photo(sample_dir: Path) -> Image.Image:
    """A sample photo upscaled to 2000 pixels on its long side (4.5 times the target)."""
    photo = Image.open(sample_dir / "queries" / "3_1.jpg").convert("RGB")
    scale = 2000 / max(photo.size)
    return photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def marked() -> Image.Image:
    """A landscape image whose left third is red and the rest blue."""
    image = Image.new("RGB", (2400, 1800), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 800, 1800))
    return image


def test_large_jpeg_decodes_smaller(large_photo):
    image = decode_image(jpeg_bytes(large_photo), target_size=TARGET)
    assert min(image.size) >= TARGET
    assert min(image.size) < 2 * TARGET


def test_without_target_full_size(large_photo):
    assert decode_image(jpeg_bytes(large_photo)).size == large_photo.size


def test_aspect_ratio_kept(large_photo):
    image = decode_image(jpeg_bytes(large_photo), target_size=TARGET)
    assert image.width / image.height == pytest.approx(large_photo.width / large_photo.height, rel=0.01)


def test_small_jpeg_full_size(sample_dir):
    data = (sample_dir / "queries" / "3_1.jpg").read_bytes()
    assert decode_image(data, target_size=TARGET).size == decode_image(data).size


def test_png_full_size(large_photo):
    buffer = io.BytesIO()
    large_photo.save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), target_size=TARGET).size == large_photo.size


def test_limits_use_header_size(large_photo):
    pixels = large_photo.width * large_photo.height
    with pytest.raises(ImageTooLargeError):
        decode_image(jpeg_bytes(large_photo), DecodeLimits(max_pixels=pixels - 1), target_size=TARGET)


def test_pixel_values_close(large_photo):
    config = PreprocessConfig()
    data = jpeg_bytes(large_photo)
    full = to_pixel_values([shrink_for_views(decode_image(data), config)], config)
    drafted = to_pixel_values([shrink_for_views(decode_image(data, target_size=TARGET), config)], config)

    # Normalised units: one 8-bit level is about 0.015.
    assert float(np.abs(full - drafted).mean()) < 0.15


def test_embedding_close(large_photo, tiny_model_dir):
    config = PreprocessConfig()
    encoder = load_encoder(str(tiny_model_dir), precision="float32")
    data = jpeg_bytes(large_photo)
    full = encoder.encode([shrink_for_views(decode_image(data), config)])
    drafted = encoder.encode([shrink_for_views(decode_image(data, target_size=TARGET), config)])
    assert float(np.sum(full * drafted)) > 0.995


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_honoured(marked, orientation):
    data = jpeg_bytes(marked, orientation)
    full = decode_image(data)
    drafted = decode_image(data, target_size=TARGET)

    assert drafted.size != full.size
    assert (drafted.width > drafted.height) == (full.width > full.height)
    small = np.asarray(full.resize(drafted.size, Image.Resampling.BOX), dtype=np.int32)
    assert np.abs(small - np.asarray(drafted, dtype=np.int32)).mean() < 4


def test_orientation_6_is_portrait(marked):
    image = decode_image(jpeg_bytes(marked, 6), target_size=TARGET)
    red, _, blue = np.asarray(image, dtype=np.int32)[10, image.width // 2]
    assert image.height > image.width
    # Rotated clockwise for display, the red left third becomes the top third.
    assert red > 200
    assert blue < 50


def test_grayscale_jpeg_becomes_rgb():
    buffer = io.BytesIO()
    Image.new("L", (1600, 1200), 128).save(buffer, "JPEG")
    image = decode_image(buffer.getvalue(), target_size=TARGET)
    assert image.mode == "RGB"
    assert min(image.size) >= TARGET
