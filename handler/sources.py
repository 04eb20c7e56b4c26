"""Lambda event sources: one handler class per kind of event behind a common interface.

* ApiGatewaySource: API Gateway HTTP API (payload 2.0 and 1.0) and REST API events, passed
  to the FastAPI application through Mangum with lifespan="off".
* S3UploadSource: S3 ObjectCreated notifications for photos under the upload prefix. Each
  photo is identified and the result is written as JSON to
  `<results prefix><upload key>.json` in the same bucket.
* Any other event is rejected by `EventRouter` with a 400 response dict (see there).

Outcomes of an S3 record, chosen so that the platform retries only what can succeed later:

| record | outcome |
| --- | --- |
| folder placeholder (key ends in '/', size 0) | skipped, no GetObject |
| empty object (size 0) | skipped and logged, no GetObject, no result |
| key outside the upload prefix or other bucket | skipped and logged |
| object deleted before the read | skipped and logged |
| bad photo (ImageError), or larger than the limit | error result JSON (status, error, message) |
| photo identified | result JSON: the POST /identify body plus key and status |
| S3 read/write failure or service unavailable (503) | exception raised, so the platform retries |

Retries are safe because the result key depends only on the upload key and is overwritten.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from dataclasses import dataclass
from typing import Any, Protocol

from mangum import Mangum
from mangum.handlers import APIGateway, HTTPGateway

from handler.app import identify_bytes
from handler.config import Settings
from handler.state import ServiceState
from handler.uploads import read_upload
from shared import storage
from shared.errors import ImageError
from shared.storage import ObjectNotFound

logger = logging.getLogger(__name__)

OBJECT_CREATED_PREFIX = "ObjectCreated:"


class EventSource(Protocol):
    """One kind of Lambda event: `matches` recognises it and `handle` processes it."""

    name: str

    def matches(self, event: Any) -> bool: ...

    def handle(self, event: dict[str, Any], context: Any) -> dict[str, Any]: ...


class ApiGatewaySource:
    """API Gateway requests, passed to the FastAPI application through Mangum."""

    name = "api-gateway"

    def __init__(self, app: Any) -> None:
        self._mangum = Mangum(app, lifespan="off")

    def matches(self, event: Any) -> bool:
        if not isinstance(event, dict) or not isinstance(event.get("requestContext"), dict):
            return False

        # Application Load Balancer events also carry requestContext; they are not served.
        if "elb" in event["requestContext"]:
            return False
        return HTTPGateway.infer(event, None, self._mangum.config) or APIGateway.infer(
            event, None, self._mangum.config
        )

    def handle(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        return self._mangum(event, context)


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    size: int | None
    event_name: str


class S3UploadSource:
    """S3 ObjectCreated records: identify each uploaded photo and write its result JSON."""

    name = "s3"

    def __init__(self, settings: Settings, state: ServiceState) -> None:
        self.settings = settings
        self.state = state

    def matches(self, event: Any) -> bool:
        if not isinstance(event, dict):
            return False

        records = event.get("Records")
        if not isinstance(records, list) or not records:
            return False
        return all(isinstance(record, dict) and record.get("eventSource") == "aws:s3" for record in records)

    def handle(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """Process every record and return a summary; raises on failures worth a retry."""
        results: list[str] = []
        skipped: list[dict[str, str]] = []

        for record in event["Records"]:
            s3_object = parse_s3_record(record)
            reason = self._skip_reason(s3_object)
            if reason is not None:
                logger.info("skipped s3://%s/%s: %s", s3_object.bucket, s3_object.key, reason)
                skipped.append({"key": s3_object.key, "reason": reason})
                continue

            result_key = self._process(s3_object)
            if result_key is None:
                skipped.append({"key": s3_object.key, "reason": "object not found"})
            else:
                results.append(result_key)

        return {"results": results, "skipped": skipped}

    def result_key(self, upload_key: str) -> str:
        return f"{self.settings.results_prefix}{upload_key}.json"

    def _skip_reason(self, s3_object: S3Object) -> str | None:
        if not s3_object.event_name.startswith(OBJECT_CREATED_PREFIX):
            return f"event {s3_object.event_name or '(none)'} is not an ObjectCreated event"

        if s3_object.key.endswith("/"):
            return "folder placeholder"

        expected_bucket = self.settings.upload_bucket
        if expected_bucket and s3_object.bucket != expected_bucket:
            return f"bucket {s3_object.bucket} is not the upload bucket {expected_bucket}"

        # Results are written to the same bucket: reading only the upload prefix keeps a
        # trigger on the whole bucket from identifying its own result files in a loop.
        if not s3_object.key.startswith(self.settings.upload_prefix):
            return f"key is outside the upload prefix {self.settings.upload_prefix}"

        if s3_object.size == 0:
            logger.warning("s3://%s/%s is empty (0 bytes); no result is written", s3_object.bucket, s3_object.key)
            return "empty object"
        return None

    def _process(self, s3_object: S3Object) -> str | None:
        """Identify one photo and write its result; returns the result key, or None when the object is gone."""
        bucket, key = s3_object.bucket, s3_object.key
        max_bytes = self.settings.max_upload_bytes

        try:
            if s3_object.size is not None and s3_object.size > max_bytes:
                body = _error_body(
                    413,
                    "image_too_large",
                    f"photo is {s3_object.size} bytes, over the limit of {max_bytes} bytes; upload a smaller photo",
                )
            else:
                data = read_upload(bucket, key, max_bytes)
                body = {"status": 200, **identify_bytes(self.state, data, self.settings.default_top_k)}
        except ObjectNotFound:
            logger.warning("s3://%s/%s no longer exists; no result is written", bucket, key)
            return None
        except ImageError as error:
            logger.info("s3://%s/%s is not a usable photo: %s", bucket, key, error.message)
            body = _error_body(error.status, error.code, error.message)

        result_key = self.result_key(key)
        payload = json.dumps({"key": key, **body}, ensure_ascii=False).encode("utf-8")
        storage.write_bytes(f"s3://{bucket}/{result_key}", payload, "application/json")
        logger.info("wrote s3://%s/%s (status %d)", bucket, result_key, body["status"])
        return result_key


def parse_s3_record(record: dict[str, Any]) -> S3Object:
    """Read bucket, key, size and event name from one S3 notification record.

    Keys arrive URL-encoded with '+' for spaces. They are decoded exactly once with
    unquote_plus, because a second decoding would turn a literal '+' or '%' into something else.
    """
    s3 = record.get("s3") or {}
    bucket = (s3.get("bucket") or {}).get("name") or ""
    object_info = s3.get("object") or {}
    key = urllib.parse.unquote_plus(str(object_info.get("key") or ""), encoding="utf-8")
    size = object_info.get("size")
    return S3Object(
        bucket=bucket,
        key=key,
        size=int(size) if isinstance(size, (int, float)) else None,
        event_name=str(record.get("eventName") or ""),
    )


def _error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"status": status, "error": code, "message": message}


class EventRouter:
    """Dispatch a Lambda event to the first source that matches it.

    An event that no source matches is logged, and the handler returns a response dict:
    statusCode 400 and a JSON body naming the problem. It is returned rather than raised,
    so that an asynchronous invoker does not retry an event that can never succeed.
    """

    def __init__(self, sources: list[EventSource]) -> None:
        self.sources = sources

    def route(self, event: Any, context: Any) -> dict[str, Any]:
        for source in self.sources:
            if source.matches(event):
                return source.handle(event, context)
        return reject_event(event, [source.name for source in self.sources])


def reject_event(event: Any, accepted: list[str]) -> dict[str, Any]:
    description = _describe_event(event)
    message = (
        f"unsupported event ({description}); this function accepts API Gateway requests "
        "and S3 ObjectCreated notifications"
    )
    logger.error("rejected an event: %s; sources: %s", description, ", ".join(accepted))
    return {
        "statusCode": 400,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"error": "unsupported_event", "message": message}),
    }


def _describe_event(event: Any) -> str:
    if not isinstance(event, dict):
        return f"a JSON {type(event).__name__}, not an object"

    keys = sorted(str(key) for key in event)[:8]
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], dict):
        source = records[0].get("eventSource") or records[0].get("EventSource") or "unknown"
        return f"Records from {source}"
    return f"top-level keys: {', '.join(keys) or 'none'}"
