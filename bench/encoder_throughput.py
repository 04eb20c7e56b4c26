"""Throughput of the full-size ViT-B/32 CLIP image encoder on this machine's CPU.

Usage: python -m bench.encoder_throughput [--batch-sizes 1,8,21,32] [--index-images DIR | --no-index]

Builds a randomly initialised model with the ViT-B/32 vision configuration (hidden size 768,
12 layers, patch 32, 224-pixel input, projection 512). Random weights cost the same
arithmetic as trained ones, so speed is representative, but the embeddings mean nothing. The
model is saved and exported to ONNX in a temporary folder and loaded through
shared.encoder.load_encoder, so both backends run the product's code path, preprocessing
included. Achieved GFLOP/s counts 8.8 GFLOP per image (about 4.4 G multiply-adds at 224
pixels) and is printed beside the fp32 matrix-multiply rate of torch.matmul measured in the
same run. Both backends run in the precision that "auto" picks on this machine (the
backend column names it), and bench/encoder_variants.py compares all precisions.
It also times indexer.build.build_prototypes over every reference photo in --index-images
(the sample photos by default) with the same model. Thread counts follow PLANT_ID_THREADS or OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# Floating-point operations of one 224 x 224 image through ViT-B/32: about 4.4 G
# multiply-adds (12 layers over 50 tokens of width 768, plus the patch embedding), times two.
GFLOP_PER_IMAGE = 8.8
MATMUL_SIZE = 2048


@dataclass
class Measurement:
    backend: str
    batch_size: int
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def gflops(self) -> float:
        return self.images_per_second * GFLOP_PER_IMAGE


SAMPLE_REFERENCE_PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference"

def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """Return the 1-minute load average, or "unknown" where the OS has none."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return f"{os.getloadavg()[0]:.2f}"


def time_repeated(run: Callable[[], object], min_seconds: float, min_repeats: int) -> tuple[int, float]:
    """Call `run` once to warm up, then until min_seconds and min_repeats are both reached."""
    run()
    repeats = 0
    started = time.perf_counter()
    while True:
        run()
        repeats += 1
        elapsed = time.perf_counter() - started
        if repeats >= min_repeats and elapsed >= min_seconds:
            return repeats, elapsed


def matmul_gflops(min_seconds: float) -> float:
    """Measure fp32 torch.matmul of two MATMUL_SIZE x MATMUL_SIZE matrices, in GFLOP/s."""
    import torch

    generator = torch.Generator().manual_seed(0)
    left = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator)
    right = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator)
    repeats, seconds = time_repeated(lambda: torch.matmul(left, right), min_seconds, min_repeats=3)
    return 2 * MATMUL_SIZE**3 * repeats / seconds / 1e9


def write_random_vit_b32(folder: Path) -> None:
    """Save a randomly initialised ViT-B/32 vision model and CLIP image processor config."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              patch_size=32, image_size=224, projection_dim=512)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)


def sample_images(count: int) -> list[Image.Image]:
    """Return random-noise RGB photos of 512 x 384 pixels, a typical reference photo size."""
    generator = np.random.default_rng(0)
    return [Image.fromarray(generator.integers(0, 256, (384, 512, 3), dtype=np.uint8)) for _ in range(count)]


def measure_encoder(encoder, backend: str, batch_sizes: Sequence[int], min_seconds: float) -> list[Measurement]:
    measurements = []
    for batch_size in batch_sizes:
        images = sample_images(batch_size)
        repeats, seconds = time_repeated(lambda: encoder.encode(images, batch_size=batch_size), min_seconds, 2)
        measurement = Measurement(backend, batch_size, repeats * batch_size, seconds)
        logger.info("%s batch %d: %.1f images/s", backend, batch_size, measurement.images_per_second)
        measurements.append(measurement)
    return measurements


def time_index_build(encoder, folder: Path, augmentations: int) -> tuple[int, int, float]:
    """Build prototypes for every reference photo in `folder` and return (built, skipped, seconds)."""
    from indexer.build import build_prototypes
    from indexer.scan import find_reference_photos
    from shared.augment import DEFAULT_RECIPE

    scan = find_reference_photos(folder)
    started = time.perf_counter()
    result = build_prototypes(scan.photos, encoder, DEFAULT_RECIPE, augmentations, seed=0, progress=False)
    return len(result.plant_ids), len(result.skipped) + len(scan.skipped), time.perf_counter() - started


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(row[column])) for row in [header, *rows]) for column in range(len(header))]
    print("| " + " | ".join(name.ljust(width) for name, width in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell).rjust(width) for cell, width in zip(row, widths)) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encoder_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,21,32", help="comma-separated batch sizes (default: %(default)s)")
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated backends (default: %(default)s)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed seconds per measurement (default: %(default)s)")
    parser.add_argument("--index-images", type=Path, default=SAMPLE_REFERENCE_PHOTOS, help="folder of reference photos to build prototypes for (default: the sample photos in tests/data/reference)")
    parser.add_argument("--no-index", dest="index_images", action="store_const", const=None, help="skip the indexing measurement")
    parser.add_argument("--augmentations", type=int, default=20, help="augmented views per reference photo for --index-images (default: %(default)s)")
    args = parser.parse_args(argv)
    batch_sizes = [int(value) for value in args.batch_sizes.split(",")]
    backends = [value.strip() for value in args.backends.split(",")]

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import onnxruntime
    import torch

    from shared.encoder import configured_threads, load_encoder
    from shared.onnx_export import export_encoder

    load_before = load_average()
    measurements: list[Measurement] = []
    index_timing = None
    with tempfile.TemporaryDirectory(prefix="vit-b32-") as temporary:
        model_dir = Path(temporary) / "torch"
        onnx_dir = Path(temporary) / "onnx"
        started = time.perf_counter()
        write_random_vit_b32(model_dir)
        torch_encoder = load_encoder(str(model_dir), device="cpu", backend="torch")
        logger.info("built and loaded the random ViT-B/32 in %.1f s", time.perf_counter() - started)

        matmul_rate = matmul_gflops(args.min_seconds / 2)

        if "torch" in backends:
            measurements += measure_encoder(torch_encoder, f"torch {torch_encoder.precision}", batch_sizes, args.min_seconds)

        if "onnx" in backends:
            started = time.perf_counter()
            export_encoder(str(model_dir), onnx_dir, model_id="random-vit-b32")
            logger.info("exported to ONNX in %.1f s", time.perf_counter() - started)
            onnx_encoder = load_encoder(str(onnx_dir), device="cpu", backend="onnx")
            measurements += measure_encoder(onnx_encoder, f"onnx {onnx_encoder.precision}", batch_sizes, args.min_seconds)

        if args.index_images is not None:
            index_timing = time_index_build(torch_encoder, args.index_images, args.augmentations)

    threads = configured_threads()
    print()
    print("CLIP ViT-B/32 image encoder throughput (RANDOM weights: speed only, embeddings are meaningless)")
    print(f"CPU: {cpu_model()}; torch threads: {torch.get_num_threads()}; "
          f"onnxruntime intra-op threads: {threads if threads is not None else 'default'}")
    print(f"torch {torch.__version__}; onnxruntime {onnxruntime.__version__}; "
          f"images: 512x384 PIL, preprocessing included; {GFLOP_PER_IMAGE} GFLOP per image")
    print(f"fp32 torch.matmul {MATMUL_SIZE}x{MATMUL_SIZE}: {matmul_rate:.1f} GFLOP/s")
    print(f"load average (1 min) before: {load_before}, after: {load_average()}, CPUs: {os.cpu_count()} "
          "(other processes on the machine lower every number)")
    print()
    rows = [
        [m.backend, str(m.batch_size), f"{m.images_per_second:.1f}", f"{1000 / m.images_per_second:.1f}",
         f"{m.gflops:.1f}", f"{100 * m.gflops / matmul_rate:.0f}%"]
        for m in measurements
    ]
    print_table(rows, ["backend", "batch", "images/s", "ms/image", "GFLOP/s", "of matmul"])

    if index_timing is not None:
        built, skipped, seconds = index_timing
        views = args.augmentations + 1
        print()
        print(f"index build (torch, {views} views per photo): {built} prototypes, {skipped} skipped, "
              f"{seconds:.1f} s wall, {seconds / max(built, 1):.2f} s per photo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
