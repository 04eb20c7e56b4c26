"""Benchmark top-K search per backend over random unit float16 prototypes.

Prints the machine, then one row per (prototype count, backend):

- build time, and per-query latency (p50 and mean, one query per call). Timed queries
  stop early once a row has used --max-seconds.
- "store": the float16 matrix that the index keeps.
- "backend": the memory of the backend's arrays. NumpySearch counts the shared store,
  FaissSearch its own float32 copy.
- "RSS peak delta": the process' peak resident memory during build and queries minus
  the resident memory before the build.

Other processes on the machine distort the latencies, so the load average is printed.
OpenBLAS and faiss (OpenMP) threads follow OPENBLAS_NUM_THREADS and OMP_NUM_THREADS.

    .venv/bin/python -m bench.search
    .venv/bin/python -m bench.search --sizes 1000,100000 --queries 20 --backends numpy
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from shared.search import FaissSearch, NumpySearch, SearchBackend

GENERATE_BLOCK_ROWS = 65536
WARMUP_QUERIES = 3
MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000", help="comma-separated prototype counts")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension (default 512)")
    parser.add_argument("--queries", type=int, default=50, help="timed queries per row (default 50)")
    parser.add_argument("--k", type=int, default=5, help="top-K per query (default 5)")
    parser.add_argument(
        "--max-seconds", type=float, default=10.0, help="time budget of the timed queries per row (default 10)"
    )
    parser.add_argument("--backends", default="numpy,faiss", help="comma-separated backends")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)

    sizes = [int(size) for size in args.sizes.split(",")]
    backends = [name.strip() for name in args.backends.split(",")]
    print_machine()

    header = (
        f"{'prototypes':>10} {'backend':>7} {'build s':>8} {'queries':>7} {'p50 ms':>8} {'mean ms':>8} "
        f"{'store MiB':>9} {'backend MiB':>11} {'RSS peak delta MiB':>18}"
    )
    print(header)
    print("-" * len(header))

    rng = np.random.default_rng(args.seed)
    queries = random_unit_rows(rng, args.queries + WARMUP_QUERIES, args.dim).astype(np.float32)

    for size in sizes:
        store = random_unit_rows(rng, size, args.dim)
        plant_ids = [f"{number:07d}" for number in range(size)]
        for backend in backends:
            row = measure(backend, store, plant_ids, queries, args.k, args.max_seconds)
            print(
                f"{size:>10,} {backend:>7} {row['build_s']:>8.2f} {row['queries']:>7} {row['p50_ms']:>8.2f} "
                f"{row['mean_ms']:>8.2f} {store.nbytes / MIB:>9.1f} {row['backend_bytes'] / MIB:>11.1f} "
                f"{row['rss_delta_bytes'] / MIB:>18.1f}",
                flush=True,
            )
        del store, plant_ids
        gc.collect()


def measure(
    backend: str,
    store: np.ndarray,
    plant_ids: list[str],
    queries: np.ndarray,
    k: int,
    max_seconds: float,
) -> dict[str, float]:
    gc.collect()
    reset_peak_rss()
    rss_before = read_status_kib("VmRSS") * 1024

    started = time.perf_counter()
    search = build(backend, store, plant_ids)
    build_s = time.perf_counter() - started

    for query in queries[:WARMUP_QUERIES]:
        search.search(query[np.newaxis], k)

    latencies: list[float] = []
    for query in queries[WARMUP_QUERIES:]:
        started = time.perf_counter()
        search.search(query[np.newaxis], k)
        latencies.append(time.perf_counter() - started)
        if sum(latencies) > max_seconds:
            break

    rss_peak = read_status_kib("VmHWM") * 1024
    result = {
        "build_s": build_s,
        "queries": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "backend_bytes": float(search.nbytes),
        "rss_delta_bytes": float(rss_peak - rss_before),
    }
    del search
    gc.collect()
    return result


def build(backend: str, store: np.ndarray, plant_ids: list[str]) -> SearchBackend:
    if backend == "numpy":
        return NumpySearch(store, plant_ids)
    if backend == "faiss":
        return FaissSearch(store, plant_ids)
    raise SystemExit(f"unknown backend {backend!r}; use numpy or faiss")


def random_unit_rows(rng: np.random.Generator, count: int, dimension: int) -> np.ndarray:
    """Return float16 [count, dimension] unit rows, generated in blocks to bound float32 scratch."""
    rows = np.empty((count, dimension), dtype=np.float16)
    for start in range(0, count, GENERATE_BLOCK_ROWS):
        stop = min(count, start + GENERATE_BLOCK_ROWS)
        block = rng.standard_normal((stop - start, dimension), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        rows[start:stop] = block
    return rows


def read_status_kib(field: str) -> int:
    """Return a memory field of /proc/self/status in KiB, or 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux 4.0+); without it the peak covers the whole run."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def print_machine() -> None:
    print(f"CPU: {cpu_model()}")
    print(f"cores: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))}), "
          f"load average at start: {os.getloadavg()[0]:.2f}")
    print(f"Python {platform.python_version()}, numpy {np.__version__} (BLAS: {blas_name()}), faiss {faiss_version()}")
    print(f"threads: faiss OpenMP {faiss_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_name() -> str:
    try:
        config = np.show_config(mode="dicts")
        return str(config["Build Dependencies"]["blas"]["name"])
    except (KeyError, TypeError, ValueError):
        return "unknown"


def faiss_version() -> str:
    try:
        import faiss
    except ImportError:
        return "not installed"
    return str(faiss.__version__)


def faiss_threads() -> str:
    try:
        import faiss
    except ImportError:
        return "n/a"
    return str(faiss.omp_get_max_threads())


if __name__ == "__main__":
    main()
