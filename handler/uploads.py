"""Photos uploaded to the upload bucket: key checks, presigned POST forms and reads.

Lambda accepts at most 6 MB of synchronous request payload, and API Gateway sends binary
bodies base64-encoded, which inflates them by 4/3. A direct POST /identify therefore only
works for photos up to about 4.5 MB. Larger photos go through a presigned POST: the page
asks POST /uploads for a form, sends the photo straight to S3 and then calls POST /identify
with {"key": ...} (or waits for the result that the S3 event writes under results/).
"""

from __future__ import annotations

import logging
import unicodedata
import urllib.parse
import uuid
from typing import Any

from shared import storage
from shared.errors import ImageTooLargeError, PlantIdError, StorageError, UnsupportedFormatError
from shared.storage import ObjectNotFound

logger = logging.getLogger(__name__)

# Content types that a presigned POST form accepts, with the extension of the new key.
UPLOAD_CONTENT_TYPES: dict[str, str] = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
}


class InvalidKeyError(PlantIdError):
    """An upload key that the function does not read (outside the upload prefix, '..', ...)."""

    code = "invalid_key"


class UploadsNotConfiguredError(StorageError):
    code = "uploads_not_configured"


def require_bucket(bucket: str | None) -> str:
    """Return the upload bucket, or raise a 503 error when PLANT_ID_UPLOAD_BUCKET is unset."""
    if not bucket:
        raise UploadsNotConfiguredError(
            "uploads are not configured on this server; set PLANT_ID_UPLOAD_BUCKET"
        )
    return bucket


def validate_upload_key(key: str, prefix: str, max_length: int) -> str:
    """Return `key` when the function may read it from the upload bucket, else raise InvalidKeyError.

    The key must be UTF-8 text that starts with `prefix` and names an object below it. It
    must not contain '..', a backslash, a control character, an empty or '.' path segment
    or a trailing '/'. The same rules apply to the key after percent-decoding (up to
    MAX_DECODING_ROUNDS times), so '%2e%2e', '%5c' and '%00' are rejected as well: a proxy
    or a client library that decodes the key again must not see a traversal either.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"key is empty; pass the key returned by POST /uploads, such as {prefix}<name>.jpg")

    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKeyError("key is not valid UTF-8 text: it contains a lone surrogate") from None
    if size > max_length:
        raise InvalidKeyError(f"key is longer than {max_length} bytes")

    if not key.startswith(prefix) or key == prefix:
        raise InvalidKeyError(f"key {key!r} is invalid; it must start with {prefix!r} and name an object")

    for form in _percent_decoded_forms(key):
        _check_key_text(form, key, prefix)
    return key


# Rounds of percent-decoding checked by validate_upload_key: '%252e' needs two.
MAX_DECODING_ROUNDS = 3


def _percent_decoded_forms(key: str) -> list[str]:
    """Return `key` followed by each distinct result of decoding it again."""
    forms = [key]
    for _ in range(MAX_DECODING_ROUNDS):
        decoded = urllib.parse.unquote(forms[-1])
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    return forms


def _check_key_text(text: str, key: str, prefix: str) -> None:
    """Raise InvalidKeyError when `text` (the key or a decoded form of it) breaks a key rule."""
    encoded = "" if text == key else " once percent-decoded"

    if ".." in text or "\\" in text or text.endswith("/"):
        raise InvalidKeyError(f"key {key!r} is invalid{encoded}; it must not contain '..' or '\\' or end with '/'")

    if any(unicodedata.category(character) == "Cc" for character in text):
        raise InvalidKeyError(f"key contains control characters{encoded}")

    if not text.startswith(prefix) or {"", "."} & set(text[len(prefix) :].split("/")):
        raise InvalidKeyError(f"key {key!r} is invalid{encoded}; it must name an object below {prefix!r} without empty or '.' segments")


def new_upload_key(prefix: str, content_type: str) -> str:
    """Return a fresh key under `prefix` with the extension of `content_type`."""
    extension = UPLOAD_CONTENT_TYPES[content_type]
    return f"{prefix}{uuid.uuid4().hex}{extension}"


def normalise_content_type(content_type: str) -> str:
    """Return the accepted content type for `content_type`, or raise UnsupportedFormatError (415)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in UPLOAD_CONTENT_TYPES:
        accepted = ", ".join(UPLOAD_CONTENT_TYPES)
        raise UnsupportedFormatError(
            f"content type {content_type!r} is not accepted for uploads; use one of {accepted}"
        )
    return media_type


def create_presigned_upload(
    bucket: str,
    prefix: str,
    content_type: str,
    max_bytes: int,
    expires_in: int,
) -> dict[str, Any]:
    """Create a presigned POST form for one new object under `prefix`.

    The policy fixes the key, requires the Content-Type form field to equal
    `content_type` (the page must send the returned fields unchanged) and limits the
    size to 1..max_bytes. Returns {"url", "fields", "key", "expires_in", "max_bytes"}.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    media_type = normalise_content_type(content_type)
    key = new_upload_key(prefix, media_type)

    try:
        form = storage.s3_client().generate_presigned_post(
            Bucket=bucket,
            Key=key,
            Fields={"Content-Type": media_type},
            Conditions=[
                {"Content-Type": media_type},
                ["content-length-range", 1, max_bytes],
            ],
            ExpiresIn=expires_in,
        )
    except (BotoCoreError, ClientError) as error:
        # Signing sends no request to S3, so it fails only when credentials or the region are missing.
        logger.error("presigning an upload to s3://%s/%s failed: %s", bucket, key, error)
        raise StorageError(f"cannot create an upload form: {error}") from error

    logger.info("presigned upload s3://%s/%s (%s, max %d bytes)", bucket, key, media_type, max_bytes)
    return {
        "url": form["url"],
        "fields": form["fields"],
        "key": key,
        "expires_in": expires_in,
        "max_bytes": max_bytes,
    }


def read_upload(bucket: str, key: str, max_bytes: int) -> bytes:
    """Return the bytes of s3://bucket/key.

    Raises ObjectNotFound (404) when the object does not exist, ImageTooLargeError (413)
    when it is larger than `max_bytes` (the body is then not downloaded) and StorageError
    (503) for any other S3 failure.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    location = f"s3://{bucket}/{key}"
    try:
        response = storage.s3_client().get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket"):
            raise ObjectNotFound(f"upload not found: {key}") from error
        logger.error("GetObject %s failed: %s", location, error)
        raise StorageError(f"reading upload {key} failed: {code or error}") from error
    except BotoCoreError as error:
        logger.error("GetObject %s failed: %s", location, error)
        raise StorageError(f"reading upload {key} failed: {error}") from error

    body = response["Body"]
    size = int(response.get("ContentLength", 0))
    if size > max_bytes:
        body.close()
        raise ImageTooLargeError(
            f"upload {key} is {size} bytes, over the limit of {max_bytes} bytes; upload a smaller photo"
        )

    try:
        return body.read()
    except BotoCoreError as error:
        logger.error("reading the body of %s failed: %s", location, error)
        raise StorageError(f"reading upload {key} failed: {error}") from error
