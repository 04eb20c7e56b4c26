"""Export the CLIP vision tower and projection to ONNX for the onnxruntime backend.

Usage: python -m shared.onnx_export --model ID_OR_DIR --out DIR [--no-int8] [--check-images DIR]

DIR receives vision_model.onnx (input pixel_values [batch, 3, H, W], output image_embeds
[batch, D], not normalised), preprocessor_config.json and encoder.json. The exported graph
is checked with onnx.checker and compared with the torch model on one batch before
vision_model.onnx takes its final name, so a folder that has that file is complete.

Unless --no-int8 is given, DIR also receives vision_model_int8.onnx: the same graph with
int8 weights made by onnxruntime's dynamic quantisation (activations are quantised per
batch at run time). Its largest cosine deviation from the float32 embeddings is measured
on the photos in --check-images, or on synthetic images without it, and recorded in
encoder.json. The encoder uses the int8 graph on the CPU under precision "auto" only when
that deviation is below shared.encoder.MAX_AUTO_DEVIATION.
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

from shared.encoder import ENCODER_INFO_FILE, ONNX_INT8_MODEL_FILE, ONNX_MODEL_FILE, l2_normalize, load_encoder
from shared.encoder_onnx import INPUT_NAME, INT8_INFO_KEY, OUTPUT_NAME
from shared.errors import ConfigError, PlantIdError
from shared.preprocess import PREPROCESSOR_CONFIG_FILE, PreprocessConfig, to_pixel_values

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


# Synthetic images used to measure the int8 deviation when no photos are given.
SYNTHETIC_CHECK_IMAGES = 16

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def quantize_int8(source: Path, dest: Path) -> None:
    """Write `source` with int8 MatMul weights to `dest` (onnxruntime dynamic quantisation, QInt8 weights).

    Only MatMul nodes are quantised. The patch embedding Conv stays in float32, because
    onnxruntime's ConvInteger took 18 % of the int8 graph's time on an AMD EPYC CPU and
    leaving it out made the graph 13 % faster with the same deviation (bench/RESULTS.md).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser logs a suggestion to run its pre-processing step through the root
    # logger. Its shape inference adds nothing for this graph, so the suggestion is hidden.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)


def synthetic_check_images(count: int, size: int = 256) -> list[Any]:
    """Return `count` seeded smooth colour images: bicubic upscales of 6 x 6 random pixels plus mild noise.

    They stand in for photos when no --check-images folder is given. Their colour areas
    and edges resemble photos more than white noise does.
    """
    from PIL import Image

    generator = np.random.default_rng(0)
    images = []
    for _ in range(count):
        coarse = Image.fromarray(generator.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = smooth + generator.integers(-8, 9, smooth.shape, dtype=np.int16)
        images.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return images


def load_check_images(folder: Path, limit: int = 32) -> list[Any]:
    """Decode up to `limit` photos from `folder` (sorted by name) for the int8 deviation check."""
    from shared.imaging import decode_image

    if not folder.is_dir():
        raise ConfigError(f"--check-images folder not found: {folder}")
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)[:limit]
    if not paths:
        raise ConfigError(f"no photos (jpg, jpeg, png, webp) in --check-images folder {folder}")
    return [decode_image(path.read_bytes()) for path in paths]


def max_cosine_deviation(float_path: Path, int8_path: Path, images: list[Any], preprocess: PreprocessConfig) -> float:
    """Return the largest 1 - cosine similarity between the two graphs' embeddings of `images`."""
    import onnxruntime as ort

    pixel_values = to_pixel_values(images, preprocess)
    embeddings = []
    for path in (float_path, int8_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (output,) = session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values})
        embeddings.append(l2_normalize(output))
    cosines = np.sum(embeddings[0] * embeddings[1], axis=1)
    return float(np.max(1.0 - cosines))


def export_encoder(
    model: str,
    out: str | Path,
    *,
    model_id: str | None = None,
    opset: int = DEFAULT_OPSET,
    int8: bool = True,
    check_images: Path | None = None,
) -> Path:
    """Export `model` (hub id or save_pretrained folder) into the ONNX encoder folder `out`.

    `model_id` overrides the model id recorded in encoder.json, which otherwise is `model`.
    With `int8`, the int8 graph is written too and its deviation from float32 is measured on
    the photos in `check_images` (synthetic images when None). Raises ModelLoadError when the
    model cannot be loaded and RuntimeError when the exported graph disagrees with torch.
    """
    import onnx

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(model, device="cpu", backend="torch", precision="float32")
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

    int8_record = None
    int8_partial = out / (ONNX_INT8_MODEL_FILE + ".partial")
    if int8:
        int8_record = _write_int8(partial_path, int8_partial, encoder.preprocess, check_images)
    else:
        # A graph left by an earlier export would not match the new float32 graph.
        (out / ONNX_INT8_MODEL_FILE).unlink(missing_ok=True)

    (out / PREPROCESSOR_CONFIG_FILE).write_text(json.dumps(encoder.preprocess.to_dict(), indent=2) + "\n", encoding="utf-8")
    info: dict[str, Any] = {
        "model_id": model_id or encoder.model_id,
        "revision": encoder.revision,
        "dimension": encoder.dimension,
        "exported_from": model,
        "exporter": exporter,
        "opset": opset,
        "test_model": encoder.is_test_model,
    }
    if int8_record is not None:
        info[INT8_INFO_KEY] = int8_record
    (out / ENCODER_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if int8_record is not None:
        os.replace(int8_partial, out / ONNX_INT8_MODEL_FILE)
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


def _write_int8(float_path: Path, int8_path: Path, preprocess: PreprocessConfig, check_images: Path | None) -> dict[str, Any]:
    """Quantise the float32 graph into `int8_path` and return the encoder.json record of it."""
    started = time.perf_counter()
    quantize_int8(float_path, int8_path)

    if check_images is not None:
        images = load_check_images(check_images)
        source = str(check_images)
    else:
        images = synthetic_check_images(SYNTHETIC_CHECK_IMAGES)
        source = "synthetic"
    deviation = max_cosine_deviation(float_path, int8_path, images, preprocess)

    logger.info(
        "wrote the int8 graph in %.1f s: max cosine deviation from float32 %.5f on %d %s images",
        time.perf_counter() - started,
        deviation,
        len(images),
        source,
    )
    return {
        "file": ONNX_INT8_MODEL_FILE,
        "quantization": "onnxruntime dynamic quantisation of MatMul nodes, int8 weights",
        "max_cosine_deviation": round(deviation, 6),
        "check_images": len(images),
        "check_source": source,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.onnx_export",
        description="Export the CLIP image encoder (vision tower and projection) to ONNX.",
    )
    parser.add_argument("--model", required=True, help="Hugging Face hub id or folder made by save_pretrained")
    parser.add_argument("--out", required=True, help="output folder for vision_model.onnx, preprocessor_config.json and encoder.json")
    parser.add_argument("--model-id", default=None, help="model id recorded in encoder.json (default: the --model value)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset version (default {DEFAULT_OPSET})")
    parser.add_argument("--no-int8", action="store_true", help="do not write the int8 graph vision_model_int8.onnx")
    parser.add_argument(
        "--check-images", type=Path, default=None,
        help="folder of photos (up to 32 are used) to measure the int8 graph's deviation on (default: synthetic images)",
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = export_encoder(
            args.model, args.out, model_id=args.model_id, opset=args.opset,
            int8=not args.no_int8, check_images=args.check_images,
        )
    except PlantIdError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1

    written = [out / ONNX_MODEL_FILE, out / PREPROCESSOR_CONFIG_FILE, out / ENCODER_INFO_FILE]
    if not args.no_int8:
        written.insert(1, out / ONNX_INT8_MODEL_FILE)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
