"""The image decoder fuzzed with hypothesis: mutated real photos and random bytes.

Every input must give an RGB image or one of the decoder's typed errors, within one second
(the per-example deadline) and within a memory bound. The default budget is small, so the
suite stays fast. A longer run:

    FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz_imaging.py
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import tracemalloc
import zlib
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shared.errors import (
    CorruptImageError,
    EmptyImageError,
    ExtremeAspectRatioError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    UnsupportedFormatError,
)
from shared.imaging import DecodeLimits, decode_image

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "tests" / "data"

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
DEADLINE_MS = 1000

# The only exceptions that decode_image may raise.
TYPED_ERRORS = (
    EmptyImageError,
    NotAnImageError,
    CorruptImageError,
    UnsupportedFormatError,
    ImageTooSmallError,
    ExtremeAspectRatioError,
    ImageTooLargeError,
)

# A pixel limit well under the default, so the memory bound below is tight. Python-level
# allocations (numpy arrays for 16-bit and float images) stay under
# BYTES_PER_PIXEL * max_pixels, plus a fixed allowance for Pillow's Python objects.
FUZZ_LIMITS = DecodeLimits(max_pixels=2_000_000)
BYTES_PER_PIXEL = 32
FIXED_ALLOWANCE_BYTES = 8 * 1024 * 1024

# Values written over 2 and 4 bytes, where a header keeps widths, heights and chunk lengths.
EXTREME_VALUES = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=DEADLINE_MS,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# Seed inputs: real plant photos, small enough that each example decodes in milliseconds.


def shrunk_photo(path: Path, side: int = 96) -> Image.Image:
    with Image.open(path) as image:
        image.thumbnail((side, side))
        return image.convert("RGB")


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


@cache
def seed_inputs() -> tuple[tuple[str, bytes], ...]:
    """Return (name, bytes) of real photos: JPEG files as committed, plus small re-encodings."""
    photos = sorted((SAMPLE_DIR / "queries").glob("*.jpg")) + sorted((SAMPLE_DIR / "reference").glob("*.jpg"))
    seeds = [(photo.name, photo.read_bytes()) for photo in photos[:4]]

    image = shrunk_photo(photos[0])
    with_alpha = image.copy()
    with_alpha.putalpha(200)
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds += [
        ("small.jpg", encode(image, "JPEG", quality=80)),
        ("orientation-6.jpg", encode(image, "JPEG", exif=exif.tobytes())),
        ("progressive.jpg", encode(image, "JPEG", progressive=True)),
        ("cmyk.jpg", encode(image.convert("CMYK"), "JPEG")),
        ("rgba.png", encode(with_alpha, "PNG")),
        ("grey-16bit.png", encode(image.convert("L").convert("I;16"), "PNG")),
        ("palette.gif", encode(image.convert("P"), "GIF")),
        ("lossy.webp", encode(image, "WEBP", quality=70)),
        ("lossless.webp", encode(with_alpha, "WEBP", lossless=True)),
        ("tiled.tiff", encode(image, "TIFF", compression="tiff_deflate")),
        ("plain.bmp", encode(image, "BMP")),
    ]
    return tuple(seeds)


def seed_names() -> list[str]:
    return [name for name, _ in seed_inputs()]


def seed_bytes(name: str) -> bytes:
    return dict(seed_inputs())[name]


# Mutations.


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Apply 1 to 6 random edits: overwrites, header values, insertions, deletions, repeats, truncation."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not buffer:
            break
        # Headers sit in the first bytes, so half of the positions fall there.
        position = draw(st.one_of(st.integers(0, min(255, len(buffer) - 1)), st.integers(0, len(buffer) - 1)))
        edit = draw(st.sampled_from(("overwrite", "value16", "value32", "insert", "delete", "repeat", "truncate")))

        if edit == "overwrite":
            buffer[position] = draw(st.integers(0, 255))
        elif edit in ("value16", "value32"):
            width = 2 if edit == "value16" else 4
            value = draw(st.sampled_from(EXTREME_VALUES)) & ((1 << (8 * width)) - 1)
            byte_order = draw(st.sampled_from(("big", "little")))
            buffer[position : position + width] = value.to_bytes(width, byte_order)
        elif edit == "insert":
            buffer[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif edit == "delete":
            del buffer[position : position + draw(st.integers(1, 256))]
        elif edit == "repeat":
            chunk = bytes(buffer[position : position + draw(st.integers(1, 512))])
            buffer[position:position] = chunk * draw(st.integers(1, 8))
        else:
            del buffer[position:]
    return bytes(buffer)


def decode_checked(data: bytes, target_size: int | None = None) -> None:
    """Decode `data` and check the outcome and the Python memory peak of the decode."""
    tracemalloc.start()
    try:
        image = decode_image(data, FUZZ_LIMITS, target_size=target_size)
    except TYPED_ERRORS as error:
        assert error.message
        assert error.status in (400, 413, 415)
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        bound = BYTES_PER_PIXEL * FUZZ_LIMITS.max_pixels + 4 * len(data) + FIXED_ALLOWANCE_BYTES
        assert peak <= bound, f"decoding {len(data)} bytes peaked at {peak} traced bytes"

    assert image.mode == "RGB"
    assert image.width * image.height <= FUZZ_LIMITS.max_pixels


# Property tests. Pillow warns about corrupt EXIF data and damaged TIFF tags for many
# mutated inputs, which is expected here.

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL\\..*")


@pytest.mark.parametrize("name", seed_names())
def test_seed_decodes(name):
    image = decode_image(seed_bytes(name), FUZZ_LIMITS)
    assert image.mode == "RGB"


@pytest.mark.parametrize("target_size", [None, 224], ids=["full", "draft"])
@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_mutated_photos(target_size, data):
    name = data.draw(st.sampled_from(seed_names()), label="seed")
    decode_checked(data.draw(mutated(seed_bytes(name)), label="mutated"), target_size)


@FUZZ_SETTINGS
@given(st.binary(max_size=8192))
def test_fuzz_random_bytes(data):
    decode_checked(data)


@FUZZ_SETTINGS
@given(st.sampled_from(seed_names()), st.binary(max_size=4096))
def test_fuzz_real_header_random_body(name, body):
    header = seed_bytes(name)[:64]
    decode_checked(header + body)


# Header bombs: small files whose headers claim large images.


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int, bit_depth: int = 8, colour_type: int = 0, rows: int | None = None) -> bytes:
    """Return a PNG of `width` x `height` whose pixel data is zeros, compressed, for `rows` rows (all when None)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row_bytes = 1 + (width * channels * bit_depth + 7) // 8
    count = height if rows is None else rows
    compressor = zlib.compressobj(9)
    zero_row = bytes(row_bytes)
    pixel_data = b"".join(compressor.compress(zero_row) for _ in range(count)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixel_data) + png_chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    """Return a real JPEG whose SOF0 marker is rewritten to claim `width` x `height`."""
    data = bytearray(encode(shrunk_photo(sorted((SAMPLE_DIR / "queries").glob("*.jpg"))[0], 64), "JPEG"))
    marker = data.index(b"\xff\xc0")
    data[marker + 5 : marker + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bomb_inputs() -> dict[str, bytes]:
    return {
        "png-30000x30000": png_bomb(30_000, 30_000, bit_depth=1, rows=1),
        "png-rgba-1500x1500-complete": png_bomb(1_500, 1_500, colour_type=6),
        "png-16bit-1400x1400-complete": png_bomb(1_400, 1_400, bit_depth=16),
        "png-1400x1400-first-rows": png_bomb(1_400, 1_400, rows=10),
        "jpeg-claims-65535x65535": jpeg_with_size(65_535, 65_535),
        "jpeg-claims-1400x1400": jpeg_with_size(1_400, 1_400),
    }


@pytest.mark.parametrize("name", sorted(bomb_inputs()))
def test_header_bomb_bounded(name):
    decode_checked(bomb_inputs()[name])


def test_header_bomb_over_limit_413():
    with pytest.raises(ImageTooLargeError):
        decode_image(png_bomb(2_000, 1_001, rows=1), FUZZ_LIMITS)


# Native memory: Pillow allocates pixel buffers outside tracemalloc's view, so a child
# process decodes a corpus under an address space limit and reports its peak RSS.

CHILD_HEADROOM_BYTES = 1536 * 1024 * 1024
MAX_RSS_GROWTH_KIB = 1024 * 1024

CHILD_SCRIPT = """
import json, resource, sys
from pathlib import Path

from shared.errors import ImageError
from shared.imaging import decode_image

def vm_size_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

limit = vm_size_bytes() + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

outcomes = {}
for path in sorted(Path(sys.argv[1]).iterdir()):
    try:
        decode_image(path.read_bytes(), target_size=224 if path.name.startswith("draft-") else None)
        outcomes[path.name] = "ok"
    except ImageError as error:
        outcomes[path.name] = error.code
    except BaseException as error:
        outcomes[path.name] = "unexpected " + type(error).__name__ + ": " + str(error)[:200]

growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss
print(json.dumps({"outcomes": outcomes, "rss_growth_kib": growth}))
"""


def memory_corpus(folder: Path, count: int) -> None:
    """Write the bombs and `count` seeded random mutations of the seeds into `folder`."""
    rng = random.Random(1234)
    for name, data in bomb_inputs().items():
        (folder / f"bomb-{name}").write_bytes(data)

    seeds = list(seed_inputs())
    for number in range(count):
        name, data = seeds[number % len(seeds)]
        buffer = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(min(len(buffer), 256) if rng.random() < 0.5 else len(buffer))
            width = rng.choice((1, 2, 4))
            value = rng.choice(EXTREME_VALUES) if width > 1 else rng.randrange(256)
            buffer[position : position + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")
        prefix = "draft-" if number % 2 else ""
        (folder / f"{prefix}mutant-{number:05d}-{name}").write_bytes(bytes(buffer))


def test_native_memory_bounded(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    memory_corpus(corpus, count=max(EXAMPLES, 40))

    completed = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, str(corpus), str(CHILD_HEADROOM_BYTES)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    unexpected = {name: outcome for name, outcome in report["outcomes"].items() if outcome.startswith("unexpected")}
    assert unexpected == {}
    assert report["rss_growth_kib"] < MAX_RSS_GROWTH_KIB
