"""Tests of reference-photo augmentation, query views and augmentation recipes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from shared.augment import (
    DEFAULT_RECIPE,
    MAX_QUERY_VIEWS,
    RECIPES,
    AugmentationRecipe,
    get_recipe,
    query_views,
    reference_views,
)
from shared.errors import ConfigError
from tests.conftest import REPO_ROOT

# Rounding and clipping move the mean hue by less than this, but a hue jitter would
# move it further.
HUE_TOLERANCE_DEGREES = 2.0


@pytest.fixture(scope="module")
def textured() -> Image.Image:
    """A 240x320 RGB image of random 4-pixel blocks, so that every transform changes pixels."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(blocks, np.ones((4, 4, 1), dtype=np.uint8)))


@pytest.fixture(scope="module")
def magenta() -> Image.Image:
    """One strong hue (about 328 degrees) at brightness levels from 40 % to 100 %."""
    rng = np.random.default_rng(1)
    levels = np.kron(rng.uniform(0.4, 1.0, (80, 60, 1)), np.ones((4, 4, 1)))
    pixels = (np.array([210.0, 50.0, 130.0]) * levels).round().astype(np.uint8)
    return Image.fromarray(pixels)


def view_bytes(views: list[Image.Image]) -> list[bytes]:
    return [view.tobytes() for view in views]


def mean_hue(image: Image.Image) -> float:
    """Saturation-weighted circular mean of the hue, in degrees."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.float64)
    angle = hsv[..., 0] / 256 * 2 * np.pi
    weight = hsv[..., 1] / 255
    sine = (np.sin(angle) * weight).mean()
    cosine = (np.cos(angle) * weight).mean()
    return float(np.degrees(np.arctan2(sine, cosine)) % 360)


def hue_difference(first: float, second: float) -> float:
    return abs((first - second + 180) % 360 - 180)


# Reference views.


def test_reference_same_seed_identical(textured):
    first = reference_views(textured, DEFAULT_RECIPE, count=20, seed=7)
    second = reference_views(textured, DEFAULT_RECIPE, count=20, seed=7)
    assert view_bytes(first) == view_bytes(second)


def test_reference_different_seed_differs(textured):
    first = reference_views(textured, DEFAULT_RECIPE, count=5, seed=1)
    second = reference_views(textured, DEFAULT_RECIPE, count=5, seed=2)
    assert view_bytes(first)[1:] != view_bytes(second)[1:]


def test_reference_ignores_global_seed(textured):
    torch.manual_seed(1)
    first = reference_views(textured, DEFAULT_RECIPE, count=5, seed=3)
    torch.manual_seed(2)
    second = reference_views(textured, DEFAULT_RECIPE, count=5, seed=3)
    assert view_bytes(first) == view_bytes(second)


def test_reference_keeps_global_rng(textured):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    reference_views(textured, DEFAULT_RECIPE, count=3, seed=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_reference_original_first(textured):
    views = reference_views(textured, DEFAULT_RECIPE, count=3, seed=0)
    assert views[0].tobytes() == textured.tobytes()


def test_reference_count_honoured(textured):
    for count in (0, 1, 20):
        views = reference_views(textured, DEFAULT_RECIPE, count=count, seed=0)
        assert len(views) == count + 1


def test_reference_prefix_stable(textured):
    short = reference_views(textured, DEFAULT_RECIPE, count=3, seed=5)
    long = reference_views(textured, DEFAULT_RECIPE, count=6, seed=5)
    assert view_bytes(short) == view_bytes(long)[:4]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_reference_rgb_same_size(textured, name):
    views = reference_views(textured, RECIPES[name], count=6, seed=0)
    assert {view.mode for view in views} == {"RGB"}
    assert {view.size for view in views} == {textured.size}


@pytest.mark.parametrize("name", ["flip-rotate", "light-v1", "strong"])
def test_reference_views_change_image(textured, name):
    views = reference_views(textured, RECIPES[name], count=6, seed=0)
    changed = [view.tobytes() != textured.tobytes() for view in views[1:]]
    assert any(changed)


def test_reference_none_copies_original(textured):
    views = reference_views(textured, get_recipe("none"), count=4, seed=0)
    assert len(views) == 5
    assert set(view_bytes(views)) == {textured.tobytes()}


def test_reference_no_black_fill():
    white = Image.new("RGB", (240, 320), (255, 255, 255))
    views = reference_views(white, get_recipe("flip-rotate"), count=10, seed=0)
    darkest = min(int(np.asarray(view).min()) for view in views)
    assert darkest == 255


@pytest.mark.parametrize("name", ["light-v1", "strong"])
def test_reference_keeps_hue(magenta, name):
    original = mean_hue(magenta)
    for view in reference_views(magenta, RECIPES[name], count=20, seed=0):
        assert hue_difference(mean_hue(view), original) < HUE_TOLERANCE_DEGREES


def test_hue_metric_detects_shift(magenta):
    shifted = Image.fromarray(np.asarray(magenta)[..., [1, 2, 0]])
    assert hue_difference(mean_hue(shifted), mean_hue(magenta)) > 90


def test_reference_negative_count(textured):
    with pytest.raises(ConfigError):
        reference_views(textured, DEFAULT_RECIPE, count=-1, seed=0)


def test_reference_rejects_rgba(textured):
    with pytest.raises(ValueError):
        reference_views(textured.convert("RGBA"), DEFAULT_RECIPE, count=1, seed=0)


# Query views.


def test_query_deterministic(textured):
    first = query_views(textured, count=MAX_QUERY_VIEWS)
    second = query_views(textured, count=MAX_QUERY_VIEWS)
    assert view_bytes(first) == view_bytes(second)


def test_query_views_distinct(textured):
    views = query_views(textured, count=MAX_QUERY_VIEWS)
    assert len(set(view_bytes(views))) == MAX_QUERY_VIEWS


def test_query_original_first(textured):
    views = query_views(textured)
    assert views[0].tobytes() == textured.tobytes()


def test_query_second_is_mirror(textured):
    views = query_views(textured, count=2)
    mirrored = textured.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert views[1].tobytes() == mirrored.tobytes()


def test_query_count_honoured(textured):
    for count in (1, 2, 8, MAX_QUERY_VIEWS):
        assert len(query_views(textured, count=count)) == count


def test_query_rgb_same_size(textured):
    views = query_views(textured, count=MAX_QUERY_VIEWS)
    assert {view.mode for view in views} == {"RGB"}
    assert {view.size for view in views} == {textured.size}


def test_query_no_black_fill():
    white = Image.new("RGB", (240, 320), (255, 255, 255))
    views = query_views(white, count=MAX_QUERY_VIEWS)
    darkest = min(int(np.asarray(view).min()) for view in views)
    assert darkest == 255


def test_query_keeps_hue(magenta):
    original = mean_hue(magenta)
    for view in query_views(magenta, count=MAX_QUERY_VIEWS):
        assert hue_difference(mean_hue(view), original) < HUE_TOLERANCE_DEGREES


@pytest.mark.parametrize("count", [0, -1, MAX_QUERY_VIEWS + 1, 2.0, True])
def test_query_bad_count(textured, count):
    with pytest.raises(ConfigError):
        query_views(textured, count=count)


def test_query_without_torch():
    script = (
        "import sys\n"
        "from PIL import Image\n"
        "from shared.augment import query_views\n"
        "views = query_views(Image.new('RGB', (64, 48), (10, 200, 30)), count=16)\n"
        "assert len(views) == 16\n"
        "print('torch' in sys.modules)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "False"


# Recipes.


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_round_trip(name):
    recipe = RECIPES[name]
    restored = AugmentationRecipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert restored == recipe


def test_recipe_names_match_keys():
    for name, recipe in RECIPES.items():
        assert recipe.name == name


def test_default_recipe_values():
    assert DEFAULT_RECIPE.to_dict() == {
        "name": "light-v1",
        "hflip_p": 0.5,
        "vflip_p": 0.0,
        "rotation_degrees": 10.0,
        "crop_scale": [0.85, 1.0],
        "crop_ratio": [0.9, 1.1],
        "brightness": 0.1,
        "contrast": 0.1,
    }


def test_get_recipe_unknown_lists_names():
    with pytest.raises(ConfigError) as caught:
        get_recipe("heavy")
    for name in RECIPES:
        assert name in caught.value.message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hflip_p", 1.5),
        ("vflip_p", -0.1),
        ("rotation_degrees", 400),
        ("rotation_degrees", float("nan")),
        ("brightness", -0.1),
        ("contrast", "0.1"),
        ("crop_scale", [0.9, 0.5]),
        ("crop_scale", [0.5, 1.2]),
        ("crop_scale", [0.0, 1.0]),
        ("crop_ratio", [1.0]),
        ("hflip_p", True),
        ("name", ""),
    ],
)
def test_recipe_bad_value_named(key, value):
    data = DEFAULT_RECIPE.to_dict()
    data[key] = value
    with pytest.raises(ConfigError) as caught:
        AugmentationRecipe.from_dict(data)
    assert key in caught.value.message


def test_recipe_unknown_key_named():
    data = DEFAULT_RECIPE.to_dict()
    data["hue"] = 0.1
    with pytest.raises(ConfigError) as caught:
        AugmentationRecipe.from_dict(data)
    assert "hue" in caught.value.message


def test_recipe_missing_key_named():
    data = DEFAULT_RECIPE.to_dict()
    del data["contrast"]
    with pytest.raises(ConfigError) as caught:
        AugmentationRecipe.from_dict(data)
    assert "contrast" in caught.value.message
