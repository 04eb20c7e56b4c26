"""S3 ObjectCreated events for a local S3 server that cannot send them itself.

moto's server mode stores objects but invokes no function. UploadPoller lists the upload
prefix every `interval_s` seconds. It delivers each new object to a handler (normally
handler.lambda_entry.handler) as an S3 notification of the same shape as real S3 sends.
The local stack thus writes `results/<key>.json` like the deployed function does.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

logger = logging.getLogger(__name__)

# How often a delivery that raised is retried; S3's asynchronous invocation retries twice.
MAX_ATTEMPTS = 3

Handler = Callable[[dict[str, Any], Any], Any]


def object_created_event(
    bucket: str,
    key: str,
    size: int,
    etag: str,
    event_time: datetime | None = None,
    region: str = "us-east-1",
) -> dict[str, Any]:
    """Return an S3 ObjectCreated:Post notification with one record, as S3 sends it.

    S3 URL-encodes the key in notifications like quote_plus (a space becomes '+') and
    leaves '/' as it is.
    """
    moment = event_time or datetime.now(timezone.utc)
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "eventName": "ObjectCreated:Post",
                "userIdentity": {"principalId": "local"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-amz-request-id": "local", "x-amz-id-2": "local"},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "local-upload-poller",
                    "bucket": {"name": bucket, "ownerIdentity": {"principalId": "local"}, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {
                        "key": urllib.parse.quote_plus(key, safe="/"),
                        "size": size,
                        "eTag": etag.strip('"'),
                        "sequencer": f"{int(moment.timestamp() * 1e6):016X}",
                    },
                },
            }
        ]
    }


class UploadPoller:
    """A thread that turns new objects under `prefix` into ObjectCreated events for `handler`."""

    def __init__(self, client: Any, bucket: str, prefix: str, handler: Handler, interval_s: float = 1.0) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.handler = handler
        self.interval_s = interval_s
        self.delivered = 0
        self._done: set[tuple[str, str]] = set()
        self._attempts: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upload-poller", daemon=True)

    def start(self) -> None:
        logger.info("polling s3://%s/%s every %g s for new uploads", self.bucket, self.prefix, self.interval_s)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop polling; waits for a delivery in progress to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        logger.info("upload poller stopped after %d deliveries", self.delivered)

    def poll_once(self) -> int:
        """List the prefix once and deliver every object not delivered yet; return how many were delivered."""
        delivered = 0
        for listed in self._list_objects():
            if self._stop.is_set():
                break
            identity = (listed["Key"], listed.get("ETag", ""))
            if identity in self._done:
                continue
            if self._deliver(listed, identity):
                delivered += 1
        return delivered

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller keeps running; the next poll retries
                logger.exception("listing s3://%s/%s failed", self.bucket, self.prefix)
            self._stop.wait(self.interval_s)

    def _list_objects(self) -> list[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        objects: list[dict[str, Any]] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            objects.extend(page.get("Contents", []))
        return objects

    def _deliver(self, listed: dict[str, Any], identity: tuple[str, str]) -> bool:
        key = listed["Key"]
        event = object_created_event(
            self.bucket, key, int(listed.get("Size", 0)), listed.get("ETag", ""), listed.get("LastModified")
        )

        attempt = self._attempts.get(identity, 0) + 1
        self._attempts[identity] = attempt
        try:
            self.handler(event, None)
        except Exception:  # noqa: BLE001 - like S3's asynchronous invocation: retry, then give up
            if attempt < MAX_ATTEMPTS:
                logger.exception("delivering s3://%s/%s failed (attempt %d of %d); retrying", self.bucket, key, attempt, MAX_ATTEMPTS)
                return False
            logger.exception("delivering s3://%s/%s failed %d times; giving up", self.bucket, key, attempt)
            self._finish(identity)
            return False

        self._finish(identity)
        self.delivered += 1
        logger.info("delivered an ObjectCreated event for s3://%s/%s", self.bucket, key)
        return True

    def _finish(self, identity: tuple[str, str]) -> None:
        self._done.add(identity)
        self._attempts.pop(identity, None)
