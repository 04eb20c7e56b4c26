"""CLIP image preprocessing in NumPy and Pillow, shared by the torch and ONNX encoders.

`to_pixel_values` reproduces what transformers' `CLIPImageProcessor` does with default
settings: resize so the shortest edge is 224 pixels (bicubic), centre-crop 224 x 224
(zero-padding first when the resized image is smaller than the crop), scale to [0, 1] and
normalise with CLIP's mean and std. Pillow resizes where transformers 5 resizes with
torchvision, so pixel values differ by a rounding step at most (tests/test_preprocess.py
checks the tolerance on real photos). Both encoder backends take their input from here, so
they see identical pixels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.errors import ConfigError

logger = logging.getLogger(__name__)

# OpenAI CLIP normalisation constants, the same values as transformers' OPENAI_CLIP_MEAN/STD.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"

# Pillow resampling filters by name, and the integer codes Hugging Face configs store.
RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
RESAMPLE_NAMES_BY_CODE: dict[int, str] = {int(code): name for name, code in RESAMPLE_FILTERS.items()}


@dataclass(frozen=True)
class PreprocessConfig:
    """Resize, crop and normalisation settings of a CLIP image processor."""

    shortest_edge: int = 224
    crop_size: int = 224
    mean: tuple[float, float, float] = field(default=CLIP_MEAN)
    std: tuple[float, float, float] = field(default=CLIP_STD)
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.shortest_edge < 1:
            raise ConfigError(f"invalid shortest_edge {self.shortest_edge}: expected a positive number of pixels")
        if self.crop_size < 1:
            raise ConfigError(f"invalid crop_size {self.crop_size}: expected a positive number of pixels")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"invalid mean {self.mean} or std {self.std}: expected three values each (RGB)")
        if any(value <= 0 for value in self.std):
            raise ConfigError(f"invalid std {self.std}: every value must be positive")
        if self.resample not in RESAMPLE_FILTERS:
            known = ", ".join(sorted(RESAMPLE_FILTERS))
            raise ConfigError(f"invalid resample {self.resample!r}: expected one of {known}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Read a Hugging Face preprocessor_config.json dict of a CLIP-style image processor.

        Raises ConfigError for settings this module cannot reproduce: resizing to a fixed
        height and width, a non-square crop, or resize, crop, rescale or normalisation
        switched off. Encoding with other preprocessing than the model was trained with
        would degrade every embedding without any visible error.
        """
        for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if data.get(flag, True) is False:
                raise ConfigError(f"unsupported image processor setting {flag}=false: only CLIP-style preprocessing is implemented")

        rescale_factor = float(data.get("rescale_factor", 1 / 255))
        if abs(rescale_factor - 1 / 255) > 1e-9:
            raise ConfigError(f"unsupported rescale_factor {rescale_factor}: only 1/255 is implemented")

        shortest_edge = _read_shortest_edge(data.get("size", 224))
        crop_size = _read_crop_size(data.get("crop_size", shortest_edge))
        mean = _read_triple(data.get("image_mean", CLIP_MEAN), "image_mean")
        std = _read_triple(data.get("image_std", CLIP_STD), "image_std")
        resample = _read_resample(data.get("resample", "bicubic"))
        return cls(shortest_edge=shortest_edge, crop_size=crop_size, mean=mean, std=std, resample=resample)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PreprocessConfig:
        """Read FOLDER/preprocessor_config.json, as written by an image processor's save_pretrained."""
        path = Path(folder) / PREPROCESSOR_CONFIG_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"{PREPROCESSOR_CONFIG_FILE} not found in {folder}: save the model's image processor there "
                "too (CLIPImageProcessor.from_pretrained(ID).save_pretrained(DIR))"
            ) from None
        except (OSError, ValueError) as error:
            raise ConfigError(f"could not read {path}: {error}") from error

        if not isinstance(data, dict):
            raise ConfigError(f"invalid {path}: expected a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a preprocessor_config.json dict that CLIPImageProcessor reads."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": int(RESAMPLE_FILTERS[self.resample]),
            "do_center_crop": True,
            "crop_size": {"height": self.crop_size, "width": self.crop_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }


def _read_shortest_edge(size: Any) -> int:
    if isinstance(size, int):
        return size
    if isinstance(size, Mapping) and "shortest_edge" in size:
        return int(size["shortest_edge"])
    raise ConfigError(f"unsupported image processor size {size!r}: expected {{'shortest_edge': N}}")


def _read_crop_size(crop: Any) -> int:
    if isinstance(crop, int):
        return crop
    if isinstance(crop, Mapping) and "height" in crop and "width" in crop:
        if int(crop["height"]) != int(crop["width"]):
            raise ConfigError(f"unsupported crop_size {dict(crop)}: only square crops are implemented")
        return int(crop["height"])
    raise ConfigError(f"unsupported image processor crop_size {crop!r}: expected {{'height': N, 'width': N}}")


def _read_triple(values: Any, name: str) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        values = [values] * 3
    if not isinstance(values, Sequence) or len(values) != 3:
        raise ConfigError(f"invalid {name} {values!r}: expected three numbers (RGB)")
    first, second, third = (float(value) for value in values)
    return (first, second, third)


def _read_resample(value: Any) -> str:
    if isinstance(value, int) and value in RESAMPLE_NAMES_BY_CODE:
        return RESAMPLE_NAMES_BY_CODE[value]
    if isinstance(value, str) and value.lower() in RESAMPLE_FILTERS:
        return value.lower()
    raise ConfigError(f"unsupported resample {value!r}: expected a Pillow filter code 0-5 or a name")


def resized_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """Return (width, height) with the short side at `shortest_edge`, the long side truncated.

    Truncating with int() matches transformers' get_resize_output_image_size.
    """
    if width <= height:
        return shortest_edge, int(shortest_edge * height / width)
    return int(shortest_edge * width / height), shortest_edge


def _center_crop(pixels: np.ndarray, crop: int) -> np.ndarray:
    """Centre-crop an [H, W, C] array to crop x crop, zero-padding sides shorter than the crop.

    Padding and offsets follow CLIPImageProcessor: the extra padding pixel goes right and
    bottom, and the crop offset is truncated towards the top left.
    """
    height, width = pixels.shape[:2]
    if height < crop or width < crop:
        pad_top = (crop - height) // 2 if crop > height else 0
        pad_bottom = (crop - height + 1) // 2 if crop > height else 0
        pad_left = (crop - width) // 2 if crop > width else 0
        pad_right = (crop - width + 1) // 2 if crop > width else 0
        pixels = np.pad(pixels, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
        height, width = pixels.shape[:2]

    top = int((height - crop) / 2.0)
    left = int((width - crop) / 2.0)
    return pixels[top : top + crop, left : left + crop]


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        # Composite transparent pixels onto white, as transformers' convert_rgb does.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_pixel_values(images: Sequence[Image.Image], config: PreprocessConfig) -> np.ndarray:
    """Resize, centre-crop and normalise images into float32 [B, 3, crop, crop] pixel values."""
    resample = RESAMPLE_FILTERS[config.resample]
    mean = np.asarray(config.mean, dtype=np.float32) * 255.0
    std = np.asarray(config.std, dtype=np.float32) * 255.0
    batch = np.empty((len(images), 3, config.crop_size, config.crop_size), dtype=np.float32)

    for position, image in enumerate(images):
        rgb = _to_rgb(image)
        size = resized_size(rgb.width, rgb.height, config.shortest_edge)
        if size != rgb.size:
            rgb = rgb.resize(size, resample=resample)

        pixels = _center_crop(np.asarray(rgb, dtype=np.uint8), config.crop_size)

        # Rescale and normalise in one step: (x / 255 - mean) / std == (x - 255 mean) / (255 std).
        normalised = (pixels.astype(np.float32) - mean) / std
        batch[position] = normalised.transpose(2, 0, 1)
    return batch


def view_source_side(config: PreprocessConfig) -> int:
    """Return the shortest side, in pixels, that shrink_for_views keeps: twice the model's input size.

    Decoders may stop at this size too (shared.imaging.decode_image's target_size).
    """
    return 2 * config.shortest_edge


def shrink_for_views(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """Downscale so the shortest side is at most view_source_side(config) pixels.

    Augmentations then work on a small image instead of a full-size photo. The margin of
    twice the model's input size keeps crops and rotations sharp after the final resize.
    Smaller images come back unchanged (the same object).
    """
    limit = view_source_side(config)
    width, height = image.size
    if min(width, height) <= limit:
        return image

    size = resized_size(width, height, limit)
    return image.resize(size, resample=Image.Resampling.BICUBIC, reducing_gap=3.0)
