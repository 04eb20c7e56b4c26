"""Speed and accuracy of the encoder's precisions on this machine's CPU, measured in one run.

Usage: python -m bench.encoder_variants [--photos DIR] [--count 32] [--rounds 5]

Variants, each loaded through shared.encoder.load_encoder (so preprocessing is included):
torch float32, torch bfloat16, torch int8 (dynamic quantisation of every Linear layer),
ONNX Runtime float32 and ONNX Runtime int8 (onnxruntime dynamic quantisation, written by
shared.onnx_export).

Speed uses a full-size ViT-B/32 vision tower (hidden size 768, 12 layers, patch 32) with
RANDOM weights: the arithmetic is the same as with trained weights, the embeddings are
not. Each round times every variant once, in turn, on a batch of 8 query views and a
batch of 21 reference views, so a change in machine load affects all variants alike.
The table reports the fastest round, the best estimate of the speed on an idle machine
when other jobs share it, and the median round beside it.

Accuracy is the largest 1 - cosine similarity to the float32 torch embedding, over the 8
query views of each of --count photos (each photo's views form one batch, as on the query
path), and over the query embeddings (the normalised mean of the 8 views). It is measured
twice: with the random full-size model and with the tiny test model of tests/tiny_model.py.
Neither has trained weights, so the deviation of trained CLIP weights may differ.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench.encoder_throughput import cpu_model, load_average, print_table, write_random_vit_b32

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "plants" / "queries"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

# (label, backend, precision) of every variant, the reference first.
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("torch float32", "torch", "float32"),
    ("torch bfloat16", "torch", "bfloat16"),
    ("torch int8 (dynamic)", "torch", "int8"),
    ("onnxruntime float32", "onnx", "float32"),
    ("onnxruntime int8 (dynamic)", "onnx", "int8"),
)

QUERY_VIEWS = 8
REFERENCE_VIEWS = 21


@dataclass
class VariantResult:
    label: str
    backend: str
    precision: str
    load_seconds: float = 0.0
    query_batch_seconds: list[float] = field(default_factory=list)
    reference_batch_seconds: list[float] = field(default_factory=list)
    view_deviation: dict[str, float] = field(default_factory=dict)
    query_deviation: dict[str, float] = field(default_factory=dict)


def read_photos(folder: Path, count: int) -> list[Image.Image]:
    """Decode the first `count` photos of `folder` (sorted by name), shrunk as the query path does."""
    from shared.imaging import decode_image
    from shared.preprocess import PreprocessConfig, shrink_for_views

    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)[:count]
    if not paths:
        raise SystemExit(f"no photos (jpg, jpeg, png, webp) in {folder}")
    return [shrink_for_views(decode_image(path.read_bytes()), PreprocessConfig()) for path in paths]


def query_view_batches(photos: Sequence[Image.Image]) -> list[list[Image.Image]]:
    """Return the 8 query views of each photo, made at the model's resize target as the query path makes them."""
    from shared.augment import query_views
    from shared.preprocess import PreprocessConfig, resized_size

    shortest_edge = PreprocessConfig().shortest_edge
    return [query_views(photo, QUERY_VIEWS, size=resized_size(photo.width, photo.height, shortest_edge)) for photo in photos]


def load_variants(torch_dir: Path, onnx_dir: Path, results: list[VariantResult]) -> tuple[dict[str, object], dict[str, float]]:
    """Load every variant; return the encoders and their load times in seconds, by label."""
    from shared.encoder import load_encoder

    encoders, seconds = {}, {}
    for result in results:
        folder = torch_dir if result.backend == "torch" else onnx_dir
        started = time.perf_counter()
        encoders[result.label] = load_encoder(str(folder), device="cpu", backend=result.backend, precision=result.precision)
        seconds[result.label] = time.perf_counter() - started
    return encoders, seconds


def time_once(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def measure_speed(encoders: dict[str, object], results: list[VariantResult], photos: Sequence[Image.Image], rounds: int) -> None:
    """Time one 8-view and one 21-view batch per variant per round, variants interleaved."""
    query_batch = query_view_batches(photos[:1])[0]
    reference_batch = [photos[index % len(photos)] for index in range(REFERENCE_VIEWS)]

    for encoder in encoders.values():
        encoder.encode(query_batch, batch_size=QUERY_VIEWS)  # type: ignore[attr-defined]
        encoder.encode(reference_batch, batch_size=REFERENCE_VIEWS)  # type: ignore[attr-defined]

    for round_number in range(rounds):
        for result in results:
            encoder = encoders[result.label]
            result.query_batch_seconds.append(time_once(lambda: encoder.encode(query_batch, batch_size=QUERY_VIEWS)))
            result.reference_batch_seconds.append(
                time_once(lambda: encoder.encode(reference_batch, batch_size=REFERENCE_VIEWS))
            )
        logger.info("speed round %d of %d done (load average %s)", round_number + 1, rounds, load_average())


def measure_deviation(
    encoders: dict[str, object], results: list[VariantResult], batches: Sequence[list[Image.Image]], model_name: str
) -> None:
    """Record each variant's largest cosine deviation from the first (float32 torch) variant."""
    from shared.encoder import mean_embedding

    embeddings = {
        result.label: [encoders[result.label].encode(views, batch_size=QUERY_VIEWS) for views in batches]  # type: ignore[attr-defined]
        for result in results
    }
    reference = embeddings[results[0].label]
    for result in results:
        view_cosines = [np.sum(ref * got, axis=1) for ref, got in zip(reference, embeddings[result.label])]
        query_cosines = [
            float(np.dot(mean_embedding(ref), mean_embedding(got))) for ref, got in zip(reference, embeddings[result.label])
        ]
        result.view_deviation[model_name] = float(1.0 - np.min(np.concatenate(view_cosines)))
        result.query_deviation[model_name] = float(1.0 - min(query_cosines))


def prepare_models(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Write the random full-size and the tiny model, each as a torch folder and an ONNX export."""
    from shared.onnx_export import export_encoder
    from tests.tiny_model import write_tiny_clip

    models = {}
    for name, writer in (("full", write_random_vit_b32), ("tiny", write_tiny_clip)):
        torch_dir = folder / f"{name}-torch"
        onnx_dir = folder / f"{name}-onnx"
        torch_dir.mkdir()
        writer(torch_dir)
        export_encoder(str(torch_dir), onnx_dir, model_id=f"random-{name}")
        models[name] = (torch_dir, onnx_dir)
    return models


def print_report(results: list[VariantResult], args: argparse.Namespace, photo_count: int, load_before: str) -> None:
    import onnxruntime
    import torch

    from shared.encoder import MAX_AUTO_DEVIATION, configured_threads, cpu_has_native_bf16

    threads = configured_threads()
    print()
    print("CLIP ViT-B/32 image encoder precisions (speed: RANDOM full-size weights; deviation: see the two columns)")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs, native bfloat16 (avx512_bf16 or amx_bf16): {cpu_has_native_bf16()}")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); onnxruntime {onnxruntime.__version__} "
          f"(intra-op threads: {threads if threads is not None else 'default'}); Python {sys.version.split()[0]}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; load average (1 min) before: {load_before}, after: {load_average()}")
    print(f"speed: best and median of {args.rounds} interleaved rounds, speed-ups from the best; a batch of "
          f"{QUERY_VIEWS} query views and one of {REFERENCE_VIEWS} reference views, preprocessing included")
    print(f"deviation: max 1 - cosine to torch float32 over {photo_count} photos x {QUERY_VIEWS} views "
          f"(per view) and over their query embeddings (per query); the limit for 'auto' is {MAX_AUTO_DEVIATION}")
    print()

    base_query = min(results[0].query_batch_seconds)
    base_reference = min(results[0].reference_batch_seconds)
    rows = []
    for result in results:
        query_ms = min(result.query_batch_seconds) * 1000
        reference_s = min(result.reference_batch_seconds)
        rows.append([
            result.label,
            f"{result.load_seconds:.2f}",
            f"{query_ms:.0f} / {statistics.median(result.query_batch_seconds) * 1000:.0f}",
            f"{REFERENCE_VIEWS / reference_s:.1f} / {REFERENCE_VIEWS / statistics.median(result.reference_batch_seconds):.1f}",
            f"{base_query * 1000 / query_ms:.2f}x",
            f"{base_reference / reference_s:.2f}x",
            f"{result.view_deviation.get('full', 0.0):.5f}",
            f"{result.query_deviation.get('full', 0.0):.5f}",
            f"{result.view_deviation.get('tiny', 0.0):.5f}",
            f"{result.query_deviation.get('tiny', 0.0):.5f}",
        ])
    print_table(rows, [
        "variant", "load s", f"{QUERY_VIEWS} views ms (best / median)", "images/s at 21 (best / median)", f"speed-up ({QUERY_VIEWS})",
        "speed-up (21)", "full: max dev/view", "full: max dev/query", "tiny: max dev/view", "tiny: max dev/query",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encoder_variants", description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of real photos for the deviation (default: %(default)s)")
    parser.add_argument("--count", type=int, default=32, help="photos used for the deviation (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default: %(default)s)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from shared.encoder import clear_encoder_cache

    load_before = load_average()
    photos = read_photos(args.photos, args.count)
    batches = query_view_batches(photos)

    with tempfile.TemporaryDirectory(prefix="encoder-variants-") as temporary:
        models = prepare_models(Path(temporary))
        results = [VariantResult(label, backend, precision) for label, backend, precision in VARIANTS]

        for name in ("tiny", "full"):
            torch_dir, onnx_dir = models[name]
            # The export loaded the float32 torch model: load every variant afresh to time it.
            clear_encoder_cache()
            encoders, load_seconds = load_variants(torch_dir, onnx_dir, results)
            if name == "full":
                for result in results:
                    result.load_seconds = load_seconds[result.label]
                measure_speed(encoders, results, photos, args.rounds)
            measure_deviation(encoders, results, batches, name)

    print_report(results, args, len(photos), load_before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
