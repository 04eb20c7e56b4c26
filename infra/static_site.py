"""A static file server for the web page on 127.0.0.1, with a generated config.js.

The files are served straight from the web/ folder, so edits show on the next reload.
GET /config.js returns the text of infra.write_web_config.config_script for the API URL,
whatever is on disk, so the local stack never writes into the checkout.
"""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from pathlib import Path
from typing import Any, ClassVar

from infra.write_web_config import config_script

logger = logging.getLogger(__name__)

CONFIG_PATH = "/config.js"

# Module scripts and stylesheets need these exact types; Python's mimetypes reads the
# system's tables and may not know .css or .js.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}


class StaticHandler(http.server.SimpleHTTPRequestHandler):
    """Serve files without caching, and config.js from memory."""

    extensions_map: ClassVar[dict[str, str]] = {"": "application/octet-stream", **CONTENT_TYPES}

    def __init__(self, *args: Any, config_body: bytes, **kwargs: Any) -> None:
        self.config_body = config_body
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == CONFIG_PATH:
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPES[".js"])
            self.send_header("Content-Length", str(len(self.config_body)))
            self.end_headers()
            self.wfile.write(self.config_body)
            return
        super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class StaticSite:
    """A ThreadingHTTPServer for `folder`, bound when created and serving after start()."""

    def __init__(self, folder: Path, api_url: str, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = functools.partial(
            StaticHandler, directory=str(folder), config_body=config_script(api_url).encode("utf-8")
        )
        self.folder = folder
        self.server = http.server.ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="static-site", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        logger.info("serving %s at %s", self.folder, self.url)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(10)
        self.server.server_close()
        logger.info("static site at %s stopped", self.url)
