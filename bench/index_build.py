"""Wall time of building an index with `python -m indexer`, and where the time goes.

Usage: python -m bench.index_build --model DIR --images DIR [--csv FILE] [--augmentations 20]
       [--precision auto] [--breakdown]

Runs the indexer command line in a fresh process, as a user would, and prints its wall time
(Python start, imports, model load, scan, decoding, augmentation, encoding and writing the
index to a temporary folder). With --breakdown, the prototypes are built a second time in
this process and the time is split into encoding (preprocessing included) and the rest
(reading, decoding and augmenting the photos).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.encoder_throughput import cpu_model, load_average

REPO_ROOT = Path(__file__).resolve().parent.parent


class TimedEncoder:
    """Wrap an encoder and add up the seconds spent in encode()."""

    def __init__(self, encoder: object) -> None:
        self.encoder = encoder
        self.seconds = 0.0
        self.images = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.encoder, name)

    def encode(self, images, batch_size: int = 32):  # noqa: ANN001, ANN201 - mirrors ImageEncoder.encode
        started = time.perf_counter()
        embeddings = self.encoder.encode(images, batch_size=batch_size)  # type: ignore[attr-defined]
        self.seconds += time.perf_counter() - started
        self.images += len(images)
        return embeddings


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(args: argparse.Namespace, out: Path) -> tuple[float, float, str]:
    """Run `python -m indexer` and return (wall seconds, CPU seconds, its last stderr lines)."""
    command = [
        sys.executable, "-m", "indexer", "--images", str(args.images), "--out", str(out), "--model", args.model,
        "--augmentations", str(args.augmentations), "--precision", args.precision, "--no-progress",
    ]
    if args.csv is not None:
        command += ["--csv", str(args.csv)]

    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"the indexer failed with status {completed.returncode}:\n{completed.stderr[-3000:]}")
    return seconds, children_cpu_seconds() - cpu_before, "\n".join(completed.stderr.strip().splitlines()[-2:])


def run_breakdown(args: argparse.Namespace) -> tuple[float, TimedEncoder, int]:
    """Build the prototypes in this process; return (seconds, the timed encoder, prototypes built)."""
    from indexer.build import build_prototypes
    from indexer.scan import find_reference_photos
    from shared.augment import DEFAULT_RECIPE
    from shared.encoder import load_encoder

    encoder = TimedEncoder(load_encoder(args.model, precision=args.precision))
    photos = find_reference_photos(args.images).photos
    started = time.perf_counter()
    result = build_prototypes(photos, encoder, DEFAULT_RECIPE, args.augmentations, seed=0, progress=False)  # type: ignore[arg-type]
    return time.perf_counter() - started, encoder, len(result.plant_ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.index_build", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or hub id, as the indexer's --model")
    parser.add_argument("--images", required=True, type=Path, help="folder of reference photos")
    parser.add_argument("--csv", type=Path, default=None, help="species table, as the indexer's --csv")
    parser.add_argument("--augmentations", type=int, default=20, help="augmented views per photo (default: %(default)s)")
    parser.add_argument("--precision", default="auto", help="encoder precision (default: %(default)s)")
    parser.add_argument("--breakdown", action="store_true", help="also build in process and split the time")
    parser.add_argument("--out", default=None, help="keep the index at this location (default: a temporary folder)")
    args = parser.parse_args(argv)

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="index-build-") as temporary:
        wall, cpu, summary = run_cli(args, Path(args.out or Path(temporary) / "index"))
    breakdown = run_breakdown(args) if args.breakdown else None

    photos = len([path for path in args.images.iterdir() if not path.name.startswith(".")])
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; date: {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"load average (1 min) before: {load_before}, after: {load_average()}")
    print(f"model: {args.model} (precision {args.precision}); images: {args.images} ({photos} files); "
          f"{args.augmentations} augmentations per photo")
    print(summary)
    print(f"python -m indexer wall time: {wall:.1f} s; CPU time (user + system, all threads): {cpu:.1f} s, "
          f"so at least {cpu / (os.cpu_count() or 1):.1f} s of wall time with all {os.cpu_count()} CPUs free")
    if breakdown is not None:
        seconds, encoder, built = breakdown
        print(f"in process: {built} prototypes in {seconds:.1f} s; encoding {encoder.seconds:.1f} s "
              f"({encoder.images / encoder.seconds:.1f} images/s, precision {encoder.precision}); "
              f"reading, decoding and augmenting {seconds - encoder.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
