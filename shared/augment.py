"""Augmentation of reference photos (indexer) and test-time augmentation of queries.

The indexer builds each species' prototype from the reference photo plus seeded random
views made by torchvision, and records the AugmentationRecipe it used in the index
metadata. The query path averages a few fixed Pillow views and never imports torch.

Hue and saturation are never jittered, because flower and leaf colour often identifies
the species. Brightness and contrast change all three channels alike and keep the hue.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from PIL import Image, ImageOps, ImageStat

from shared.errors import ConfigError

logger = logging.getLogger(__name__)

MAX_QUERY_VIEWS = 16


@dataclass(frozen=True)
class AugmentationRecipe:
    """Named setting of the random augmentations applied to a reference photo.

    crop_scale is the (min, max) fraction of the image area that a random crop keeps.
    crop_ratio is the (min, max) aspect ratio of the crop relative to the image's own
    aspect ratio, so (1.0, 1.0) keeps the image's shape. Each crop is resized back to
    the image's size. brightness and contrast are ColorJitter strengths: a factor is
    drawn from [1 - value, 1 + value]. rotation_degrees is the maximum absolute angle.
    """

    name: str = "light-v1"
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    rotation_degrees: float = 10.0
    crop_scale: tuple[float, float] = (0.85, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.1
    contrast: float = 0.1

    def __post_init__(self) -> None:
        _validate_recipe(self)

    @property
    def is_identity(self) -> bool:
        """True when every view equals the original image."""
        return (
            self.hflip_p == 0
            and self.vflip_p == 0
            and self.rotation_degrees == 0
            and not self.crops
            and self.brightness == 0
            and self.contrast == 0
        )

    @property
    def crops(self) -> bool:
        """True when the random crop can change the image."""
        return self.crop_scale != (1.0, 1.0) or self.crop_ratio != (1.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (tuples become lists) that from_dict reads back."""
        data = asdict(self)
        data["crop_scale"] = list(self.crop_scale)
        data["crop_ratio"] = list(self.crop_ratio)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentationRecipe:
        """Build a recipe from to_dict() output.

        Every field is required, so a recorded recipe is never completed silently with
        defaults. Raises ConfigError naming the unknown, missing or invalid key.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"augmentation recipe must be a JSON object, got {type(data).__name__}")

        names = [field.name for field in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown augmentation recipe key(s): {', '.join(map(str, unknown))}; "
                f"valid keys: {', '.join(names)}"
            )
        missing = [name for name in names if name not in data]
        if missing:
            raise ConfigError(f"augmentation recipe is missing key(s): {', '.join(missing)}")

        values: dict[str, Any] = {"name": data["name"]}
        for name in ("hflip_p", "vflip_p", "rotation_degrees", "brightness", "contrast"):
            values[name] = _read_number(name, data[name])
        for name in ("crop_scale", "crop_ratio"):
            values[name] = _read_pair(name, data[name])
        return cls(**values)


def _read_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"augmentation recipe key '{key}' must be a number, got {value!r}")
    return float(value)


def _read_pair(key: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"augmentation recipe key '{key}' must be a [min, max] pair, got {value!r}")
    return (_read_number(key, value[0]), _read_number(key, value[1]))


def _validate_recipe(recipe: AugmentationRecipe) -> None:
    """Raise ConfigError naming the first field whose value is out of range."""
    if not isinstance(recipe.name, str) or not recipe.name.strip():
        raise ConfigError(f"augmentation recipe key 'name' must be a non-empty string, got {recipe.name!r}")

    bounds = {
        "hflip_p": (0.0, 1.0),
        "vflip_p": (0.0, 1.0),
        "rotation_degrees": (0.0, 180.0),
        "brightness": (0.0, 1.0),
        "contrast": (0.0, 1.0),
    }
    for key, (low, high) in bounds.items():
        value = getattr(recipe, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"augmentation recipe key '{key}' must be a finite number, got {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"augmentation recipe key '{key}' must be in [{low}, {high}], got {value}")

    for key in ("crop_scale", "crop_ratio"):
        pair = getattr(recipe, key)
        valid = (
            isinstance(pair, tuple)
            and len(pair) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
        )
        if not valid:
            raise ConfigError(f"augmentation recipe key '{key}' must be a (min, max) pair of numbers, got {pair!r}")
        low, high = pair
        if not 0 < low <= high:
            raise ConfigError(f"augmentation recipe key '{key}' must satisfy 0 < min <= max, got {pair}")

    if recipe.crop_scale[1] > 1:
        raise ConfigError(f"augmentation recipe key 'crop_scale' must not exceed 1.0, got {recipe.crop_scale}")


# NOTE: the default is measured with a proxy encoder (ImageNet EfficientNet-Lite0), not
# with CLIP. On 103 species, no recipe of RECIPES and no count of 0, 5 or 20 changed top-1
# measurably (bench/RESULTS.md, "Evaluation"), so light-v1 stays. Rerun
# `python -m indexer.evaluate --sweep` with CLIP weights before relying on the choice.
DEFAULT_RECIPE = AugmentationRecipe()

RECIPES: dict[str, AugmentationRecipe] = {
    "none": AugmentationRecipe(
        name="none",
        hflip_p=0.0,
        rotation_degrees=0.0,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        brightness=0.0,
        contrast=0.0,
    ),
    "flip-rotate": AugmentationRecipe(
        name="flip-rotate",
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        brightness=0.0,
        contrast=0.0,
    ),
    "light-v1": DEFAULT_RECIPE,
    "strong": AugmentationRecipe(
        name="strong",
        rotation_degrees=15.0,
        crop_scale=(0.7, 1.0),
        brightness=0.2,
        contrast=0.2,
    ),
}


def get_recipe(name: str) -> AugmentationRecipe:
    """Return the predefined recipe called `name`, or raise ConfigError listing the names."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(
            f"unknown augmentation recipe {name!r}; choose one of: {', '.join(RECIPES)}"
        ) from None


def _require_rgb(image: Image.Image) -> None:
    if image.mode != "RGB":
        raise ValueError(
            f"augmentation expects an RGB image, got mode {image.mode!r}; "
            "decode it with shared.imaging.decode_image first"
        )


def _mean_colour(image: Image.Image) -> tuple[int, int, int]:
    red, green, blue = (round(value) for value in ImageStat.Stat(image).mean)
    return (red, green, blue)


def _build_pipeline(recipe: AugmentationRecipe, image: Image.Image) -> Any:
    """Build the torchvision v2 pipeline for one image, leaving out steps that do nothing."""
    from torchvision.transforms import v2

    width, height = image.size
    steps: list[Any] = []

    # Rotate first, so the crop that follows cuts away part of the filled corners.
    # The fill is the image's mean colour, because black corners would be a strong
    # feature that no query photo has.
    if recipe.rotation_degrees > 0:
        steps.append(
            v2.RandomRotation(
                recipe.rotation_degrees,
                interpolation=v2.InterpolationMode.BILINEAR,
                expand=False,
                fill=list(_mean_colour(image)),
            )
        )

    # The ratio range is relative to the image's aspect ratio, so that resizing the
    # crop back to the image's size distorts the shape by at most that range.
    if recipe.crops:
        aspect = width / height
        steps.append(
            v2.RandomResizedCrop(
                (height, width),
                scale=recipe.crop_scale,
                ratio=(recipe.crop_ratio[0] * aspect, recipe.crop_ratio[1] * aspect),
                interpolation=v2.InterpolationMode.BICUBIC,
            )
        )

    if recipe.hflip_p > 0:
        steps.append(v2.RandomHorizontalFlip(recipe.hflip_p))
    if recipe.vflip_p > 0:
        steps.append(v2.RandomVerticalFlip(recipe.vflip_p))

    if recipe.brightness > 0 or recipe.contrast > 0:
        steps.append(v2.ColorJitter(brightness=recipe.brightness or None, contrast=recipe.contrast or None))

    return v2.Compose(steps)


def reference_views(
    image: Image.Image,
    recipe: AugmentationRecipe = DEFAULT_RECIPE,
    count: int = 20,
    seed: int = 0,
) -> list[Image.Image]:
    """Return the original image followed by `count` augmented views of it.

    The views come from a torchvision transforms.v2 pipeline run on the PIL image under
    torch.manual_seed(seed) inside torch.random.fork_rng, so the global torch RNG state
    is left as it was. On one machine, the same image, recipe, seed and library versions
    give the same views byte for byte. The first k views do not depend on `count`, and
    every view has the size of `image`. Raises ConfigError for a negative count and ValueError for an
    image that is not RGB.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"reference view count must be an integer >= 0, got {count!r}")
    _require_rgb(image)

    if recipe.is_identity:
        return [image] + [image.copy() for _ in range(count)]

    import torch

    pipeline = _build_pipeline(recipe, image)
    views = [image]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(count):
            views.append(pipeline(image))
    return views


def _rotate_and_crop(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate about the centre and keep the largest centred crop that has no fill.

    The crop keeps the image's aspect ratio. A scaled rectangle s*w by s*h, rotated back
    by the same angle, fits inside w by h when s*(w*cos + h*sin) <= w and
    s*(w*sin + h*cos) <= h. Two pixels are trimmed from each side, because bicubic
    interpolation blends the fill into the edge of the rotated content.
    """
    rotated = image.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=_mean_colour(image))
    crop_width, crop_height = _rotation_crop_size(image.width, image.height, degrees)
    return _centre_crop(rotated, crop_width, crop_height)


def _rotation_crop_size(width: int, height: int, degrees: float) -> tuple[int, int]:
    """Return the size of the centred crop of _rotate_and_crop."""
    radians = math.radians(abs(degrees))
    cos, sin = math.cos(radians), math.sin(radians)
    scale = min(width / (width * cos + height * sin), height / (width * sin + height * cos))
    return max(1, math.floor(width * scale) - 4), max(1, math.floor(height * scale) - 4)


def _rotate_crop_resize(
    image: Image.Image, degrees: float, size: tuple[int, int], fill: tuple[int, int, int]
) -> Image.Image:
    """Return _rotate_and_crop(image, degrees) resized to `size`.

    One affine transform computes only the pixels of the crop, with the same map as
    Image.rotate, so the crop is identical to _rotate_and_crop's and costs less.
    """
    width, height = image.size
    crop_width, crop_height = _rotation_crop_size(width, height, degrees)
    left, top = (width - crop_width) // 2, (height - crop_height) // 2

    # Image.rotate samples the source at R (p - centre) + centre for each output point p,
    # here p = (left, top) + the crop's own coordinates.
    theta = -math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    centre_x, centre_y = width / 2, height / 2
    offset_x = cos * (left - centre_x) + sin * (top - centre_y) + centre_x
    offset_y = -sin * (left - centre_x) + cos * (top - centre_y) + centre_y
    matrix = (cos, sin, offset_x, -sin, cos, offset_y)
    crop = image.transform(
        (crop_width, crop_height), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BICUBIC, fillcolor=fill
    )
    return crop if crop.size == size else crop.resize(size, Image.Resampling.BICUBIC)


def _centre_crop(image: Image.Image, crop_width: int, crop_height: int) -> Image.Image:
    width, height = image.size
    left = (width - crop_width) // 2
    top = (height - crop_height) // 2
    return image.crop((left, top, left + crop_width, top + crop_height))


def _centre_crop_fraction(image: Image.Image, fraction: float) -> Image.Image:
    """Keep the centred `fraction` of each side."""
    width, height = image.size
    return _centre_crop(image, max(1, round(width * fraction)), max(1, round(height * fraction)))


# Base views of the query, each also used mirrored. The first four give the default 8
# views. NOTE: the last four (views 9 to 16) have not been evaluated.
_QUERY_BASE_VIEWS: tuple[tuple[str, float], ...] = (
    ("identity", 0.0),
    ("rotate", 10.0),
    ("rotate", -10.0),
    ("crop", 0.9),
    ("rotate", 5.0),
    ("rotate", -5.0),
    ("crop", 0.8),
    ("crop", 0.95),
)


def _apply_base_view(image: Image.Image, kind: str, amount: float) -> Image.Image:
    if kind == "rotate":
        return _rotate_and_crop(image, amount)
    if kind == "crop":
        return _centre_crop_fraction(image, amount)
    return image


def _view_at_size(image: Image.Image, kind: str, amount: float, size: tuple[int, int], fill: tuple[int, int, int]) -> Image.Image:
    """Return a base view of `image` resized straight to `size`, without the resize back to the image's size."""
    if kind == "rotate":
        return _rotate_crop_resize(image, amount, size, fill)
    if kind == "crop":
        width, height = image.size
        crop_width, crop_height = max(1, round(width * amount)), max(1, round(height * amount))
        left, top = (width - crop_width) // 2, (height - crop_height) // 2
        box = (left, top, left + crop_width, top + crop_height)
        return image.resize(size, Image.Resampling.BICUBIC, box=box)
    return image.resize(size, Image.Resampling.BICUBIC)


def query_views(image: Image.Image, count: int = 8, size: tuple[int, int] | None = None) -> list[Image.Image]:
    """Return the original image followed by count - 1 fixed test-time augmentations.

    Views come in pairs of a base view and its mirror image. The first 8 views are the
    original, rotations by +10 and -10 degrees with the filled corners cropped away and
    a centred crop of 90 % of each side, each followed by its mirror image. Views 9 to
    16 add rotations by +5 and -5 degrees and crops of 80 % and 95 %. Every view is
    resized back to the size of `image`, or to `size` when given. With `size`, views skip
    the resize back to the image's size, and mirror images reuse their base view. With
    the model's resize target (shared.preprocess.resized_size) as `size`, making 8 views
    and their pixel values takes about a third of the time.
    Only Pillow is used, and nothing is random. Raises ConfigError when count is not
    between 1 and MAX_QUERY_VIEWS and ValueError for an image that is not RGB.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_QUERY_VIEWS:
        raise ConfigError(f"query view count must be an integer from 1 to {MAX_QUERY_VIEWS}, got {count!r}")
    _require_rgb(image)

    if size is not None:
        return _query_views_at_size(image, count, size)

    views = [image]
    for index in range(1, count):
        kind, amount = _QUERY_BASE_VIEWS[index // 2]
        view = _apply_base_view(image, kind, amount)
        if index % 2 == 1:
            view = ImageOps.mirror(view)
        if view.size != image.size:
            view = view.resize(image.size, Image.Resampling.BICUBIC)
        views.append(view)
    return views


def _query_views_at_size(image: Image.Image, count: int, size: tuple[int, int]) -> list[Image.Image]:
    fill = _mean_colour(image) if count > 2 else (0, 0, 0)
    bases: dict[int, Image.Image] = {}
    views = []
    for index in range(count):
        kind, amount = _QUERY_BASE_VIEWS[index // 2]
        base = bases.get(index // 2)
        if base is None:
            base = bases[index // 2] = _view_at_size(image, kind, amount, size, fill)
        views.append(ImageOps.mirror(base) if index % 2 == 1 else base)
    return views
