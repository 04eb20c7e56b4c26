"""Latency of the inference function: cold start, warm POST /identify and top-K search.

    .venv/bin/python -m bench.query_latency --model DIR --index DEST
    .venv/bin/python -m bench.query_latency --model DIR --index DEST --search-sizes 1000,100000

Prints the machine and the settings, then three tables:

1. Cold start, measured in a fresh Python process: imports of the application, model load
   (including the torch or onnxruntime import), index load (validation, search backend,
   Identifier) and the first POST /identify response.
2. Warm POST /identify, p50 and p95 over the sample query photos (tests/data/queries by
   default), with 8 views and with 1 view. Requests go through the FastAPI application in
   process (starlette's TestClient), so the numbers include multipart parsing, decoding,
   the views, the encoder and the search, but no network.
3. Top-K search over 1k, 100k and 1M random unit prototypes with the backend that
   shared.search.build_search picks for that size (bench/search.py compares backends in detail).

Thread counts follow PLANT_ID_THREADS or OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = REPO_ROOT / "tests" / "data" / "queries"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.query_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or hub id, as PLANT_ID_MODEL")
    parser.add_argument("--index", required=True, help="index location (local folder or s3://bucket/prefix), as PLANT_ID_INDEX")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of query photos (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the photos per view count (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=5, help="top-K of each request (default: %(default)s)")
    parser.add_argument("--search-sizes", default="1000,100000,1000000", help="prototype counts of the search table (default: %(default)s)")
    parser.add_argument("--search-queries", type=int, default=20, help="timed queries per search size (default: %(default)s)")
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

    settings = Settings(index_location=args.index, model=args.model)
    state = ServiceState(settings)

    started = time.perf_counter()
    from shared.encoder import load_encoder

    load_encoder(settings.model)
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

    print(json.dumps(timings))


def measure_cold_start(args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable, "-m", "bench.query_latency", "--cold-start-child",
        "--model", args.model, "--index", args.index, "--photos", str(args.photos),
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


def measure_warm(args: argparse.Namespace, views: int, photos: list[Path]) -> list[float]:
    """Return the latency in seconds of every POST /identify, after one warm-up request."""
    from starlette.testclient import TestClient

    from handler.app import create_app
    from handler.config import Settings

    settings = Settings(index_location=args.index, model=args.model, views=views)
    payloads = [(photo.name, photo.read_bytes()) for photo in photos]
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
    print(f"Python {sys.version.split()[0]}, threads: {threads}")
    print(f"model: {args.model}")
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
    print(f"  {'total':<14} {sum(cold.values()):>8.2f} s")
    print()

    photos = query_photos(args.photos)
    print("Warm POST /identify (in process)")
    print(f"  {'views':>5} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for views in (8, 1):
        latencies = measure_warm(args, views, photos)
        print(
            f"  {views:>5} {len(latencies):>8} {percentile(latencies, 0.5) * 1000:>8.1f} "
            f"{percentile(latencies, 0.95) * 1000:>8.1f}",
            flush=True,
        )
    print()

    sizes = [int(size) for size in args.search_sizes.split(",") if size.strip()]
    print(f"Top-{args.top_k} search, one 512-dim query per call (random unit prototypes)")
    print(f"  {'prototypes':>10} {'backend':>7} {'p50 ms':>8}")
    for size, backend, p50_ms in measure_search(sizes, args.search_queries, args.top_k):
        print(f"  {size:>10,} {backend:>7} {p50_ms:>8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
