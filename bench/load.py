"""Load test of the HTTP API: concurrent clients send real photos to POST /identify.

    .venv/bin/python -m bench.load                                  # tiny test model, sample index
    .venv/bin/python -m bench.load --model DIR --index DEST --clients 8 --duration 60
    .venv/bin/python -m bench.load --views 1                        # more requests per second

The script starts `python -m handler serve` on a free port of the loopback interface, waits
until GET /health responds with 200, sends a few warm-up requests, and then runs `--clients`
threads that post the photos of tests/data/queries and tests/data/reference in turn until
`--duration` seconds have passed or `--max-requests` requests have completed. A sampler
thread reads the server's resident memory (VmRSS in /proc/<pid>/status) while they run.

It prints the latency percentiles and compares the server's peak RSS during the first
`--window` requests with its peak RSS during the last `--window` requests. When the run
completes fewer than twice `--window` requests, it compares the first and the last third
instead and says so. The exit status is 1 when any request failed or the RSS grew by more
than `--max-rss-growth` percent, else 0.

Without --model, a tiny randomly initialised CLIP is written to a temporary folder, and
without --index, the sample reference photos are indexed with that model. Requests go only
to 127.0.0.1, localhost or ::1: the script rejects any other host.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "tests" / "data"
DEFAULT_PHOTO_FOLDERS = (SAMPLE_DIR / "queries", SAMPLE_DIR / "reference")
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

SERVER_START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 120.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or hub id (default: a tiny test model written to a temporary folder)")
    parser.add_argument("--index", help="index location (default: the sample reference photos indexed with --model)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address for the server: 127.0.0.1, localhost or ::1 (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=60.0, help="length of the timed run in seconds (default: %(default)s)")
    parser.add_argument("--max-requests", type=int, default=50_000, help="stop after this many timed requests (default: %(default)s)")
    parser.add_argument("--views", type=int, default=8, help="views per photo, passed to the server as PLANT_ID_VIEWS (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=5, help="top-K of each request (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=16, help="untimed requests before the run (default: %(default)s)")
    parser.add_argument("--window", type=int, default=1000, help="requests per RSS comparison window (default: %(default)s)")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="largest accepted RSS growth in percent (default: %(default)s)")
    parser.add_argument("--rss-interval", type=float, default=0.25, help="seconds between RSS samples (default: %(default)s)")
    parser.add_argument("--photos", type=Path, action="append", help="folder of photos to send; repeat for more (default: tests/data/queries and tests/data/reference)")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.host not in LOOPBACK_HOSTS:
        parser.error(f"--host {args.host!r} is rejected: this load test only targets {', '.join(LOOPBACK_HOSTS)}")
    for name in ("clients", "max_requests", "views", "window", "top_k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.duration <= 3600:
        parser.error("--duration must be between 0 and 3600 seconds")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")


# Model, index and photos.


def prepare_model(args: argparse.Namespace, workdir: Path) -> str:
    if args.model:
        return args.model

    folder = workdir / "tiny-clip"
    print(f"writing the tiny test model to {folder}", flush=True)
    run_checked([sys.executable, "tests/tiny_model.py", str(folder)])
    return str(folder)


def prepare_index(args: argparse.Namespace, model: str, workdir: Path) -> str:
    if args.index:
        return args.index

    folder = workdir / "index"
    print(f"indexing {SAMPLE_DIR / 'reference'} into {folder}", flush=True)
    run_checked([
        sys.executable, "-m", "indexer", "--images", str(SAMPLE_DIR / "reference"),
        "--csv", str(SAMPLE_DIR / "species.csv"), "--out", str(folder), "--model", model, "--no-progress",
    ])
    return str(folder)


def run_checked(command: list[str]) -> None:
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {completed.returncode}:\n{completed.stderr[-3000:]}")


def load_photos(folders: list[Path]) -> list[tuple[str, bytes]]:
    photos = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in PHOTO_SUFFIXES:
                photos.append((path.name, path.read_bytes()))
    if not photos:
        raise SystemExit(f"no photos (jpg, png, webp) in {', '.join(map(str, folders))}")
    return photos


# The server process.


def free_port(host: str) -> int:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def start_server(args: argparse.Namespace, model: str, index: str, port: int, log_file) -> subprocess.Popen:
    # The command line sets the index and the model. Of the other settings, only the thread
    # count passes through, so a stray PLANT_ID_* variable cannot change the measurement.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PLANT_ID_") or key == "PLANT_ID_THREADS"}
    env["PLANT_ID_VIEWS"] = str(args.views)

    command = [
        sys.executable, "-m", "handler", "serve", "--host", args.host, "--port", str(port),
        "--index", index, "--model", model, "--log-level", "warning",
    ]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def wait_until_ready(client, process: subprocess.Popen, log_file) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}:\n{log_tail(log_file)}")
        try:
            response = client.get("/health")
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"the server did not respond to GET /health with 200 within {SERVER_START_TIMEOUT_S:g} s:\n{log_tail(log_file)}")


def log_tail(log_file, limit: int = 3000) -> str:
    log_file.flush()
    log_file.seek(0)
    return log_file.read().decode("utf-8", errors="replace")[-limit:]


def read_rss_kib(pid: int) -> int | None:
    """Return VmRSS of process `pid` in KiB, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


# The timed run.


@dataclass
class RunRecord:
    """Results shared by the client threads and the RSS sampler."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (completed requests, VmRSS KiB)
    completed: int = 0
    started: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def client_loop(url: str, photos: list[tuple[str, bytes]], offset: int, args: argparse.Namespace, record: RunRecord, deadline: float) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        for name, data in itertools.islice(itertools.cycle(photos), offset, None):
            with record.lock:
                if time.monotonic() >= deadline or record.started >= args.max_requests:
                    return
                record.started += 1

            started = time.perf_counter()
            try:
                response = client.post("/identify", files={"file": (name, data, "image/jpeg")}, params={"top_k": args.top_k})
                outcome = str(response.status_code)
            except httpx.HTTPError as error:
                outcome = type(error).__name__
            latency = time.perf_counter() - started

            with record.lock:
                record.latencies_s.append(latency)
                record.statuses[outcome] = record.statuses.get(outcome, 0) + 1
                record.completed += 1


def sample_rss(pid: int, record: RunRecord, interval: float, stop: threading.Event) -> None:
    while not stop.is_set():
        rss = read_rss_kib(pid)
        if rss is not None:
            with record.lock:
                record.rss_samples.append((record.completed, rss))
        stop.wait(interval)


def run_load(url: str, pid: int, photos: list[tuple[str, bytes]], args: argparse.Namespace) -> tuple[RunRecord, float]:
    record = RunRecord()
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(pid, record, args.rss_interval, stop), daemon=True)
    sampler.start()

    started = time.monotonic()
    deadline = started + args.duration
    # Each client starts at another photo, so concurrent requests carry different photos.
    clients = [
        threading.Thread(target=client_loop, args=(url, photos, number * len(photos) // args.clients, args, record, deadline), daemon=True)
        for number in range(args.clients)
    ]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    elapsed = time.monotonic() - started

    stop.set()
    sampler.join()
    rss = read_rss_kib(pid)
    if rss is not None:
        record.rss_samples.append((record.completed, rss))
    return record, elapsed


def warm_up(client, photos: list[tuple[str, bytes]], count: int) -> None:
    for name, data in itertools.islice(itertools.cycle(photos), count):
        response = client.post("/identify", files={"file": (name, data, "image/jpeg")})
        if response.status_code != 200:
            raise SystemExit(f"warm-up request with {name} failed: {response.status_code} {response.text[:500]}")


# Report.


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[position]


@dataclass(frozen=True)
class RssComparison:
    label: str
    first_kib: int
    last_kib: int

    @property
    def growth_percent(self) -> float:
        return (self.last_kib - self.first_kib) / self.first_kib * 100.0


def compare_rss(samples: list[tuple[int, int]], total: int, window: int) -> RssComparison | None:
    """Compare the peak RSS while the first requests completed with the peak while the last ones did."""
    if total >= 2 * window:
        size, label = window, f"first {window} vs last {window} requests"
    else:
        size = total // 3
        label = f"first vs last third ({size} requests each; the run had {total}, under 2 x {window})"
    if size < 1:
        return None

    first = [rss for completed, rss in samples if completed <= size]
    last = [rss for completed, rss in samples if completed >= total - size]
    if not first or not last:
        return None
    return RssComparison(label, max(first), max(last))


def print_header(args: argparse.Namespace, model: str, index: str, photos: int) -> None:
    from bench.search import cpu_model

    threads = os.environ.get("PLANT_ID_THREADS") or os.environ.get("OMP_NUM_THREADS") or "library default"
    print(f"CPU: {cpu_model()}, cores usable: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.2f}")
    print(f"Python {sys.version.split()[0]}, server threads: {threads}")
    print(f"model: {model}")
    print(f"index: {index}")
    print(
        f"{args.clients} clients, {args.views} views, top-K {args.top_k}, {photos} photos, "
        f"{args.duration:g} s or {args.max_requests} requests, {args.warmup} warm-up requests"
    )
    print(flush=True)


def print_report(record: RunRecord, elapsed: float, comparison: RssComparison | None, args: argparse.Namespace) -> bool:
    """Print the results as a Markdown table and return whether the run passed."""
    latencies_ms = [value * 1000.0 for value in record.latencies_s]
    errors = sum(count for status, count in record.statuses.items() if status != "200")
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(record.statuses.items()))

    rows = [
        ("requests", f"{record.completed}"),
        ("responses by status", statuses or "none"),
        ("errors", f"{errors}"),
        ("duration", f"{elapsed:.1f} s"),
        ("throughput", f"{record.completed / elapsed:.1f} requests/s"),
    ]
    if latencies_ms:
        rows += [
            ("latency p50", f"{statistics.median(latencies_ms):.1f} ms"),
            ("latency p95", f"{percentile(latencies_ms, 0.95):.1f} ms"),
            ("latency p99", f"{percentile(latencies_ms, 0.99):.1f} ms"),
            ("latency max", f"{max(latencies_ms):.1f} ms"),
        ]

    rss_ok = False
    if comparison is None:
        rows.append(("server RSS", "too few requests or samples to compare"))
    else:
        rss_ok = comparison.growth_percent <= args.max_rss_growth
        rows += [
            ("RSS windows", comparison.label),
            ("server RSS, first window peak", f"{comparison.first_kib / 1024:.1f} MiB"),
            ("server RSS, last window peak", f"{comparison.last_kib / 1024:.1f} MiB"),
            ("RSS growth", f"{comparison.growth_percent:+.1f} % (limit {args.max_rss_growth:g} %)"),
        ]

    passed = errors == 0 and record.completed > 0 and rss_ok
    rows.append(("verdict", "pass" if passed else "FAIL"))

    width = max(len(name) for name, _ in rows)
    print(f"| {'metric':<{width}} | value |")
    print(f"| {'-' * width} | --- |")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    return passed


def main(argv: list[str] | None = None) -> int:
    import httpx

    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)

    photos = load_photos(args.photos or list(DEFAULT_PHOTO_FOLDERS))
    with tempfile.TemporaryDirectory(prefix="plant-id-load-") as workdir, tempfile.TemporaryFile(prefix="plant-id-server-") as log_file:
        model = prepare_model(args, Path(workdir))
        index = prepare_index(args, model, Path(workdir))
        print_header(args, model, index, len(photos))

        port = free_port(args.host)
        url = base_url(args.host, port)
        process = start_server(args, model, index, port, log_file)
        try:
            with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
                wait_until_ready(client, process, log_file)
                warm_up(client, photos, args.warmup)

            print(f"server pid {process.pid} at {url}; running for up to {args.duration:g} s", flush=True)
            record, elapsed = run_load(url, process.pid, photos, args)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

        print()
        comparison = compare_rss(record.rss_samples, record.completed, args.window)
        passed = print_report(record, elapsed, comparison, args)
        if not passed and record.statuses.keys() - {"200"}:
            print(f"\nserver log tail:\n{log_tail(log_file)}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
