"""Decode uploaded image bytes into one upright 8-bit RGB image, or raise a typed ImageError.

Every entry point (the inference function, the command line and the indexer) calls
decode_image, so each upload is validated and normalised the same way:

1. cheap checks on the raw bytes: size, empty data, HEIC/AVIF and SVG sniffing;
2. Image.open, which parses only the header, then the pixel count, minimum side and
   aspect ratio checks on the header size, before any pixel data is decoded;
3. load() of frame 0 only (animated GIF and WebP). With a target_size, a large JPEG is
   decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode, which scales in the DCT), so a
   12-megapixel photo costs a fraction of a full decode;
4. normalisation in one fixed order: EXIF orientation, palette transparency, alpha
   composited onto white, 16-bit samples scaled to 8 bits, CMYK through the embedded ICC
   profile, then RGB.

Pillow's process-global settings (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
are never changed. The pixel limit is enforced by DecodeLimits instead.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError, features

from shared.errors import (
    CorruptImageError,
    EmptyImageError,
    ExtremeAspectRatioError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    UnsupportedFormatError,
)

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS_HINT = "upload JPEG, PNG or WebP"


@dataclass(frozen=True)
class DecodeLimits:
    """Limits checked before any pixel data is decoded."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 16
    max_aspect_ratio: float = 20.0


DEFAULT_LIMITS = DecodeLimits()

# Errors that Pillow 13 raises on damaged data. OSError covers "image file is truncated"
# and decoder errors. SyntaxError, struct.error, ValueError, IndexError and EOFError come
# from plugins that parse broken headers or chunks. The AVIF plugin raises RuntimeError
# ("Failed to decode image") from both open and load.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    struct.error,
    ValueError,
    IndexError,
    EOFError,
    RuntimeError,
)

# ISO-BMFF brands (the `ftyp` box) of HEIF and AVIF files.
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS = frozenset({b"avif", b"avis"})

# Signatures of formats that Pillow decodes: a file that starts with one of these but
# cannot be opened is corrupt, not "not an image".
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_PILLOW_PIXEL_COUNT = re.compile(r"\((\d+) pixels\)")

# warnings.catch_warnings replaces the process-wide filter list while it is active
# (Python 3.11), so two threads that enter and leave it in overlapping order would restore
# each other's filters. The lock serialises only the short header parse inside it.
_WARNINGS_LOCK = threading.Lock()

_WHITE = (255, 255, 255, 255)

# Pillow formats whose decoder can scale in the DCT (draft mode). MPO is the multi-picture
# JPEG that many phone cameras write.
_DRAFT_FORMATS = ("JPEG", "MPO")


def decode_image(
    data: bytes, limits: DecodeLimits = DEFAULT_LIMITS, *, target_size: int | None = None
) -> Image.Image:
    """Decode image bytes into a fully loaded, upright RGB image detached from any file.

    Only frame 0 of an animated image is used. The returned image carries no metadata in
    `info` (EXIF orientation, ICC profile and transparency are applied to the pixels).

    `target_size` lets a JPEG whose shortest side is at least twice that many pixels decode
    at a reduced scale (1/2, 1/4 or 1/8) whose shortest side is still at least
    `target_size`. Callers that shrink the image anyway pass the size they shrink to. The
    limits apply to the full size in the file header. Other formats decode at full size.

    Raises an ImageError subclass: ImageTooLargeError (413) for too many bytes or pixels,
    UnsupportedFormatError (415) for HEIC, AVIF without Pillow support and SVG,
    EmptyImageError, NotAnImageError or CorruptImageError (400) for bad data, and
    ImageTooSmallError or ExtremeAspectRatioError (400) for unusable dimensions.
    """
    _check_raw_bytes(data, limits)

    with _open_image(data, limits) as image:
        _check_dimensions(image.size, limits)

        _load_first_frame(image, limits, target_size)

        # Every normalisation step returns a new image, so the result no longer
        # reads from the file that the with block closes.
        rgb = _normalise(image)

    rgb.info.clear()
    logger.debug("decoded %s %s %s into RGB %s", image.format, image.mode, image.size, rgb.size)
    return rgb


def _check_raw_bytes(data: bytes, limits: DecodeLimits) -> None:
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes; "
            "upload a smaller or more compressed photo"
        )

    if len(data) == 0:
        raise EmptyImageError(f"image is empty (0 bytes); {SUPPORTED_FORMATS_HINT}")

    if _is_svg(data):
        raise UnsupportedFormatError(f"SVG is not supported; {SUPPORTED_FORMATS_HINT}")


@contextmanager
def _open_image(data: bytes, limits: DecodeLimits) -> Iterator[ImageFile.ImageFile]:
    """Open the bytes with Pillow, which parses the header only, and close the file after use."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that, so the warning
            # becomes an error here, without changing the process-wide filters for good.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(_pillow_bomb_message(exc, limits)) from exc
    except UnidentifiedImageError as exc:
        raise _unidentified_error(data) from exc
    except _DECODE_ERRORS as exc:
        logger.debug("image header could not be parsed: %r", exc)
        raise CorruptImageError(
            f"image is truncated or corrupt ({exc}); upload the complete file again"
        ) from exc

    with image:
        yield image


def _unidentified_error(data: bytes) -> CorruptImageError | NotAnImageError | UnsupportedFormatError:
    """Choose the error for bytes that no Pillow plugin could open."""
    container = _sniff_heif_container(data)
    if container is not None and not _pillow_decodes(container):
        if container == "AVIF":
            return UnsupportedFormatError(
                f"AVIF is not supported by this server; {SUPPORTED_FORMATS_HINT}"
            )
        return UnsupportedFormatError(
            f"HEIC is not supported; {SUPPORTED_FORMATS_HINT} "
            "(on an iPhone, choose Settings > Camera > Formats > Most Compatible)"
        )

    known_format = container or _sniff_signature(data)
    if known_format is not None:
        return CorruptImageError(
            f"image is truncated or corrupt: the {known_format} header could not be read; "
            "upload the complete file again"
        )

    return NotAnImageError(
        f"not an image (no supported image format matches the data); {SUPPORTED_FORMATS_HINT}"
    )


def _check_dimensions(size: tuple[int, int], limits: DecodeLimits) -> None:
    width, height = size
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageTooLargeError(
            f"image dimensions {width}x{height} ({pixels} pixels) exceed the limit of "
            f"{limits.max_pixels} pixels; downscale the photo and upload it again"
        )

    if min(width, height) < max(limits.min_side, 1):
        raise ImageTooSmallError(
            f"image is too small: {width}x{height} px, minimum side is {limits.min_side} px; "
            "upload a larger photo"
        )

    aspect_ratio = max(width, height) / min(width, height)
    if aspect_ratio > limits.max_aspect_ratio:
        raise ExtremeAspectRatioError(
            f"image aspect ratio {aspect_ratio:.1f}:1 ({width}x{height} px) exceeds the "
            f"limit of {limits.max_aspect_ratio:g}:1; crop the photo closer to the plant"
        )


def _draft(image: ImageFile.ImageFile, target_size: int | None) -> bool:
    """Ask a JPEG decoder to scale down while the shortest side stays >= target_size; True when it will.

    Draft mode keeps the colour mode and the EXIF data, so the orientation still applies.
    """
    if target_size is None or image.format not in _DRAFT_FORMATS:
        return False
    if min(image.size) < 2 * target_size:
        return False

    full_size = image.size
    # draft picks the largest scale of 1/8, 1/4 and 1/2 that keeps both sides at least
    # as large as the requested size, so requesting a square keeps the shortest side.
    if image.draft("RGB", (target_size, target_size)) is None:
        return False
    logger.debug("decoding the %s %s at reduced size %s", image.format, full_size, image.size)
    return image.size != full_size


def _load_first_frame(image: ImageFile.ImageFile, limits: DecodeLimits, target_size: int | None = None) -> None:
    """Decode frame 0 only, which is the frame Image.open positions the file at."""
    try:
        image.seek(0)
        drafted = _draft(image, target_size)
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(_pillow_bomb_message(exc, limits)) from exc
    except _DECODE_ERRORS as exc:
        logger.debug("%s image could not be decoded: %r", image.format, exc)
        raise CorruptImageError(
            f"image is truncated or corrupt ({image.format}: {exc}); "
            "upload the complete file again"
        ) from exc

    # The checks above used the header size. They run again in case a plugin changed
    # the size while decoding frame 0, unless draft mode changed it on purpose: rounding
    # the scaled sides up can move the aspect ratio a little.
    if not drafted:
        _check_dimensions(image.size, limits)


def _normalise(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation, flatten transparency and convert any mode to 8-bit RGB.

    Returns a new image in every case, never the image passed in.
    """
    image = _apply_exif_orientation(image)

    # Palette images with a tRNS table (and L/RGB images with a transparent colour)
    # become RGBA first. Converting P straight to RGB would drop the transparency and
    # emit Pillow's "Palette images with Transparency expressed in bytes" warning.
    if "transparency" in image.info and image.mode in ("1", "L", "P", "RGB"):
        image = image.convert("RGBA")

    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = _composite_on_white(image)

    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8_bit(image)

    if image.mode == "CMYK":
        image = _cmyk_to_rgb(image)

    if image.mode != "RGB":
        image = _convert_to_rgb(image)

    return image


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate or flip the image as its EXIF Orientation tag specifies.

    Pillow ignores out-of-range values such as 9. EXIF data too damaged to parse is
    ignored too, because the pixels are still usable.
    """
    try:
        return ImageOps.exif_transpose(image)
    except (*_DECODE_ERRORS, KeyError, TypeError) as exc:
        logger.debug("EXIF orientation ignored: %r", exc)
        return image.copy()


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Flatten alpha onto a white background, so hidden RGB under transparent pixels is dropped."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_8_bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit and 32-bit greyscale samples to 8-bit mode L.

    I;16, I;16L, I;16B and I;16N are shifted right by 8 bits. Mode I (32-bit signed) has
    no fixed range. It is treated as 16-bit data: values are clipped to 0..65535, then
    shifted. Mode F is clipped to 0..255, because float images have no standard range.
    """
    samples = np.asarray(image)

    if image.mode == "F":
        eight_bit = np.clip(np.nan_to_num(samples), 0, 255).astype(np.uint8)
    else:
        # NOTE: mode I data with a range other than 0..65535 comes out too dark or clipped.
        eight_bit = (np.clip(samples.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)

    return Image.fromarray(eight_bit, mode="L")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """Convert CMYK to sRGB through the embedded ICC profile, or with Pillow's plain formula."""
    icc_profile = image.info.get("icc_profile")
    if icc_profile:
        try:
            source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            srgb_profile = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(
                image, source_profile, srgb_profile, outputMode="RGB"
            )
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            logger.debug("CMYK ICC profile ignored, using plain conversion: %r", exc)

    return image.convert("RGB")


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise UnsupportedFormatError(
            f"image colour mode {image.mode} is not supported; {SUPPORTED_FORMATS_HINT}"
        ) from exc


def _sniff_heif_container(data: bytes) -> str | None:
    """Return "AVIF" or "HEIC" when the data starts with an ISO-BMFF `ftyp` box of those brands."""
    if len(data) < 12 or data[4:8] != b"ftyp":
        return None

    box_size = int.from_bytes(data[0:4], "big")
    brands = {data[8:12]}
    # Compatible brands follow the major brand and the 4-byte minor version.
    for offset in range(16, min(box_size, len(data), 256) - 3, 4):
        brands.add(data[offset : offset + 4])

    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIC"
    return None


def _pillow_decodes(container: str) -> bool:
    """Tell whether this Pillow build has a decoder for AVIF, or a HEIF plugin such as pillow-heif."""
    if container == "AVIF":
        return features.check_module("avif")
    return "HEIF" in Image.OPEN


def _sniff_signature(data: bytes) -> str | None:
    for signature, format_name in _SIGNATURES:
        if data.startswith(signature):
            return format_name

    if data[0:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _is_svg(data: bytes) -> bool:
    """Tell SVG markup (plain text, optionally behind an XML prolog or comments) from binary data."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not head.startswith(b"<"):
        return False
    return b"<svg" in head


def _pillow_bomb_message(exc: Exception, limits: DecodeLimits) -> str:
    """Build the 413 message from Pillow's decompression bomb error, which has no width or height."""
    match = _PILLOW_PIXEL_COUNT.search(str(exc))
    pixels = f" ({match.group(1)} pixels)" if match else ""
    return (
        f"image dimensions{pixels} exceed the limit of {limits.max_pixels} pixels; "
        "downscale the photo and upload it again"
    )
