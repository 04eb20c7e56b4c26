"""Tests for shared.imaging.decode_image: every fault case image, the limits and fuzzed bytes."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, features

from shared.errors import (
    CorruptImageError,
    EmptyImageError,
    ExtremeAspectRatioError,
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    UnsupportedFormatError,
)
from shared.imaging import DEFAULT_LIMITS, DecodeLimits, decode_image

AVIF_SUPPORTED = features.check_module("avif")


class Expected(NamedTuple):
    status: int
    error: type[ImageError] | None


OK = Expected(200, None)

# The outcome of every file in the fault cases images folder. A file that is missing
# from this table fails test_every_case_has_expectation.
CASES: dict[str, Expected] = {
    "control_rgb.jpg": OK,
    "cmyk.jpg": OK,
    "grayscale_8bit.png": OK,
    "grayscale.jpg": OK,
    "grayscale_16bit.png": OK,
    "rgba.png": OK,
    "la_mode.png": OK,
    "palette_transparent.png": OK,
    "exif_rotated.jpg": OK,
    "exif_orientation_3.jpg": OK,
    "exif_orientation_invalid_9.jpg": OK,
    "truncated.jpg": Expected(400, CorruptImageError),
    "truncated.png": Expected(400, CorruptImageError),
    "header_only.jpg": Expected(400, CorruptImageError),
    "zero_bytes.jpg": Expected(400, EmptyImageError),
    "not_an_image.jpg": Expected(400, NotAnImageError),
    "svg_as_jpg.jpg": Expected(415, UnsupportedFormatError),
    "jpeg_named.png": OK,
    "heic_stub.heic": Expected(415, UnsupportedFormatError),
    "heic_stub_named.jpg": Expected(415, UnsupportedFormatError),
    "sample.avif": OK if AVIF_SUPPORTED else Expected(415, UnsupportedFormatError),
    "animated.gif": OK,
    "animated.webp": OK,
    "tiny_1x1.png": Expected(400, ImageTooSmallError),
    "tiny_3x5.png": Expected(400, ImageTooSmallError),
    # The minimum side check runs before the aspect ratio check, so a 1 px wide
    # image is reported as too small.
    "extreme_aspect_1x4000.png": Expected(400, ImageTooSmallError),
    "huge_dimensions.png": Expected(413, ImageTooLargeError),
    "plant_species_thumbnail_image_ 7 é.jpg": OK,
}


# Helpers.


def read_case(cases_dir: Path, name: str) -> bytes:
    return (cases_dir / "images" / name).read_bytes()


def decode_case(cases_dir: Path, name: str) -> np.ndarray:
    """Decode a case image and return its pixels as int32 [H, W, 3]."""
    return np.asarray(decode_image(read_case(cases_dir, name))).astype(np.int32)


def decode_error(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> ImageError:
    with pytest.raises(ImageError) as raised:
        decode_image(data, limits)
    return raised.value


def encode(image: Image.Image, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """Build a PNG whose header claims width x height but whose pixel data is empty."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def block_mean(pixels: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    return pixels[rows, cols].reshape(-1, 3).mean(axis=0)


def assert_red_top_left(pixels: np.ndarray) -> None:
    red, green, blue = block_mean(pixels, slice(5, 35), slice(5, 35))
    assert red > 180
    assert green < 80
    assert blue < 80


def assert_yellow_bottom_right(pixels: np.ndarray) -> None:
    red, green, blue = block_mean(pixels, slice(-35, -5), slice(-35, -5))
    assert red > 180
    assert green > 180
    assert blue < 80


def mean_abs_diff(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first - second).mean())


def alpha_of_case(cases_dir: Path, name: str) -> np.ndarray:
    """Read the alpha channel of a case image straight from Pillow, for comparison."""
    with Image.open(cases_dir / "images" / name) as image:
        return np.asarray(image.convert("RGBA").getchannel("A"))


# Every case file.


def test_every_case_has_expectation(cases_dir: Path) -> None:
    files = {path.name for path in (cases_dir / "images").iterdir() if path.is_file()}
    untested = sorted(files - CASES.keys())
    assert untested == [], f"add these case files to CASES: {untested}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_outcome(cases_dir: Path, name: str) -> None:
    expected = CASES[name]
    data = read_case(cases_dir, name)

    if expected.error is None:
        image = decode_image(data)
        assert image.mode == "RGB"
        assert image.size == (240, 320)
        return

    error = decode_error(data)
    assert type(error) is expected.error
    assert error.status == expected.status


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("zero_bytes.jpg", "empty (0 bytes)"),
        ("not_an_image.jpg", "not an image"),
        ("truncated.jpg", "truncated or corrupt"),
        ("truncated.png", "truncated or corrupt"),
        ("header_only.jpg", "JPEG header"),
        ("svg_as_jpg.jpg", "SVG is not supported"),
        ("heic_stub.heic", "HEIC"),
        ("heic_stub_named.jpg", "HEIC"),
        ("tiny_1x1.png", "1x1 px, minimum side is 16 px"),
        ("tiny_3x5.png", "5x3 px"),
        ("extreme_aspect_1x4000.png", "1x4000 px"),
        # Decided from the header: the message carries the pixel count of 30000x30000.
        ("huge_dimensions.png", "900000000 pixels"),
    ],
)
def test_case_message(cases_dir: Path, name: str, phrase: str) -> None:
    error = decode_error(read_case(cases_dir, name))
    assert phrase in error.message


@pytest.mark.parametrize("name", ["heic_stub.heic", "svg_as_jpg.jpg", "not_an_image.jpg"])
def test_message_names_fix(cases_dir: Path, name: str) -> None:
    error = decode_error(read_case(cases_dir, name))
    assert "upload JPEG, PNG or WebP" in error.message


# Content checks after normalisation.


@pytest.mark.parametrize(
    "name", ["exif_rotated.jpg", "exif_orientation_3.jpg", "exif_orientation_invalid_9.jpg"]
)
def test_exif_orientation_upright(cases_dir: Path, name: str) -> None:
    pixels = decode_case(cases_dir, name)
    assert pixels.shape == (320, 240, 3)
    assert_red_top_left(pixels)
    assert_yellow_bottom_right(pixels)


def test_cmyk_close_to_control(cases_dir: Path) -> None:
    pixels = decode_case(cases_dir, "cmyk.jpg")
    control = decode_case(cases_dir, "control_rgb.jpg")
    assert_red_top_left(pixels)
    assert_yellow_bottom_right(pixels)
    assert mean_abs_diff(pixels, control) < 5


def test_grayscale_16bit_not_white(cases_dir: Path) -> None:
    pixels = decode_case(cases_dir, "grayscale_16bit.png")
    assert (pixels < 250).any()


def test_grayscale_16bit_matches_8bit(cases_dir: Path) -> None:
    sixteen_bit = decode_case(cases_dir, "grayscale_16bit.png")
    eight_bit = decode_case(cases_dir, "grayscale_8bit.png")
    assert mean_abs_diff(sixteen_bit, eight_bit) < 2


def test_rgba_has_no_magenta(cases_dir: Path) -> None:
    pixels = decode_case(cases_dir, "rgba.png")
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    magenta = (red > 200) & (green < 60) & (blue > 200)
    assert not magenta.any()


@pytest.mark.parametrize("name", ["rgba.png", "la_mode.png", "palette_transparent.png"])
def test_transparent_pixels_white(cases_dir: Path, name: str) -> None:
    pixels = decode_case(cases_dir, name)
    transparent = alpha_of_case(cases_dir, name) == 0
    assert transparent.any()
    assert (pixels[transparent] == 255).all()


def test_la_mode_bottom_half_white(cases_dir: Path) -> None:
    pixels = decode_case(cases_dir, "la_mode.png")
    assert (pixels[160:] == 255).all()
    assert (pixels[:160] < 250).any()


def test_palette_transparency_no_warning(cases_dir: Path) -> None:
    data = read_case(cases_dir, "palette_transparent.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_image(data)
    messages = [str(warning.message) for warning in caught]
    assert messages == []


@pytest.mark.parametrize("name", ["animated.gif", "animated.webp"])
def test_animated_uses_frame_zero(cases_dir: Path, name: str) -> None:
    pixels = decode_case(cases_dir, name)
    control = decode_case(cases_dir, "control_rgb.jpg")
    assert_yellow_bottom_right(pixels)
    assert mean_abs_diff(pixels, control) < 5


def test_jpeg_named_png_matches_control(cases_dir: Path) -> None:
    pixels = decode_case(cases_dir, "jpeg_named.png")
    control = decode_case(cases_dir, "control_rgb.jpg")
    assert np.array_equal(pixels, control)


def test_avif_follows_pillow_support(cases_dir: Path) -> None:
    data = read_case(cases_dir, "sample.avif")
    if not AVIF_SUPPORTED:
        error = decode_error(data)
        assert error.status == 415
        assert "AVIF" in error.message
        return

    pixels = np.asarray(decode_image(data)).astype(np.int32)
    assert_red_top_left(pixels)
    assert_yellow_bottom_right(pixels)


def test_result_detached_from_file(cases_dir: Path) -> None:
    image = decode_image(read_case(cases_dir, "exif_orientation_invalid_9.jpg"))
    assert not isinstance(image, ImageFile.ImageFile)
    assert image.info == {}


# Limits.


def test_max_bytes_rejected(cases_dir: Path) -> None:
    data = read_case(cases_dir, "control_rgb.jpg")
    error = decode_error(data, DecodeLimits(max_bytes=len(data) - 1))
    assert isinstance(error, ImageTooLargeError)
    assert error.status == 413
    assert str(len(data)) in error.message


def test_max_bytes_boundary_accepted(cases_dir: Path) -> None:
    data = read_case(cases_dir, "control_rgb.jpg")
    image = decode_image(data, DecodeLimits(max_bytes=len(data)))
    assert image.mode == "RGB"


def test_max_pixels_boundary_accepted(cases_dir: Path) -> None:
    data = read_case(cases_dir, "control_rgb.jpg")
    image = decode_image(data, DecodeLimits(max_pixels=240 * 320))
    assert image.size == (240, 320)


def test_max_pixels_rejected(cases_dir: Path) -> None:
    data = read_case(cases_dir, "control_rgb.jpg")
    error = decode_error(data, DecodeLimits(max_pixels=240 * 320 - 1))
    assert isinstance(error, ImageTooLargeError)
    assert "240x320 (76800 pixels)" in error.message


def test_pixels_checked_before_decode() -> None:
    # The pixel data is empty, so decoding it would raise CorruptImageError: a 413
    # shows that the header size alone decided.
    error = decode_error(png_header_only(8000, 8000))
    assert isinstance(error, ImageTooLargeError)
    assert "8000x8000 (64000000 pixels)" in error.message


def test_pillow_bomb_warning_is_error() -> None:
    # 100 Mpx is over Pillow's default warning threshold (about 89 Mpx) but under its
    # error threshold, so only the warning filter in decode_image turns it into a 413.
    limits = DecodeLimits(max_pixels=200_000_000)
    error = decode_error(png_header_only(10_000, 10_000), limits)
    assert isinstance(error, ImageTooLargeError)
    assert "100000000 pixels" in error.message


def test_empty_pixel_data_corrupt() -> None:
    error = decode_error(png_header_only(64, 64))
    assert isinstance(error, CorruptImageError)


def test_big_allowed_image() -> None:
    data = encode(Image.new("L", (5000, 4000), 90), "PNG")
    image = decode_image(data)
    assert image.size == (5000, 4000)
    assert image.mode == "RGB"


def test_min_side_accepted() -> None:
    image = decode_image(encode(Image.new("RGB", (16, 16), (10, 200, 10)), "PNG"))
    assert image.size == (16, 16)


def test_below_min_side_rejected() -> None:
    error = decode_error(encode(Image.new("RGB", (15, 16)), "PNG"))
    assert isinstance(error, ImageTooSmallError)


def test_max_aspect_ratio_accepted() -> None:
    image = decode_image(encode(Image.new("RGB", (16, 320)), "PNG"))
    assert image.size == (16, 320)


def test_extreme_aspect_ratio_rejected() -> None:
    error = decode_error(encode(Image.new("RGB", (336, 16)), "PNG"))
    assert isinstance(error, ExtremeAspectRatioError)
    assert error.status == 400
    assert "21.0:1" in error.message


def test_limits_are_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULT_LIMITS.max_pixels = 1  # type: ignore[misc]


def test_pillow_globals_unchanged(cases_dir: Path) -> None:
    max_pixels = Image.MAX_IMAGE_PIXELS
    load_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    filters = list(warnings.filters)

    for name in sorted(CASES):
        try:
            decode_image(read_case(cases_dir, name))
        except ImageError:
            pass
    decode_error(png_header_only(10_000, 10_000), DecodeLimits(max_pixels=200_000_000))

    assert Image.MAX_IMAGE_PIXELS == max_pixels
    assert ImageFile.LOAD_TRUNCATED_IMAGES == load_truncated
    assert list(warnings.filters) == filters


def test_threads_keep_warning_filters(cases_dir: Path) -> None:
    filters = list(warnings.filters)
    payloads = [read_case(cases_dir, name) for name in sorted(CASES)] * 4

    def outcome(data: bytes) -> str:
        try:
            return decode_image(data).mode
        except ImageError as error:
            return error.code

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(outcome, payloads))

    assert results == [outcome(data) for data in payloads]
    assert list(warnings.filters) == filters


# Modes and formats that no case file covers.


@pytest.mark.parametrize(
    ("dtype", "image_format"),
    [("<u2", "PNG"), (">u2", "TIFF"), ("<i4", "TIFF")],
    ids=["I;16", "I;16B", "I"],
)
def test_high_bit_depth_scaled(dtype: str, image_format: str) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(dtype)
    pixels = np.asarray(decode_image(encode(Image.fromarray(ramp), image_format)))
    expected = (ramp.astype(np.int64) >> 8).astype(np.uint8)
    assert np.array_equal(pixels[..., 0], expected)
    assert np.array_equal(pixels[..., 2], expected)


def test_float_mode_clipped() -> None:
    values = np.linspace(-50, 300, 32 * 32, dtype=np.float32).reshape(32, 32)
    pixels = np.asarray(decode_image(encode(Image.fromarray(values), "TIFF")))
    assert pixels.min() == 0
    assert pixels.max() == 255


def test_cmyk_invalid_icc_profile() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    image = decode_image(encode(cmyk, "JPEG", icc_profile=b"not an ICC profile"))
    red, green, blue = np.asarray(image).reshape(-1, 3).mean(axis=0)
    assert red > 180
    assert green < 80
    assert blue < 80


def test_gif_transparent_index_white() -> None:
    palette_image = Image.new("P", (32, 32), 1)
    palette_image.putpalette([255, 0, 255, 0, 128, 0] + [0] * 762)
    palette_image.paste(0, (0, 0, 16, 32))
    pixels = np.asarray(decode_image(encode(palette_image, "GIF", transparency=0)))
    assert (pixels[:, :16] == 255).all()
    assert (pixels[:, 16:, 1] == 128).all()


def test_svg_without_prolog() -> None:
    error = decode_error(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    assert isinstance(error, UnsupportedFormatError)


def test_html_not_an_image() -> None:
    error = decode_error(b"<!DOCTYPE html><html><body>plant</body></html>")
    assert isinstance(error, NotAnImageError)


def test_broken_avif_container() -> None:
    data = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf" + b"\x00" * 64
    error = decode_error(data)
    expected = CorruptImageError if AVIF_SUPPORTED else UnsupportedFormatError
    assert type(error) is expected


# Property-based: any bytes give an RGB image or an ImageError, never another exception.
# Pillow warns "Corrupt EXIF data" for many fuzzed inputs, which is expected here.

SIGNATURES = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"BM",
    b"II*\x00",
    b"\x00\x00\x00\x18ftypheic",
    b"\x00\x00\x00\x1cftypavif",
]


@cache
def cached_case(cases_dir: Path, name: str) -> bytes:
    return read_case(cases_dir, name)


def assert_rgb_or_image_error(data: bytes) -> None:
    try:
        image = decode_image(data)
    except ImageError:
        return
    assert image.mode == "RGB"


def mutate(data: bytes, draw: st.DataObject) -> bytes:
    """Overwrite a few bytes, mostly in the first 1000 where the headers are, then maybe truncate."""
    buffer = bytearray(data)
    header_or_any = st.one_of(st.integers(0, min(999, len(data) - 1)), st.integers(0, len(data) - 1))
    edits = draw.draw(st.lists(st.tuples(header_or_any, st.integers(0, 255)), min_size=1, max_size=8))
    for position, value in edits:
        buffer[position] = value

    if draw.draw(st.booleans()):
        del buffer[draw.draw(st.integers(0, len(buffer))) :]
    return bytes(buffer)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@settings(max_examples=200, deadline=1000, database=None)
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data: bytes) -> None:
    assert_rgb_or_image_error(data)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@settings(max_examples=200, deadline=1000, database=None)
@given(st.sampled_from(SIGNATURES), st.binary(max_size=2048))
def test_fuzz_signature_prefix(signature: bytes, rest: bytes) -> None:
    assert_rgb_or_image_error(signature + rest)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@settings(max_examples=200, deadline=1000, database=None)
@given(st.data())
def test_fuzz_mutated_control(cases_dir: Path, draw: st.DataObject) -> None:
    assert_rgb_or_image_error(mutate(cached_case(cases_dir, "control_rgb.jpg"), draw))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@settings(max_examples=200, deadline=1000, database=None)
@given(
    st.sampled_from(
        ["rgba.png", "animated.gif", "animated.webp", "cmyk.jpg", "sample.avif", "exif_rotated.jpg"]
    ),
    st.data(),
)
def test_fuzz_mutated_formats(cases_dir: Path, name: str, draw: st.DataObject) -> None:
    assert_rgb_or_image_error(mutate(cached_case(cases_dir, name), draw))
