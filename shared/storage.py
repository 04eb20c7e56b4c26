"""Read and write whole objects on local disk or in S3 through one small interface.

A location is either a local path or ``s3://bucket/key``. Local writes go to a temporary
file in the same folder followed by ``os.replace``, so a reader sees the old file or the
new one and never a partial write. S3 ``PutObject`` is atomic per object by itself.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from botocore.client import BaseClient

logger = logging.getLogger(__name__)

S3_SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"

# A few retries with the standard back-off cover throttling and dropped connections
# without stalling a cold start for long when S3 is really unreachable.
S3_MAX_ATTEMPTS = 3
S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 60


class ObjectNotFound(StorageError):
    """The file or S3 object (or its bucket) does not exist."""

    status = 404
    code = "object_not_found"


@dataclass(frozen=True)
class Location:
    """A local path (``bucket`` is None) or an S3 key (``path`` has no leading slash)."""

    path: str
    bucket: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    @property
    def name(self) -> str:
        """Last path component, like ``Path.name``."""
        return PurePosixPath(self.path).name if self.is_s3 else Path(self.path).name

    def join(self, *parts: str) -> Location:
        """Return the location of ``parts`` below this one, joined with '/' for S3."""
        if not self.is_s3:
            return Location(path=str(Path(self.path, *parts)))

        pieces = [self.path.strip("/")] + [part.strip("/") for part in parts]
        key = "/".join(piece for piece in pieces if piece)
        return Location(path=key, bucket=self.bucket)

    def __str__(self) -> str:
        if self.is_s3:
            return f"{S3_SCHEME}{self.bucket}/{self.path}"
        return self.path


def parse_location(location: str | os.PathLike[str] | Location) -> Location:
    """Parse ``s3://bucket/prefix`` or a local path (``file://`` URLs too) into a Location.

    Raises ConfigError for an empty location, an S3 URL without a bucket or any other
    URL scheme.
    """
    if isinstance(location, Location):
        return location

    text = os.fspath(location)
    if not text:
        raise ConfigError("empty storage location; pass a local folder or s3://bucket/prefix")

    if text.startswith(S3_SCHEME):
        bucket, _, key = text[len(S3_SCHEME) :].partition("/")
        if not bucket:
            raise ConfigError(f"S3 location {text!r} has no bucket; use s3://bucket/prefix")
        return Location(path=key.strip("/"), bucket=bucket)

    if text.startswith("file://"):
        return Location(path=text[len("file://") :])

    scheme, separator, _ = text.partition("://")
    if separator and scheme.isalnum():
        raise ConfigError(
            f"unsupported storage location {text!r}; use a local path or s3://bucket/prefix"
        )
    return Location(path=text)


def join(location: str | os.PathLike[str] | Location, *parts: str) -> Location:
    """Return the location of ``parts`` below ``location``."""
    return parse_location(location).join(*parts)


# S3 client.


def s3_client() -> BaseClient:
    """Return the process-wide boto3 S3 client for the current environment.

    The region comes from AWS_REGION, then AWS_DEFAULT_REGION, then us-east-1. The
    endpoint comes from AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, else the AWS
    regional endpoint. Clients are cached per (region, endpoint); call
    clear_s3_client_cache() after changing credentials in the environment.
    """
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return _build_s3_client(region, endpoint)


@functools.lru_cache(maxsize=8)
def _build_s3_client(region: str, endpoint: str | None) -> BaseClient:
    import boto3
    from botocore.config import Config

    # Local S3 servers (moto, MinIO) on an IP address or localhost only work with
    # path-style URLs. On AWS, a regional us-east-1 endpoint keeps presigned URLs
    # from being redirected, which a CORS preflight cannot follow.
    if endpoint:
        s3_options = {"addressing_style": "path"}
    else:
        s3_options = {"addressing_style": "auto", "us_east_1_regional_endpoint": "regional"}

    config = Config(
        region_name=region,
        signature_version="s3v4",
        retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
        s3=s3_options,
    )
    client = boto3.session.Session().client(
        "s3", region_name=region, endpoint_url=endpoint, config=config
    )
    logger.info("created S3 client: region %s, endpoint %s", region, client.meta.endpoint_url)
    return client


def clear_s3_client_cache() -> None:
    """Drop cached S3 clients so that the next call reads the environment again."""
    _build_s3_client.cache_clear()


# Reads, writes and existence checks.


def read_bytes(location: str | os.PathLike[str] | Location) -> bytes:
    """Return the whole content of a file or S3 object.

    Raises ObjectNotFound when it does not exist and StorageError for any other failure.
    """
    loc = parse_location(location)
    if loc.is_s3:
        return _s3_read(loc)

    try:
        return Path(loc.path).read_bytes()
    except FileNotFoundError as error:
        raise ObjectNotFound(f"file not found: {loc}") from error
    except OSError as error:
        logger.error("reading %s failed: %s", loc, error)
        raise StorageError(f"reading {loc} failed: {error}") from error


def write_bytes(
    location: str | os.PathLike[str] | Location,
    data: bytes,
    content_type: str | None = None,
) -> None:
    """Write ``data`` as a whole, replacing any existing file or S3 object.

    Local writes create missing parent folders and are atomic. ``content_type`` is used
    for S3 only. Raises StorageError on failure.
    """
    loc = parse_location(location)
    if loc.is_s3:
        _s3_write(loc, data, content_type)
        return

    try:
        _local_write_atomic(Path(loc.path), data)
    except OSError as error:
        logger.error("writing %s failed: %s", loc, error)
        raise StorageError(f"writing {loc} failed: {error}") from error


def exists(location: str | os.PathLike[str] | Location) -> bool:
    """Return whether the file or S3 object exists (a local folder does not count)."""
    loc = parse_location(location)
    if not loc.is_s3:
        return Path(loc.path).is_file()

    try:
        _call_s3(loc, "head_object", Bucket=loc.bucket, Key=loc.path)
    except ObjectNotFound:
        return False
    return True


def _local_write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    # os.open with mode 0o666 applies the umask, unlike tempfile's private 0o600.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _s3_read(loc: Location) -> bytes:
    from botocore.exceptions import BotoCoreError

    response = _call_s3(loc, "get_object", Bucket=loc.bucket, Key=loc.path)
    try:
        return response["Body"].read()
    except BotoCoreError as error:
        # The body streams after GetObject returned, so a dropped connection shows here.
        endpoint = s3_client().meta.endpoint_url
        logger.error("reading %s from %s failed: %s", loc, endpoint, error)
        raise StorageError(f"reading {loc} from {endpoint} failed: {error}") from error


def _s3_write(loc: Location, data: bytes, content_type: str | None) -> None:
    if not loc.path:
        raise StorageError(f"cannot write to {loc}: the S3 key must name an object")

    extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
    _call_s3(loc, "put_object", Bucket=loc.bucket, Key=loc.path, Body=data, **extra)


def _call_s3(loc: Location, operation: str, **kwargs: Any) -> Any:
    """Run one S3 client operation and map botocore errors onto StorageError subclasses."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client()
    endpoint = client.meta.endpoint_url
    try:
        return getattr(client, operation)(**kwargs)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ObjectNotFound(f"S3 object not found: {loc}") from error
        if code == "NoSuchBucket":
            raise ObjectNotFound(f"S3 bucket {loc.bucket!r} not found (for {loc})") from error

        logger.error("S3 %s on %s at %s failed: %s", operation, loc, endpoint, error)
        raise StorageError(f"S3 {operation} on {loc} at {endpoint} failed: {code or error}") from error
    except BotoCoreError as error:
        # Connection refused, DNS failure, timeouts and missing credentials end up here
        # after botocore's retries.
        logger.error("S3 %s on %s at %s failed: %s", operation, loc, endpoint, error)
        raise StorageError(f"S3 {operation} on {loc} at {endpoint} failed: {error}") from error
