"""query_views(size=...): views made at the model's resize target match the full-size views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from shared.augment import MAX_QUERY_VIEWS, _mean_colour, _rotate_and_crop, _rotate_crop_resize, query_views
from shared.imaging import decode_image
from shared.preprocess import PreprocessConfig, resized_size, to_pixel_values

CONFIG = PreprocessConfig()


@pytest.fixture(scope="module", params=["3_1.jpg", "10_2.jpg"])
def photo(request: pytest.FixtureRequest, sample_dir: Path) -> Image.Image:
    return decode_image((sample_dir / "queries" / request.param).read_bytes())


def target(image: Image.Image) -> tuple[int, int]:
    return resized_size(image.width, image.height, CONFIG.shortest_edge)


def test_sized_views_count_and_size(photo):
    views = query_views(photo, MAX_QUERY_VIEWS, size=target(photo))
    assert len(views) == MAX_QUERY_VIEWS
    assert {view.size for view in views} == {target(photo)}


def test_sized_first_is_resized_original(photo):
    first = query_views(photo, 1, size=target(photo))[0]
    assert first.tobytes() == photo.resize(target(photo), Image.Resampling.BICUBIC).tobytes()


def test_sized_views_pair_with_mirror(photo):
    views = query_views(photo, 8, size=target(photo))
    for base, mirrored in zip(views[0::2], views[1::2]):
        assert ImageOps.mirror(base).tobytes() == mirrored.tobytes()


@pytest.mark.parametrize("degrees", [10.0, -10.0, 5.0])
def test_rotation_crop_exact(photo, degrees):
    expected = _rotate_and_crop(photo, degrees)
    actual = _rotate_crop_resize(photo, degrees, expected.size, _mean_colour(photo))
    assert actual.tobytes() == expected.tobytes()


def test_sized_pixel_values_close(photo):
    full = to_pixel_values(query_views(photo, MAX_QUERY_VIEWS), CONFIG)
    sized = to_pixel_values(query_views(photo, MAX_QUERY_VIEWS, size=target(photo)), CONFIG)

    # Normalised units: one 8-bit level is about 0.015.
    differences = np.abs(full - sized).mean(axis=(1, 2, 3))
    assert float(differences.max()) < 0.05


def test_sized_views_deterministic(photo):
    first = query_views(photo, MAX_QUERY_VIEWS, size=target(photo))
    second = query_views(photo, MAX_QUERY_VIEWS, size=target(photo))
    assert [view.tobytes() for view in first] == [view.tobytes() for view in second]


def test_sized_views_no_fill():
    white = Image.new("RGB", (240, 320), (255, 255, 255))
    views = query_views(white, MAX_QUERY_VIEWS, size=target(white))
    assert min(int(np.asarray(view).min()) for view in views) == 255


def test_small_image_upscaled():
    small = Image.new("RGB", (100, 150), (30, 120, 40))
    views = query_views(small, 8, size=target(small))
    assert {view.size for view in views} == {(224, 336)}
