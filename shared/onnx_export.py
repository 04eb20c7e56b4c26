"""Export the CLIP vision tower and projection to ONNX for the onnxruntime backend.

Usage: python -m shared.onnx_export --model ID_OR_DIR --out DIR

DIR receives vision_model.onnx (input pixel_values [batch, 3, H, W], output image_embeds
[batch, D], not normalised), preprocessor_config.json and encoder.json. The exported graph
is checked with onnx.checker and compared with the torch model on one batch before
vision_model.onnx takes its final name, so a folder that has that file is complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from shared.encoder import ENCODER_INFO_FILE, ONNX_MODEL_FILE, load_encoder
from shared.encoder_onnx import INPUT_NAME, OUTPUT_NAME
from shared.errors import PlantIdError
from shared.preprocess import PREPROCESSOR_CONFIG_FILE

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17

# Largest element-wise difference between torch and onnxruntime outputs accepted after export.
MAX_ABS_DIFFERENCE = 1e-3


def _vision_wrapper(vision_model: Any) -> Any:
    """Wrap CLIPVisionModelWithProjection so forward(pixel_values) returns image_embeds only."""
    import torch

    class ImageEmbeds(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixel_values).image_embeds

    return ImageEmbeds(vision_model).eval()


def export_vision_model(vision_model: Any, path: Path, *, image_size: int, opset: int = DEFAULT_OPSET) -> str:
    """Write the vision tower and projection of `vision_model` to `path` as one ONNX file.

    Tries the TorchScript-based exporter (dynamo=False) first because it exports this
    model quickly, then the torch.export-based exporter. Returns the exporter used.
    """
    import torch

    wrapper = _vision_wrapper(vision_model.float().cpu())
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.float32)

    try:
        with warnings.catch_warnings():
            # Tracing warns about Python-side shape checks and about the exporter's deprecation.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
            )
        return "torchscript"
    except (TypeError, RuntimeError, torch.onnx.errors.OnnxExporterError) as error:
        logger.warning("TorchScript-based ONNX export failed, trying the torch.export-based exporter: %s", error)

    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        wrapper,
        (example,),
        str(path),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        external_data=False,
    )
    return "dynamo"


def _compare_with_torch(vision_model: Any, path: Path, image_size: int) -> float:
    """Return the max abs difference between torch and onnxruntime embeddings for a random batch."""
    import onnxruntime as ort
    import torch

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(3, 3, image_size, image_size, generator=generator)
    with torch.inference_mode():
        expected = vision_model(pixel_values=pixel_values).image_embeds.numpy()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values.numpy()})
    return float(np.abs(actual - expected).max())


def export_encoder(model: str, out: str | Path, *, model_id: str | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """Export `model` (hub id or save_pretrained folder) into the ONNX encoder folder `out`.

    `model_id` overrides the model id recorded in encoder.json, which otherwise is `model`.
    Raises ModelLoadError when the model cannot be loaded and RuntimeError when the
    exported graph disagrees with torch.
    """
    import onnx

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(model, device="cpu", backend="torch")
    vision_model = encoder.model.float().cpu().eval()  # type: ignore[attr-defined]
    image_size = encoder.preprocess.crop_size

    logger.info("exporting %s to %s (opset %d)", model, out, opset)
    started = time.perf_counter()
    partial_path = out / (ONNX_MODEL_FILE + ".partial")
    exporter = export_vision_model(vision_model, partial_path, image_size=image_size, opset=opset)
    onnx.checker.check_model(str(partial_path))

    difference = _compare_with_torch(vision_model, partial_path, image_size)
    if difference > MAX_ABS_DIFFERENCE:
        raise RuntimeError(
            f"exported graph disagrees with torch: max abs difference {difference:.2e} > {MAX_ABS_DIFFERENCE:.0e} "
            f"(exporter {exporter}); the file is left at {partial_path}"
        )

    (out / PREPROCESSOR_CONFIG_FILE).write_text(json.dumps(encoder.preprocess.to_dict(), indent=2) + "\n", encoding="utf-8")
    info = {
        "model_id": model_id or encoder.model_id,
        "revision": encoder.revision,
        "dimension": encoder.dimension,
        "exported_from": model,
        "exporter": exporter,
        "opset": opset,
        "test_model": encoder.is_test_model,
    }
    (out / ENCODER_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(partial_path, out / ONNX_MODEL_FILE)

    logger.info(
        "exported %s to %s with the %s exporter in %.1f s (max abs difference to torch %.1e)",
        model,
        out / ONNX_MODEL_FILE,
        exporter,
        time.perf_counter() - started,
        difference,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.onnx_export",
        description="Export the CLIP image encoder (vision tower and projection) to ONNX.",
    )
    parser.add_argument("--model", required=True, help="Hugging Face hub id or folder made by save_pretrained")
    parser.add_argument("--out", required=True, help="output folder for vision_model.onnx, preprocessor_config.json and encoder.json")
    parser.add_argument("--model-id", default=None, help="model id recorded in encoder.json (default: the --model value)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset version (default {DEFAULT_OPSET})")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = export_encoder(args.model, args.out, model_id=args.model_id, opset=args.opset)
    except PlantIdError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1

    print(f"wrote {out / ONNX_MODEL_FILE}, {out / PREPROCESSOR_CONFIG_FILE} and {out / ENCODER_INFO_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
