"""The ONNX Runtime backend of the image encoder, for folders written by shared.onnx_export.

The folder contains vision_model.onnx (pixel_values [B, 3, H, W] -> image_embeds [B, D]),
preprocessor_config.json and encoder.json (model id, revision, dimension, test model flag).
Neither torch nor transformers is imported, which keeps cold starts short.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from PIL import Image

from shared.encoder import (
    ENCODER_INFO_FILE,
    ONNX_MODEL_FILE,
    batch_ranges,
    configured_threads,
    l2_normalize,
    read_json_file,
)
from shared.errors import ConfigError, ModelLoadError
from shared.preprocess import PreprocessConfig, to_pixel_values

logger = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "image_embeds"

# onnxruntime's own exception types, which do not derive from RuntimeError or OSError.
SESSION_ERRORS: tuple[type[Exception], ...] = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
    RuntimeError,
    ValueError,
)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def resolve_onnx_device(device: str) -> str:
    """Map "auto" to "cuda" when ONNX Runtime has the CUDA provider, else "cpu"."""
    cuda_available = CUDA_PROVIDER in ort.get_available_providers()
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    if device == "cuda" and not cuda_available:
        raise ModelLoadError(
            f"device 'cuda' requested but this onnxruntime build has no {CUDA_PROVIDER}: "
            "install onnxruntime-gpu or pass --device cpu"
        )
    return device


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    threads = configured_threads()
    if threads is not None:
        options.intra_op_num_threads = threads
        logger.info("onnxruntime uses %d intra-op threads", threads)
    return options


@dataclass
class OnnxImageEncoder:
    """CLIP image encoder running an exported vision tower in ONNX Runtime."""

    session: Any
    model_id: str
    revision: str | None
    dimension: int
    device: str
    is_test_model: bool
    preprocess: PreprocessConfig
    backend: str = "onnx"

    def encode(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode images into float32 [len(images), dimension], each row of unit L2 norm."""
        ranges = batch_ranges(len(images), batch_size)
        if not ranges:
            return np.empty((0, self.dimension), dtype=np.float32)

        outputs = []
        for start, stop in ranges:
            pixel_values = to_pixel_values(images[start:stop], self.preprocess)
            (embeds,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values})
            outputs.append(embeds)
        return l2_normalize(np.concatenate(outputs, axis=0))


def load_onnx_encoder(folder: Path, *, device: str) -> OnnxImageEncoder:
    """Open FOLDER/vision_model.onnx in an InferenceSession and read the folder's settings."""
    info = read_json_file(folder / ENCODER_INFO_FILE)
    try:
        preprocess = PreprocessConfig.from_pretrained(folder)
    except ConfigError as error:
        raise ModelLoadError(f"invalid ONNX encoder folder {folder}: {error.message}") from error

    providers = [CUDA_PROVIDER, CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]
    model_path = folder / ONNX_MODEL_FILE
    try:
        session = ort.InferenceSession(str(model_path), sess_options=_session_options(), providers=providers)
    except SESSION_ERRORS as error:
        raise ModelLoadError(f"could not open {model_path} in onnxruntime: {error}") from error

    dimension = _output_dimension(session, model_path)
    recorded = info.get("dimension")
    if recorded is not None and recorded != dimension:
        raise ModelLoadError(
            f"{folder / ENCODER_INFO_FILE} records dimension {recorded} but {model_path} outputs {dimension}: "
            "export the folder again with `python -m shared.onnx_export`"
        )

    model_id = info.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise ModelLoadError(f"{folder / ENCODER_INFO_FILE} has no model_id: export the folder again with `python -m shared.onnx_export`")

    return OnnxImageEncoder(
        session=session,
        model_id=model_id,
        revision=info.get("revision"),
        dimension=dimension,
        device=device,
        is_test_model=info.get("test_model") is True,
        preprocess=preprocess,
    )


def _output_dimension(session: Any, model_path: Path) -> int:
    inputs = {item.name for item in session.get_inputs()}
    outputs = {item.name: item.shape for item in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ModelLoadError(
            f"{model_path} must take {INPUT_NAME!r} and return {OUTPUT_NAME!r}, but takes {sorted(inputs)} "
            f"and returns {sorted(outputs)}: export it with `python -m shared.onnx_export`"
        )

    shape = outputs[OUTPUT_NAME]
    if len(shape) != 2 or not isinstance(shape[1], int):
        raise ModelLoadError(f"{model_path} output {OUTPUT_NAME!r} has shape {shape}, expected [batch, dimension]")
    return int(shape[1])
