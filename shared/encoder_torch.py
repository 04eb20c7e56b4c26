"""The torch backend of the image encoder: transformers' CLIPVisionModelWithProjection.

Pixel values come from shared.preprocess.to_pixel_values, the same function the ONNX
backend uses, so both backends see identical input. The weights load in float32 and then
take the requested precision: float16 on CUDA, bfloat16 (fast only on CPUs with native
bfloat16 instructions), int8 through dynamic quantisation of every Linear layer (CPU only),
or float32. Embeddings always come back as float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.encoder import (
    BatchedImageEncoder,
    CONFIG_FILE,
    configured_threads,
    cpu_has_native_bf16,
    hub_unreachable_message,
    is_test_model_config,
    read_json_file,
)
from shared.errors import ConfigError, ModelLoadError
from shared.preprocess import PreprocessConfig

logger = logging.getLogger(__name__)


def resolve_torch_device(device: str) -> str:
    """Map "auto" to "cuda" when torch.cuda.is_available(), else to "cpu".

    Raises ModelLoadError for "cuda" when no GPU is available.
    """
    cuda_available = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    if device == "cuda" and not cuda_available:
        raise ModelLoadError("device 'cuda' requested but torch.cuda.is_available() is False: pass --device cpu or auto")
    return device


def resolve_torch_precision(device: str, precision: str) -> str:
    """Map "auto" to float16 on CUDA, and on the CPU to bfloat16 where it is native, else float32.

    Raises ConfigError for float16 on the CPU and for int8 on CUDA, which this backend
    does not run.
    """
    if precision == "auto":
        if device == "cuda":
            return "float16"
        return "bfloat16" if cpu_has_native_bf16() else "float32"

    if precision == "float16" and device != "cuda":
        raise ConfigError(
            "precision float16 runs only on CUDA with the torch backend; on the CPU use bfloat16, int8 or float32"
        )
    if precision == "int8" and device != "cpu":
        raise ConfigError(
            "precision int8 (dynamic quantisation) runs only on the CPU with the torch backend; on CUDA use float16 or float32"
        )
    if precision == "bfloat16" and device == "cpu" and not cpu_has_native_bf16():
        logger.warning(
            "this CPU has no native bfloat16 instructions (avx512_bf16 or amx_bf16), so bfloat16 runs slower than float32"
        )
    return precision


def apply_precision(model: Any, precision: str) -> Any:
    """Return the float32 `model` converted to `precision` (int8: dynamic quantisation of Linear layers)."""
    if precision == "bfloat16":
        return model.to(torch.bfloat16)
    if precision == "float16":
        return model.to(torch.float16)
    if precision == "int8":
        with warnings.catch_warnings():
            # torch 2.14 warns that eager-mode quantisation is moving to torchao.
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model


# Dtype of the pixel values fed to the model in each precision; float32 for the others.
INPUT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def apply_thread_setting() -> None:
    """Set torch's intra-op thread count from PLANT_ID_THREADS or OMP_NUM_THREADS, if set.

    torch.set_num_threads can fail in restricted sandboxes such as AWS Lambda. The failure
    is logged and torch keeps its default.
    """
    threads = configured_threads()
    if threads is None:
        return
    try:
        torch.set_num_threads(threads)
    except (RuntimeError, ValueError, OSError) as error:
        logger.warning("torch.set_num_threads(%d) failed, keeping %d threads: %s", threads, torch.get_num_threads(), error)
        return
    logger.info("torch uses %d intra-op threads", threads)


class _DropLoadReport(logging.Filter):
    """Drop the load report that from_pretrained logs as a warning.

    The report lists text-tower weights that the vision model does not use, which is
    expected for a full CLIP checkpoint. Missing weights are checked separately.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def _quiet_transformers_loading() -> Iterator[None]:
    """Silence the load report and the progress bar that from_pretrained prints."""
    from transformers.utils import logging as transformers_logging

    # A filter rather than a level, because raising this logger's level turns on extra checks.
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    progress_enabled = transformers_logging.is_progress_bar_enabled()
    report_logger.addFilter(report_filter)
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        report_logger.removeFilter(report_filter)
        if progress_enabled:
            transformers_logging.enable_progress_bar()


def _hub_offline() -> bool:
    """Return True when HF_HUB_OFFLINE is set now or was set when huggingface_hub was imported."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _load_hub_model(model: str) -> tuple[Any, dict[str, Any]]:
    """Load from the local Hugging Face cache first, and from the hub only when not cached."""
    from transformers import CLIPVisionModelWithProjection

    try:
        return CLIPVisionModelWithProjection.from_pretrained(model, local_files_only=True, output_loading_info=True)
    except OSError as error:
        logger.info("model %s is not in the local Hugging Face cache (%s)", model, error)

    if _hub_offline():
        raise ModelLoadError(hub_unreachable_message(model))

    try:
        return CLIPVisionModelWithProjection.from_pretrained(model, output_loading_info=True)
    except OSError as error:
        logger.error("could not download model %s from the Hugging Face hub: %s", model, error)
        if "couldn't connect" in str(error).lower() or "connection" in str(error).lower():
            raise ModelLoadError(hub_unreachable_message(model)) from error
        raise ModelLoadError(
            f"could not load CLIP model {model!r}: {error}. Pass a local folder made by save_pretrained "
            "(--model DIR, or MODEL=DIR for make demo)."
        ) from error


def _load_folder_model(folder: Path) -> tuple[Any, dict[str, Any]]:
    from transformers import CLIPVisionModelWithProjection

    try:
        return CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"could not load a CLIP vision model from folder {folder}: {error}") from error


def _hub_file(model: str, filename: str) -> Path | None:
    """Return the cached copy of a hub repository file, or None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, filename)
    return Path(cached) if isinstance(cached, str) else None


def _hub_revision(config_path: Path | None) -> str | None:
    """Return the commit hash from a cache path like .../snapshots/<commit>/config.json."""
    if config_path is None or config_path.parent.parent.name != "snapshots":
        return None
    return config_path.parent.name


def _hub_processor_dict(model: str) -> dict[str, Any]:
    """Read a hub model's image processor settings, from the local cache first."""
    from transformers import CLIPImageProcessor

    try:
        return CLIPImageProcessor.from_pretrained(model, local_files_only=True).to_dict()
    except OSError as error:
        if _hub_offline():
            raise
        logger.info("image processor of %s is not in the local Hugging Face cache (%s)", model, error)
    return CLIPImageProcessor.from_pretrained(model).to_dict()


def _load_preprocess(model: str, folder: Path | None) -> PreprocessConfig:
    try:
        if folder is not None:
            return PreprocessConfig.from_pretrained(folder)
        return PreprocessConfig.from_dict(_hub_processor_dict(model))
    except (ConfigError, OSError) as error:
        message = error.message if isinstance(error, ConfigError) else str(error)
        raise ModelLoadError(f"could not load the image processor settings of {model!r}: {message}") from error


@dataclass
class TorchImageEncoder(BatchedImageEncoder):
    """CLIP image encoder running transformers' CLIPVisionModelWithProjection."""

    backend: str = "torch"
    model: Any = None

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        input_dtype = INPUT_DTYPES.get(self.precision, torch.float32)
        with torch.inference_mode():
            tensor = torch.from_numpy(pixel_values).to(device=self.device, dtype=input_dtype)
            embeds = self.model(pixel_values=tensor).image_embeds
            return embeds.float().cpu().numpy()


def load_torch_encoder(model: str, *, folder: Path | None, device: str, precision: str = "float32") -> TorchImageEncoder:
    """Load CLIPVisionModelWithProjection from a hub id or a save_pretrained folder in `precision`.

    Raises ModelLoadError when the model cannot be loaded or when any vision weight is
    missing from the checkpoint, because transformers would fill those randomly.
    """
    apply_thread_setting()

    with _quiet_transformers_loading():
        if folder is not None:
            vision_model, loading_info = _load_folder_model(folder)
        else:
            vision_model, loading_info = _load_hub_model(model)

    missing = sorted(loading_info.get("missing_keys", []))
    if missing:
        listed = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ModelLoadError(
            f"model {model!r} has no weights for {len(missing)} vision parameters ({listed}): "
            "pass a CLIP checkpoint that includes the vision tower and visual projection"
        )

    if folder is not None:
        config_path: Path | None = folder / CONFIG_FILE
        revision = None
    else:
        config_path = _hub_file(model, CONFIG_FILE)
        revision = _hub_revision(config_path)
    raw_config = read_json_file(config_path) if config_path is not None else {}

    vision_model = vision_model.to(device=device, dtype=torch.float32).eval()
    vision_model = apply_precision(vision_model, precision)
    return TorchImageEncoder(
        model=vision_model,
        model_id=model,
        revision=revision,
        dimension=int(vision_model.config.projection_dim),
        device=device,
        is_test_model=is_test_model_config(raw_config),
        preprocess=_load_preprocess(model, folder),
        precision=precision,
    )
