"""Loading the CLIP image encoder, with a per-process cache and a choice of backend.

Two backends compute the same embeddings: "torch" runs transformers'
CLIPVisionModelWithProjection (shared/encoder_torch.py) and "onnx" runs an exported vision
tower in ONNX Runtime (shared/encoder_onnx.py, folders written by shared/onnx_export.py).
This module imports neither torch nor transformers, so a process that only uses the ONNX
backend never pays for them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from shared.errors import ConfigError, ModelLoadError
from shared.preprocess import PreprocessConfig, to_pixel_values

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "openai/clip-vit-base-patch32"

# Files of an ONNX encoder folder, as written by shared.onnx_export.
ONNX_MODEL_FILE = "vision_model.onnx"
ONNX_INT8_MODEL_FILE = "vision_model_int8.onnx"
ENCODER_INFO_FILE = "encoder.json"
CONFIG_FILE = "config.json"

# config.json key (or encoder.json "test_model") that marks a randomly initialised test model.
TEST_MODEL_KEY = "plant_id_test_model"

# Environment variables read for the thread count, first match wins.
THREAD_ENV_VARS = ("PLANT_ID_THREADS", "OMP_NUM_THREADS")

BACKENDS = ("auto", "torch", "onnx")
DEVICES = ("auto", "cpu", "cuda")

# Number formats the encoder can run in. "auto" picks, per backend and device, the fastest
# format (bench/encoder_variants.py) whose embeddings are known to stay within
# MAX_AUTO_DEVIATION of float32: int8 for an ONNX folder whose export recorded a small
# enough int8 deviation, float16 for torch on CUDA, bfloat16 for torch on a CPU with native
# bfloat16 instructions, and float32 otherwise. torch's int8 is faster than bfloat16 on the
# CPU, but no check of its deviation exists for the weights at hand, so "auto" skips it.
PRECISIONS = ("auto", "float32", "float16", "bfloat16", "int8")

# Largest 1 - cosine similarity between an embedding in a reduced precision and the float32
# embedding of the same image that "auto" accepts.
MAX_AUTO_DEVIATION = 0.005

# /proc/cpuinfo flags of x86 CPUs that compute bfloat16 dot products natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# A Hugging Face hub id: "name" or "owner/name" of letters, digits, '.', '_' and '-'.
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@runtime_checkable
class ImageEncoder(Protocol):
    """A loaded CLIP image encoder: images in, L2-normalised float32 embeddings out."""

    model_id: str
    revision: str | None
    dimension: int
    device: str
    backend: str
    precision: str
    is_test_model: bool
    preprocess: PreprocessConfig

    def encode(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode images into float32 [len(images), dimension], each row of unit L2 norm."""
        ...


@dataclass
class BatchedImageEncoder:
    """Fields and batching shared by the encoder backends.

    A backend sets `backend` and implements `encode_pixels`, which maps one batch of
    preprocessed pixel values [B, 3, H, W] to unnormalised embeddings [B, D].
    """

    model_id: str
    revision: str | None
    dimension: int
    device: str
    is_test_model: bool
    preprocess: PreprocessConfig
    backend: str = ""
    precision: str = "float32"

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode images into float32 [len(images), dimension], each row of unit L2 norm."""
        ranges = batch_ranges(len(images), batch_size)
        if not ranges:
            return np.empty((0, self.dimension), dtype=np.float32)

        outputs = []
        for start, stop in ranges:
            pixel_values = to_pixel_values(images[start:stop], self.preprocess)
            outputs.append(self.encode_pixels(pixel_values))
        return l2_normalize(np.concatenate(outputs, axis=0))


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, np.float32(1e-12))


def mean_embedding(view_embeddings: np.ndarray) -> np.ndarray:
    """Average the embeddings of one image's views [V, D] and L2-normalise the mean.

    Both a species' prototype and a query embedding are made this way. Raises ValueError
    when the mean is zero or not finite, which no real set of views produces.
    """
    mean = np.asarray(view_embeddings, dtype=np.float32).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("the view embeddings cancel out: their mean has zero norm")
    return mean / norm


def batch_ranges(count: int, batch_size: int) -> list[tuple[int, int]]:
    """Split range(count) into [start, stop) pairs of at most batch_size items."""
    if batch_size < 1:
        raise ValueError(f"invalid batch_size {batch_size}: expected a positive integer")
    return [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def configured_threads() -> int | None:
    """Return the thread count from PLANT_ID_THREADS or OMP_NUM_THREADS, or None when unset.

    A value that is not a positive integer is ignored with a warning. Values above the
    number of CPUs this process may run on are capped at that number.
    """
    for name in THREAD_ENV_VARS:
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue

        try:
            requested = int(raw)
        except ValueError:
            logger.warning("ignoring %s=%r: expected a positive integer", name, raw)
            continue
        if requested < 1:
            logger.warning("ignoring %s=%r: expected a positive integer", name, raw)
            continue

        available = available_cpus()
        if requested > available:
            logger.warning("%s=%d exceeds the %d available CPUs, so using %d threads", name, requested, available, available)
            return available
        return requested
    return None


def available_cpus() -> int:
    """Return the number of CPUs this process may run on (affinity mask when the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Return True when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (False where it cannot be read).

    Without these instructions torch emulates bfloat16 matrix products, which is slower
    than float32.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False

    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(flag in flags for flag in NATIVE_BF16_FLAGS)
    return False


def check_precision(precision: str) -> None:
    """Raise ConfigError when `precision` is not one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ConfigError(f"invalid encoder precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def is_hub_id(model: str) -> bool:
    """Return True when `model` names a hub repository rather than a local folder.

    An existing folder always wins, so a relative folder named like "owner/name" loads
    from disk.
    """
    if Path(model).expanduser().exists():
        return False
    return HUB_ID_PATTERN.fullmatch(model) is not None


def read_json_file(path: Path) -> dict[str, Any]:
    """Read a JSON object from `path`, raising ModelLoadError naming the file on failure."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not read {path}: {error}") from error
    if not isinstance(data, dict):
        raise ModelLoadError(f"invalid {path}: expected a JSON object")
    return data


def is_test_model_config(config: dict[str, Any]) -> bool:
    """Return True when a config.json dict carries the test model marker."""
    vision_config = config.get("vision_config")
    nested = isinstance(vision_config, dict) and vision_config.get(TEST_MODEL_KEY) is True
    return config.get(TEST_MODEL_KEY) is True or nested


def hub_unreachable_message(model: str) -> str:
    """Return the ModelLoadError text for a hub id that is neither cached nor downloadable."""
    return (
        f"could not load CLIP model {model!r}: not in the local Hugging Face cache and the hub is "
        "unreachable. Pass a local folder made by save_pretrained (--model DIR, or MODEL=DIR for make "
        "demo), or set HF_HOME to a cache that holds it."
    )


def _local_folder(model: str) -> Path:
    folder = Path(model).expanduser()
    if not folder.exists():
        raise ModelLoadError(
            f"model folder not found: {model}. Pass a folder made by save_pretrained or by "
            "`python -m shared.onnx_export`, or a Hugging Face hub id such as "
            f"{DEFAULT_MODEL_ID!r}."
        )
    if not folder.is_dir():
        raise ModelLoadError(f"model path is not a folder: {model}. Pass the folder that contains {CONFIG_FILE}.")
    return folder.resolve()


def _resolve_backend(model: str, folder: Path | None, backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"invalid encoder backend {backend!r}: expected one of {', '.join(BACKENDS)}")

    has_onnx = folder is not None and (folder / ONNX_MODEL_FILE).is_file()
    if backend == "auto":
        return "onnx" if has_onnx else "torch"

    if backend == "onnx" and not has_onnx:
        raise ModelLoadError(
            f"{ONNX_MODEL_FILE} not found for model {model!r}: the onnx backend needs a folder written by "
            f"`python -m shared.onnx_export --model {model} --out DIR`; pass that DIR instead."
        )
    return backend


def _check_torch_folder(folder: Path) -> None:
    if not (folder / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"{CONFIG_FILE} not found in model folder {folder}: pass a folder made by "
            "CLIPModel.save_pretrained (or CLIPVisionModelWithProjection.save_pretrained)."
        )


def _resolve_precision(backend: str, folder: Path | None, device: str, precision: str) -> str:
    check_precision(precision)
    if backend == "onnx":
        from shared.encoder_onnx import resolve_onnx_precision

        assert folder is not None
        return resolve_onnx_precision(folder, device, precision)

    from shared.encoder_torch import resolve_torch_precision

    return resolve_torch_precision(device, precision)


def _resolve_device(backend: str, device: str) -> str:
    if device not in DEVICES:
        raise ConfigError(f"invalid encoder device {device!r}: expected one of {', '.join(DEVICES)}")
    if backend == "onnx":
        from shared.encoder_onnx import resolve_onnx_device

        return resolve_onnx_device(device)

    from shared.encoder_torch import resolve_torch_device

    return resolve_torch_device(device)


_cache: dict[tuple[str, ...], ImageEncoder] = {}
_cache_lock = threading.Lock()
_load_count = 0

# Loaders of development-only encoders by model-name prefix, such as "proxy:" that
# bench/proxy_encoder.py registers when it is imported. A loader takes (model, device).
EncoderLoader = Callable[[str, str], ImageEncoder]
_prefix_loaders: dict[str, EncoderLoader] = {}


def register_encoder_prefix(prefix: str, loader: EncoderLoader) -> None:
    """Make load_encoder call `loader(model, device)` for model names that start with `prefix`."""
    _prefix_loaders[prefix] = loader


def _registered_loader(model: str) -> EncoderLoader | None:
    for prefix, loader in _prefix_loaders.items():
        if model.startswith(prefix):
            return loader
    return None


def load_encoder(
    model: str = DEFAULT_MODEL_ID, *, device: str = "auto", backend: str = "auto", precision: str = "auto"
) -> ImageEncoder:
    """Load a CLIP image encoder, or return the one already loaded for these arguments.

    `model` is a hub id or a local folder. A folder that contains vision_model.onnx uses the
    onnx backend under backend="auto", anything else the torch backend. device="auto"
    picks CUDA when the backend can use it, else the CPU. precision="auto" picks the
    number format as described at PRECISIONS, and the encoder's `precision` attribute
    names the format in use. Raises ConfigError for a precision that the backend or device
    cannot run, and ModelLoadError when the model cannot be loaded. Randomly initialised
    weights are never substituted.
    """
    registered = _registered_loader(model)
    if registered is not None:
        return _load_registered(model, device, registered)

    folder = None if is_hub_id(model) else _local_folder(model)
    key_model = str(folder) if folder is not None else model
    resolved_backend = _resolve_backend(model, folder, backend)
    if resolved_backend == "torch" and folder is not None:
        _check_torch_folder(folder)
    resolved_device = _resolve_device(resolved_backend, device)
    resolved_precision = _resolve_precision(resolved_backend, folder, resolved_device, precision)
    key = (key_model, resolved_device, resolved_backend, resolved_precision)

    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached

        encoder = _load_uncached(model, folder, resolved_device, resolved_backend, resolved_precision)
        _cache[key] = encoder
        return encoder


def _load_registered(model: str, device: str, loader: EncoderLoader) -> ImageEncoder:
    if device not in DEVICES:
        raise ConfigError(f"invalid encoder device {device!r}: expected one of {', '.join(DEVICES)}")
    key = (model, device, "registered")
    with _cache_lock:
        cached = _cache.get(key)
        if cached is None:
            logger.info("loading registered encoder %s (device %s)", model, device)
            cached = loader(model, device)
            _cache[key] = cached
        return cached


def _load_uncached(model: str, folder: Path | None, device: str, backend: str, precision: str) -> ImageEncoder:
    global _load_count

    logger.info("loading CLIP image encoder %s (backend %s, device %s, precision %s)", model, backend, device, precision)
    started = time.perf_counter()
    if backend == "onnx":
        from shared.encoder_onnx import load_onnx_encoder

        assert folder is not None
        encoder: ImageEncoder = load_onnx_encoder(folder, device=device, precision=precision)
    else:
        from shared.encoder_torch import load_torch_encoder

        encoder = load_torch_encoder(model, folder=folder, device=device, precision=precision)

    _load_count += 1
    logger.info(
        "loaded CLIP image encoder %s revision %s (%d-dim, backend %s, device %s, precision %s) in %.2f s, "
        "model loads so far: %d",
        encoder.model_id,
        encoder.revision,
        encoder.dimension,
        encoder.backend,
        encoder.device,
        encoder.precision,
        time.perf_counter() - started,
        _load_count,
    )
    if encoder.is_test_model:
        logger.warning(
            "%s is a randomly initialised test model: its embeddings carry no meaning and rankings made with it are noise",
            model,
        )
    return encoder


def load_count() -> int:
    """Return how many times this process has loaded a model (cache hits not counted)."""
    return _load_count


def clear_encoder_cache() -> None:
    """Forget every cached encoder, so the next load_encoder call loads again."""
    with _cache_lock:
        _cache.clear()
