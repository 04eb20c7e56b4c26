"""The ONNX Runtime backend of the image encoder, for folders written by shared.onnx_export.

The folder contains vision_model.onnx (pixel_values [B, 3, H, W] -> image_embeds [B, D]),
preprocessor_config.json and encoder.json (model id, revision, dimension, test model flag).
It may also hold vision_model_int8.onnx, the same graph with dynamically quantised int8
weights, and encoder.json then records how far its embeddings deviate from float32.
Neither torch nor transformers is imported, which keeps cold starts short.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from shared.encoder import (
    ENCODER_INFO_FILE,
    BatchedImageEncoder,
    MAX_AUTO_DEVIATION,
    ONNX_INT8_MODEL_FILE,
    ONNX_MODEL_FILE,
    configured_threads,
    read_json_file,
)
from shared.errors import ConfigError, ModelLoadError
from shared.preprocess import PreprocessConfig

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

# encoder.json key of the int8 graph's record: {"file", "max_cosine_deviation", "check_images", ...}.
INT8_INFO_KEY = "int8"

# Graph file of each precision this backend runs.
MODEL_FILES = {"float32": ONNX_MODEL_FILE, "int8": ONNX_INT8_MODEL_FILE}


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


def recorded_int8_deviation(folder: Path) -> float | None:
    """Return the int8 graph's max cosine deviation from float32 recorded in encoder.json, or None."""
    record = read_json_file(folder / ENCODER_INFO_FILE).get(INT8_INFO_KEY)
    if not isinstance(record, dict):
        return None
    deviation = record.get("max_cosine_deviation")
    if isinstance(deviation, bool) or not isinstance(deviation, (int, float)):
        return None
    return float(deviation)


def resolve_onnx_precision(folder: Path, device: str, precision: str) -> str:
    """Map "auto" to int8 on the CPU when the folder's int8 graph is accurate enough, else float32.

    "Accurate enough" means encoder.json records a max cosine deviation from float32 below
    MAX_AUTO_DEVIATION, measured by shared.onnx_export. Raises ConfigError for float16,
    bfloat16 and int8 on CUDA, and ModelLoadError for int8 when the folder has no int8 graph.
    """
    if precision in ("float16", "bfloat16"):
        raise ConfigError(
            f"precision {precision} is not available with the onnx backend; use int8 or float32, "
            "or the torch backend with a save_pretrained folder"
        )

    int8_path = folder / ONNX_INT8_MODEL_FILE
    if precision == "int8":
        if device != "cpu":
            raise ConfigError("precision int8 runs only on the CPU with the onnx backend; on CUDA use float32")
        if not int8_path.is_file():
            raise ModelLoadError(
                f"{ONNX_INT8_MODEL_FILE} not found in {folder}: export the folder again with "
                "`python -m shared.onnx_export` (it writes the int8 graph unless --no-int8 is given)"
            )
        return "int8"

    if precision == "float32" or device != "cpu" or not int8_path.is_file():
        return "float32"

    deviation = recorded_int8_deviation(folder)
    if deviation is None or deviation >= MAX_AUTO_DEVIATION:
        logger.info(
            "using the float32 graph of %s: the int8 graph's recorded deviation from float32 is %s, the limit is %g",
            folder,
            "missing" if deviation is None else f"{deviation:.4f}",
            MAX_AUTO_DEVIATION,
        )
        return "float32"
    return "int8"


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning: on a 2-core machine, spinning threads took
    # CPU time from the working ones, and a batch of 8 images ran about 6 % slower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    threads = configured_threads()
    if threads is not None:
        options.intra_op_num_threads = threads
        logger.info("onnxruntime uses %d intra-op threads", threads)
    return options


@dataclass
class OnnxImageEncoder(BatchedImageEncoder):
    """CLIP image encoder running an exported vision tower in ONNX Runtime."""

    backend: str = "onnx"
    session: Any = None

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        (embeds,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values})
        return embeds


def load_onnx_encoder(folder: Path, *, device: str, precision: str = "float32") -> OnnxImageEncoder:
    """Open the folder's graph for `precision` (float32 or int8) in an InferenceSession and read its settings."""
    info = read_json_file(folder / ENCODER_INFO_FILE)
    try:
        preprocess = PreprocessConfig.from_pretrained(folder)
    except ConfigError as error:
        raise ModelLoadError(f"invalid ONNX encoder folder {folder}: {error.message}") from error

    providers = [CUDA_PROVIDER, CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]
    if precision not in MODEL_FILES:
        raise ConfigError(f"precision {precision!r} is not available with the onnx backend; use int8 or float32")
    model_path = folder / MODEL_FILES[precision]
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
        precision=precision,
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
