"""`python -m handler serve`: the inference API under uvicorn, configured like the Lambda function.

Settings come from the PLANT_ID_* environment variables (see handler.config). --index,
--model and --upload-bucket override PLANT_ID_INDEX, PLANT_ID_MODEL and
PLANT_ID_UPLOAD_BUCKET.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from handler.config import Settings

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m handler serve",
        description="Serve POST /identify, POST /uploads and GET /health with uvicorn (docs at /docs).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: %(default)s)")
    parser.add_argument("--index", help="index location, a local folder or s3://bucket/prefix (default: $PLANT_ID_INDEX)")
    parser.add_argument("--model", help="Hugging Face model id or local model folder (default: $PLANT_ID_MODEL)")
    parser.add_argument("--upload-bucket", help="bucket for presigned uploads (default: $PLANT_ID_UPLOAD_BUCKET)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level of the service and uvicorn (default: %(default)s)",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Read Settings from the environment with the command line overrides applied."""
    environ = dict(os.environ)
    overrides = {
        "PLANT_ID_INDEX": args.index,
        "PLANT_ID_MODEL": args.model,
        "PLANT_ID_UPLOAD_BUCKET": args.upload_bucket,
    }
    environ.update({name: value for name, value in overrides.items() if value})
    return Settings.from_env(environ)


def serve(argv: Sequence[str]) -> int:
    """Run the API until interrupted; returns the exit code. Raises ConfigError for invalid settings."""
    import uvicorn

    from handler.app import create_app

    args = build_parser().parse_args(list(argv))
    logging.getLogger().setLevel(args.log_level.upper())
    settings = settings_from_args(args)

    logger.info("serving index %s with model %s on http://%s:%d", settings.index_location, settings.model, args.host, args.port)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
