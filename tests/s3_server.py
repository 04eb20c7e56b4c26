"""A local S3 server (moto) in its own process on 127.0.0.1, for tests and a local stack.

Clients reach it over real HTTP with boto3, so nothing in the code under test is mocked.
Run it by hand with ``python -m tests.s3_server --port 5000`` and stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
REGION = "us-east-1"

# moto accepts any credentials, and fixed dummy values keep real ones out of reach.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
PORT_ATTEMPTS = 3


class S3Server:
    """A running moto server, created by S3Server.start() and ended by stop()."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_file: IO[bytes] | None) -> None:
        self.process = process
        self.host = HOST
        self.port = port
        self._log_file = log_file

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def start(cls, port: int | None = None, quiet: bool = True, timeout_s: float = START_TIMEOUT_S) -> S3Server:
        """Start moto on ``port`` (a free one when None) and return once it responds to HTTP.

        With ``quiet`` the server's output goes to a temporary log that is shown when the
        start fails. Otherwise it goes to this process' stdout and stderr. Raises
        RuntimeError when the server exits or does not respond within ``timeout_s``.
        """
        attempts = 1 if port is not None else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            chosen_port = port if port is not None else _free_port()
            log_file = tempfile.TemporaryFile(prefix="moto-") if quiet else None
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(chosen_port)],
                stdout=log_file,
                stderr=subprocess.STDOUT if quiet else None,
                start_new_session=True,
            )
            server = cls(process, chosen_port, log_file)

            try:
                server._wait_until_ready(timeout_s)
            except RuntimeError as error:
                server.stop()
                # Another program may have taken the port that _free_port picked, so try another.
                if attempt < attempts:
                    logger.warning("moto server on port %d failed to start, retrying: %s", chosen_port, error)
                    continue
                raise

            atexit.register(server.stop)
            logger.info("moto S3 server started at %s (pid %d)", server.endpoint_url, process.pid)
            return server

        raise AssertionError("unreachable")

    def client(self) -> Any:
        """Return a boto3 S3 client for this server with dummy credentials."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def env(self) -> dict[str, str]:
        """Return the environment variables that point boto3 in a subprocess at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (us-east-1 takes no location constraint)."""
        self.client().create_bucket(Bucket=name)

    def reset(self) -> None:
        """Delete every bucket and object through moto's reset API."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request("POST", "/moto-api/reset")
            connection.getresponse().read()
        finally:
            connection.close()

    def stop(self) -> None:
        """Stop the server process. Calling it again does nothing."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("moto server (pid %d) ignored SIGTERM; killing it", self.process.pid)
                self.process.kill()
                self.process.wait()
            logger.info("moto S3 server at %s stopped", self.endpoint_url)

        atexit.unregister(self.stop)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with code {self.process.returncode} before responding "
                    f"on {self.endpoint_url}:\n{self._log_tail()}"
                )
            if self._responds_to_http():
                return
            time.sleep(0.1)

        raise RuntimeError(
            f"moto server did not respond on {self.endpoint_url} within {timeout_s:g} s:\n{self._log_tail()}"
        )

    def _responds_to_http(self) -> bool:
        # http.client ignores HTTP_PROXY, so the check always goes to 127.0.0.1.
        connection = http.client.HTTPConnection(self.host, self.port, timeout=1)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
        except OSError:
            return False
        finally:
            connection.close()
        return True

    def _log_tail(self, limit: int = 4000) -> str:
        if self._log_file is None:
            return "(output went to the console)"
        self._log_file.seek(0)
        return self._log_file.read().decode("utf-8", errors="replace")[-limit:]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local moto S3 server on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--port", type=int, default=5000, help="TCP port to listen on (default 5000)")
    parser.add_argument(
        "--bucket", action="append", default=[], help="bucket to create at start; repeat for more"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Ctrl-C and `kill` both stop moto too. A shell starts background jobs with SIGINT
    # ignored, so the default handler is installed explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    server = S3Server.start(port=args.port, quiet=False)
    try:
        for bucket in args.bucket:
            server.create_bucket(bucket)
            logger.info("created bucket %s", bucket)

        print("Point boto3 at this server with:")
        for name, value in server.env().items():
            print(f"export {name}={value}")
        sys.stdout.flush()

        server.process.wait()
        logger.error("moto server exited with code %d", server.process.returncode)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
