"""Write the web page's config.js, which sets the base URL of the identification API.

    python -m infra.write_web_config --api-url https://abc123.execute-api.eu-west-1.amazonaws.com --out web/config.js

Run it at deploy time with the stack's ApiUrl output, then upload web/ to the static host.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from shared.errors import ConfigError

logger = logging.getLogger(__name__)


def normalise_api_url(api_url: str) -> str:
    """Return the API base URL without a trailing slash; raise ConfigError unless it is an http(s) URL.

    An empty string is accepted and means the page's own origin.
    """
    text = api_url.strip()
    if not text:
        return ""

    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"API URL {api_url!r} is invalid; pass the base URL such as https://abc123.execute-api.eu-west-1.amazonaws.com"
        )
    return text.rstrip("/")


def config_script(api_url: str) -> str:
    """Return the text of config.js for `api_url`."""
    config = {"apiBaseUrl": normalise_api_url(api_url)}
    return (
        "// Written by python -m infra.write_web_config; the page reads its API base URL from here.\n"
        f"window.PLANT_ID_CONFIG = {json.dumps(config)};\n"
    )


def write_config(api_url: str, out: Path) -> None:
    """Write config.js for `api_url` to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(config_script(api_url), encoding="utf-8")
    logger.info("wrote %s with API base URL %s", out, api_url)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.write_web_config", description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", required=True, help="base URL of the HTTP API (the stack's ApiUrl output); empty for the page's own origin")
    parser.add_argument("--out", type=Path, default=Path("web/config.js"), help="file to write (default: %(default)s)")
    args = parser.parse_args(argv)

    try:
        write_config(args.api_url, args.out)
    except ConfigError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
