"""The whole service on one machine: S3 (moto), an index, the API, the web page and S3 events.

    python -m infra.local_stack --model ID_OR_DIR [--images DIR] [--csv FILE] [--web-port 8080] ...

Steps, all on 127.0.0.1:

1. start a moto S3 server (tests.s3_server.S3Server) and point boto3 in this process at it;
2. create the upload bucket with CORS for the page's origin, and an index bucket;
3. build the index of the reference photos into the index bucket with the real indexer;
4. serve the API under uvicorn with PLANT_ID_CORS_ORIGINS set to the page's origin;
5. serve web/ with a config.js that points at the API;
6. poll uploads/ and deliver each new object to handler.lambda_entry.handler as an S3
   ObjectCreated event, so results/<key>.json appears as on AWS.

Ctrl-C or SIGTERM stops everything, the moto process included.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.static_site import StaticSite
from infra.upload_poller import UploadPoller
from shared.errors import ModelLoadError, PlantIdError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = REPO_ROOT / "tests" / "data" / "reference"
DEFAULT_CSV = REPO_ROOT / "tests" / "data" / "species.csv"
WEB_DIR = REPO_ROOT / "web"
DEFAULT_MODEL = "openai/clip-vit-base-patch32"

HOST = "127.0.0.1"
UPLOAD_BUCKET = "plant-id-uploads"
INDEX_BUCKET = "plant-id-index"
INDEX_PREFIX = "index"
UPLOAD_PREFIX = "uploads/"
API_START_TIMEOUT_S = 120.0

MODEL_HINT = (
    "Pass a local model folder instead: make serve MODEL=DIR (or --model DIR). "
    "`python tests/tiny_model.py DIR` writes a tiny test model into DIR; it runs the whole "
    "stack, but its rankings mean nothing."
)


class StackError(Exception):
    """A failed step of the local stack. The message names the step and the fix."""


@dataclass(frozen=True)
class StackOptions:
    model: str = DEFAULT_MODEL
    images: Path = DEFAULT_IMAGES
    csv: Path | None = DEFAULT_CSV
    augmentations: int = 20
    s3_port: int = 0
    api_port: int = 8000
    web_port: int = 8080
    max_upload_bytes: int | None = None
    poll_interval_s: float = 1.0
    web_dir: Path = WEB_DIR

    @property
    def index_location(self) -> str:
        return f"s3://{INDEX_BUCKET}/{INDEX_PREFIX}"


@dataclass
class LocalStack:
    """The running pieces. Build it with LocalStack.start(options) and end it with stop()."""

    options: StackOptions
    s3: Any = None
    api: ApiServer | None = None
    site: StaticSite | None = None
    poller: UploadPoller | None = None
    api_socket: socket.socket | None = None
    saved_environment: dict[str, str | None] = field(default_factory=dict)

    @property
    def web_url(self) -> str:
        return f"{self.site.url}/"

    @property
    def api_url(self) -> str:
        return self.api.url

    @classmethod
    def start(cls, options: StackOptions) -> LocalStack:
        """Start every piece in order; on any failure (or Ctrl-C) stop what was started and raise."""
        stack = cls(options)
        try:
            stack._start_all()
        except BaseException:
            stack.stop()
            raise
        return stack

    def _start_all(self) -> None:
        from tests.s3_server import S3Server

        options = self.options

        # Both ports are taken first, so a port in use fails before the slow steps.
        api_socket = bind_socket(options.api_port)
        self.api_socket = api_socket
        self.site = bind_site(options.web_dir, socket_url(api_socket), options.web_port)
        origin = self.site.url

        check_model(options.model)
        self.s3 = S3Server.start(port=options.s3_port or None)
        self.saved_environment = apply_environment(self.s3.env())

        create_buckets(self.s3.client(), origin)
        build_index(options)

        self.saved_environment.update(apply_environment(api_environment(options, origin)))
        self.api = ApiServer(api_socket)
        self.api.start()
        self.site.start()

        self.poller = UploadPoller(self.s3.client(), UPLOAD_BUCKET, UPLOAD_PREFIX, lambda_handler(self.api.app), options.poll_interval_s)
        self.poller.start()

    def stop(self) -> None:
        """Stop every piece that runs, in reverse order, and restore the environment."""
        if self.poller is not None:
            self.poller.stop()
            self.poller = None
        if self.site is not None:
            self.site.stop()
        if self.api is not None:
            self.api.stop()
        elif self.api_socket is not None:
            self.api_socket.close()
        if self.s3 is not None:
            self.s3.stop()
        restore_environment(self.saved_environment)
        self.saved_environment = {}


# Environment.


def apply_environment(values: Mapping[str, str]) -> dict[str, str | None]:
    """Set environment variables of this process; return their previous values for restore_environment."""
    from shared import storage

    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    storage.clear_s3_client_cache()
    return previous


def restore_environment(previous: Mapping[str, str | None]) -> None:
    from shared import storage

    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    storage.clear_s3_client_cache()


def api_environment(options: StackOptions, origin: str) -> dict[str, str]:
    """Return the PLANT_ID_* settings of the local API."""
    values = {
        "PLANT_ID_INDEX": options.index_location,
        "PLANT_ID_MODEL": options.model,
        "PLANT_ID_UPLOAD_BUCKET": UPLOAD_BUCKET,
        "PLANT_ID_UPLOAD_PREFIX": UPLOAD_PREFIX,
        "PLANT_ID_CORS_ORIGINS": origin,
    }
    if options.max_upload_bytes is not None:
        values["PLANT_ID_MAX_UPLOAD_BYTES"] = str(options.max_upload_bytes)
    return values


# Steps.


def check_model(model: str) -> None:
    """Load the encoder once (it stays cached for the indexer and the API) or raise StackError with the fix."""
    from shared.encoder import load_encoder

    logger.info("loading the model %s", model)
    try:
        load_encoder(model)
    except ModelLoadError as error:
        raise StackError(f"{error.message}\n{MODEL_HINT}") from error


def create_buckets(client: Any, origin: str) -> None:
    """Create the index bucket and the upload bucket, whose CORS rule lets the page POST photos."""
    client.create_bucket(Bucket=INDEX_BUCKET)
    client.create_bucket(Bucket=UPLOAD_BUCKET)
    set_upload_cors(client, [origin])
    logger.info("created buckets %s and %s", INDEX_BUCKET, UPLOAD_BUCKET)


def set_upload_cors(client: Any, origins: Sequence[str]) -> None:
    """Let pages from `origins` send presigned POST uploads (and PUT or GET) to the upload bucket."""
    client.put_bucket_cors(
        Bucket=UPLOAD_BUCKET,
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedOrigins": list(origins),
                    "AllowedMethods": ["POST", "PUT", "GET"],
                    "AllowedHeaders": ["*"],
                    "MaxAgeSeconds": 600,
                }
            ]
        },
    )
    logger.info("upload bucket %s accepts uploads from %s", UPLOAD_BUCKET, ", ".join(origins))


def build_index(options: StackOptions) -> None:
    """Index the reference photos into the index bucket with the indexer's command line."""
    from indexer.cli import main as indexer_main

    argv = [
        "--images", str(options.images),
        "--out", options.index_location,
        "--model", options.model,
        "--augmentations", str(options.augmentations),
        "--no-progress",
    ]
    if options.csv is not None:
        argv += ["--csv", str(options.csv)]

    logger.info("building the index of %s into %s", options.images, options.index_location)
    started = time.perf_counter()
    code = indexer_main(argv)
    if code != 0:
        raise StackError(f"building the index of {options.images} failed (exit code {code}); see the messages above")
    logger.info("built the index in %.1f s", time.perf_counter() - started)


def bind_socket(port: int) -> socket.socket:
    """Bind a listening TCP socket on 127.0.0.1 (port 0 picks a free port) or raise StackError."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((HOST, port))
    except OSError as error:
        listener.close()
        raise StackError(f"cannot listen on {HOST}:{port}: {error.strerror}; choose another port") from error
    listener.listen(128)
    return listener


def bind_site(folder: Path, api_url: str, port: int) -> StaticSite:
    """Bind the static site of `folder` on 127.0.0.1 or raise StackError when the port is taken."""
    try:
        return StaticSite(folder, api_url, HOST, port)
    except OSError as error:
        raise StackError(f"cannot listen on {HOST}:{port}: {error.strerror}; choose another port") from error


def socket_url(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://{host}:{port}"


def lambda_handler(app: Any) -> Any:
    """Point the Lambda entry point at `app` and return its handler function."""
    from handler import lambda_entry

    lambda_entry.configure(app)
    return lambda_entry.handler


class ApiServer:
    """The API under uvicorn in a thread, on an already bound socket."""

    def __init__(self, listener: socket.socket) -> None:
        import uvicorn

        from handler.app import create_app

        self.listener = listener
        self.url = socket_url(listener)
        self.app = create_app()
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, name="api", daemon=True)

    def start(self, timeout_s: float = API_START_TIMEOUT_S) -> None:
        """Start uvicorn and return once the model and the index are loaded and it accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise StackError("the API stopped during start-up; see the messages above")
            if time.monotonic() > deadline:
                raise StackError(f"the API did not start within {timeout_s:g} s")
            time.sleep(0.05)

        status, body = self.app.state.service.health()
        if status != 200:
            raise StackError(f"the API cannot serve: {body.get('reason')}")
        logger.info("API serving index version %s at %s", body.get("index_version"), self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self.listener.close()
        logger.info("API at %s stopped", self.url)


# Command line.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local_stack",
        description="Run S3 (moto), the API, the web page and S3 upload events on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("--model", default=os.environ.get("MODEL") or DEFAULT_MODEL, help="Hugging Face model id or local model folder (default: $MODEL or %(default)s)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of reference photos to index (default: tests/data/reference)")
    parser.add_argument("--csv", type=Path, default=None, help="species table (default: species.csv beside the photo folder, when there is one)")
    parser.add_argument("--augmentations", type=int, default=20, help="augmented views per reference photo (default: %(default)s)")
    parser.add_argument("--web-port", type=int, default=8080, help="port of the web page; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--api-port", type=int, default=8000, help="port of the API; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--s3-port", type=int, default=0, help="port of the S3 server; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--max-upload-bytes", type=int, default=None, help="largest photo upload in bytes (default: the API's 10 MB)")
    return parser


def options_from_args(args: argparse.Namespace) -> StackOptions:
    csv = args.csv
    if csv is None and (args.images.parent / "species.csv").is_file():
        csv = args.images.parent / "species.csv"
    return StackOptions(
        model=args.model,
        images=args.images,
        csv=csv,
        augmentations=args.augmentations,
        s3_port=args.s3_port,
        api_port=args.api_port,
        web_port=args.web_port,
        max_upload_bytes=args.max_upload_bytes,
    )


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Ctrl-C and SIGTERM both end in the same clean stop. A shell starts background jobs
    # with SIGINT ignored, so the default handler is installed explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    try:
        stack = LocalStack.start(options_from_args(args))
    except KeyboardInterrupt:
        logger.info("interrupted during start-up; stopped")
        return 130
    except (StackError, PlantIdError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    try:
        print(f"\nAPI: {stack.api_url} (docs at {stack.api_url}/docs)", flush=True)
        print(f"S3: {stack.s3.endpoint_url} (buckets {UPLOAD_BUCKET}, {INDEX_BUCKET})", flush=True)
        print(f"Open {stack.web_url} in a browser. Press Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping the local stack")
    finally:
        # A second signal must not cut the stop short and leave the moto process behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    logger.info("local stack stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
