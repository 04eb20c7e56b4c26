"""Latency of the inference function: cold start, warm POST /identify and top-K search.

    .venv/bin/python -m bench.query_latency --model DIR --index DEST
    .venv/bin/python -m bench.query_latency --model DIR --index DEST --search-sizes 1000,100000

Prints the machine and the settings, then four tables:

1. Cold start, measured in a fresh Python process: imports of the application, model load
   (including the torch or onnxruntime import), index load (validation, search backend,
   Identifier) and the first POST /identify response, and whether torch was imported.
2. Warm POST /identify, p50 and p95 over the sample query photos (tests/data/queries by
   default, about 512 pixels on the long side) with 8 views and with 1 view. A
   12-megapixel JPEG, made by upscaling the first sample photo, is sent with 8 views too. Requests go
   through the FastAPI application in process (starlette's TestClient), so the numbers
   include multipart parsing, decoding, the views, the encoder and the search, but no
   network.
3. The parts of a warm 8-view query, called directly: decoding, shrinking and making the
   views (handler.query.Identifier.view_images), preprocessing and encoding them as one
   batch, and the search.
4. Top-K search over 1k, 100k and 1M random unit prototypes with the backend that
   shared.search.build_search picks for that size (bench/search.py compares backends in detail).

Thread counts follow PLANT_ID_THREADS or OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = REPO_ROOT / "tests" / "data" / "queries"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}

# Pixels of the large test photo, the size of a typical phone camera photo.
LARGE_PHOTO_PIXELS = 12_000_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.query_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or hub id, as PLANT_ID_MODEL")
    parser.add_argument("--index", required=True, help="index location (local folder or s3://bucket/prefix), as PLANT_ID_INDEX")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of query photos (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the photos per view count (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=5, help="top-K of each request (default: %(default)s)")
    parser.add_argument("--search-sizes", default="1000,100000,1000000", help="prototype counts of the search table (default: %(default)s)")
    parser.add_argument("--search-queries", type=int, default=20, help="timed queries per search size (default: %(default)s)")
    parser.add_argument("--precision", default="auto", help="encoder precision, as PLANT_ID_PRECISION (default: %(default)s)")
    parser.add_argument("--cold-start-child", action="store_true", help=argparse.SUPPRESS)
    return parser


# Cold start, in a child process so that nothing is imported or cached yet.


def cold_start_child(args: argparse.Namespace) -> None:
    """Measure the cold start steps in this fresh process and print them as one JSON line."""
    timings: dict[str, float] = {}

    started = time.perf_counter()
    from starlette.testclient import TestClient

    from handler.app import create_app
    from handler.config import Settings
    from handler.state import ServiceState
    timings["imports_s"] = time.perf_counter() - started

    settings = Settings(index_location=args.index, model=args.model, precision=args.precision)
    state = ServiceState(settings)

    started = time.perf_counter()
    from shared.encoder import load_encoder

    load_encoder(settings.model, precision=settings.precision)
    timings["model_load_s"] = time.perf_counter() - started

    # The encoder is cached now, so warm_up spends its time on the index.
    started = time.perf_counter()
    state.warm_up()
    timings["index_load_s"] = time.perf_counter() - started
    if not state.ready:
        raise SystemExit(f"the service did not become ready: {state.health()[1].get('reason')}")

    photo = query_photos(args.photos)[0]
    with TestClient(create_app(settings, state=state, warm_up=False)) as client:
        started = time.perf_counter()
        response = client.post("/identify", files={"file": (photo.name, photo.read_bytes())})
        timings["first_response_s"] = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"the first request failed with {response.status_code}: {response.text}")

    heavy = sorted(name for name in ("torch", "torchvision", "transformers") if name in sys.modules)
    print(json.dumps({**timings, "heavy_modules": heavy, "precision": state.encoder.precision}))


def measure_cold_start(args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable, "-m", "bench.query_latency", "--cold-start-child",
        "--model", args.model, "--index", args.index, "--photos", str(args.photos), "--precision", args.precision,
    ]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"cold start measurement failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# Warm requests.


def query_photos(folder: Path) -> list[Path]:
    photos = sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise SystemExit(f"no query photos (jpg, png, webp) in {folder}")
    return photos


def large_photo(photo: Path) -> bytes:
    """Return `photo` upscaled to about LARGE_PHOTO_PIXELS pixels as a JPEG of quality 90."""
    from PIL import Image

    image = Image.open(photo).convert("RGB")
    scale = math.sqrt(LARGE_PHOTO_PIXELS / (image.width * image.height))
    size = (round(image.width * scale), round(image.height * scale))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def measure_warm(args: argparse.Namespace, views: int, payloads: list[tuple[str, bytes]]) -> list[float]:
    """Return the latency in seconds of every POST /identify, after one warm-up request."""
    from starlette.testclient import TestClient

    from handler.app import create_app
    from handler.config import Settings

    settings = Settings(index_location=args.index, model=args.model, views=views, precision=args.precision)
    latencies = []

    with TestClient(create_app(settings)) as client:
        client.post("/identify", files={"file": payloads[0]})
        for _ in range(args.repeat):
            for payload in payloads:
                started = time.perf_counter()
                response = client.post("/identify", files={"file": payload}, params={"top_k": args.top_k})
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise SystemExit(f"{payload[0]}: {response.status_code} {response.text}")
    return latencies


def measure_parts(args: argparse.Namespace, payload: bytes, repeat: int) -> dict[str, float]:
    """Return the median seconds of each part of a warm 8-view query of one photo, called directly."""
    from handler.query import DEFAULT_VIEWS, Identifier
    from shared.encoder import load_encoder, mean_embedding
    from shared.imaging import decode_image
    from shared.index_store import load_index
    from shared.preprocess import view_source_side
    from shared.search import build_search

    encoder = load_encoder(args.model, precision=args.precision)
    index = load_index(args.index)
    identifier = Identifier(encoder, index, build_search(index.embeddings, index.plant_ids), views=DEFAULT_VIEWS)
    target_size = view_source_side(encoder.preprocess)

    parts: dict[str, list[float]] = {"decode": [], "views": [], "encode": [], "search": [], "total": []}
    for attempt in range(repeat + 1):
        started = time.perf_counter()
        image = decode_image(payload, target_size=target_size)
        decoded = time.perf_counter()
        views = identifier.view_images(image)
        viewed = time.perf_counter()
        query = mean_embedding(encoder.encode(views, batch_size=len(views)))
        encoded = time.perf_counter()
        identifier.search.search(query[None, :], args.top_k)
        searched = time.perf_counter()
        if attempt == 0:
            continue  # warm-up
        for name, seconds in (("decode", decoded - started), ("views", viewed - decoded), ("encode", encoded - viewed),
                              ("search", searched - encoded), ("total", searched - started)):
            parts[name].append(seconds)
    return {name: statistics.median(values) for name, values in parts.items()}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[position]


# Search.


def measure_search(sizes: list[int], queries: int, top_k: int) -> list[tuple[int, str, float]]:
    """Return (prototype count, backend, p50 ms) for each size, with build_search's choice of backend."""
    import numpy as np

    from bench.search import random_unit_rows
    from shared.search import build_search

    rng = np.random.default_rng(0)
    query_rows = random_unit_rows(rng, queries + 3, 512).astype(np.float32)
    rows = []
    for size in sizes:
        store = random_unit_rows(rng, size, 512)
        search = build_search(store, [f"{number:07d}" for number in range(size)])
        for query in query_rows[:3]:
            search.search(query[None, :], top_k)

        latencies = []
        for query in query_rows[3:]:
            started = time.perf_counter()
            search.search(query[None, :], top_k)
            latencies.append(time.perf_counter() - started)
        rows.append((size, search.name, statistics.median(latencies) * 1000))
        del store, search
    return rows


# Report.


def print_header(args: argparse.Namespace) -> None:
    from bench.search import cpu_model

    threads = os.environ.get("PLANT_ID_THREADS") or os.environ.get("OMP_NUM_THREADS") or "library default"
    print(f"CPU: {cpu_model()}, cores usable: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.2f}")
    print(f"Python {sys.version.split()[0]}, threads: {threads}, date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"model: {args.model} (precision {args.precision})")
    print(f"index: {args.index}")
    print(f"photos: {args.photos} x {args.repeat} passes, top-K {args.top_k}")
    print()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cold_start_child:
        cold_start_child(args)
        return 0

    print_header(args)

    cold = measure_cold_start(args)
    print("Cold start (fresh process)")
    print(f"  {'imports':<14} {cold['imports_s']:>8.2f} s")
    print(f"  {'model load':<14} {cold['model_load_s']:>8.2f} s")
    print(f"  {'index load':<14} {cold['index_load_s']:>8.2f} s")
    print(f"  {'first response':<14} {cold['first_response_s']:>8.2f} s")
    total = sum(value for key, value in cold.items() if key.endswith("_s"))
    print(f"  {'total':<14} {total:>8.2f} s")
    print(f"  encoder precision {cold['precision']}; torch, torchvision or transformers imported: "
          f"{', '.join(cold['heavy_modules']) or 'none'}")
    print()

    photos = query_photos(args.photos)
    payloads = [(photo.name, photo.read_bytes()) for photo in photos]
    large = large_photo(photos[0])
    print("Warm POST /identify (in process)")
    print(f"  {'photo':<22} {'views':>5} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8}")
    cases = [("sample photos", 8, payloads), ("sample photos", 1, payloads),
             (f"{LARGE_PHOTO_PIXELS // 1_000_000} MP JPEG {len(large) // 1000} kB", 8, [("large.jpg", large)] * len(payloads))]
    for label, views, case_payloads in cases:
        latencies = measure_warm(args, views, case_payloads)
        print(
            f"  {label:<22} {views:>5} {len(latencies):>8} {percentile(latencies, 0.5) * 1000:>8.1f} "
            f"{percentile(latencies, 0.95) * 1000:>8.1f}",
            flush=True,
        )
    print()

    print("Parts of a warm 8-view query, median ms (called directly, no HTTP)")
    print(f"  {'photo':<22} {'decode':>7} {'views':>7} {'encode':>7} {'search':>7} {'total':>7}")
    for label, payload in (("sample photo", payloads[0][1]), (f"{LARGE_PHOTO_PIXELS // 1_000_000} MP JPEG", large)):
        parts = measure_parts(args, payload, args.repeat * 4)
        print(f"  {label:<22} " + " ".join(f"{parts[name] * 1000:>7.1f}" for name in ("decode", "views", "encode", "search", "total")),
              flush=True)
    print()

    sizes = [int(size) for size in args.search_sizes.split(",") if size.strip()]
    print(f"Top-{args.top_k} search, one 512-dim query per call (random unit prototypes)")
    print(f"  {'prototypes':>10} {'backend':>7} {'p50 ms':>8}")
    for size, backend, p50_ms in measure_search(sizes, args.search_queries, args.top_k):
        print(f"  {size:>10,} {backend:>7} {p50_ms:>8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
