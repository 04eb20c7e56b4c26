"""FastAPI application of the inference function (served by uvicorn and, on Lambda, by Mangum).

Endpoints (OpenAPI docs at /docs):

* POST /identify: a photo as the multipart field `file`, or JSON {"key": "uploads/..."}
  naming an object in the upload bucket; `top_k` (1..PLANT_ID_TOP_K_MAX, default 5) as a
  query parameter or as a form or JSON field (the body field wins). Up to MAX_PHOTOS photos
  of the same plant (repeated `file` fields, or JSON {"keys": [...]}) combine into one
  query; the error about a photo that cannot be used names it by position and file name.
* POST /uploads: a presigned POST form for sending a photo straight to S3.
* GET /health: whether the model and the index are loaded. 503 while no index serves.

Lambda accepts at most 6 MB of synchronous payload, and API Gateway base64-encodes binary
bodies (4/3 larger), so a direct POST /identify carries at most about 4.5 MB of photo on
Lambda. Larger photos go through POST /uploads and then {"key": ...}.

Errors are JSON {"error": code, "message": text} with the status of the shared error
class (400, 404, 413, 415, 503). Request shape errors are FastAPI's 422 body. An
unexpected exception becomes a 500 JSON body without a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handler.config import MAX_KEY_LENGTH, Settings
from handler.query import MAX_PHOTOS
from handler.state import ServiceState
from handler.thumbnails import router as thumbnails_router
from handler.thumbnails import thumbnail_path
from handler.uploads import create_presigned_upload, read_upload, require_bucket, validate_upload_key
from shared.errors import ImageError, ImageTooLargeError, PlantIdError

logger = logging.getLogger(__name__)

# Largest photo accepted in the body of POST /identify. Lambda rejects synchronous payloads
# over 6 MB (6,291,456 bytes), and API Gateway base64-encodes binary bodies, so 4.5 MB of
# photo becomes 6.0 MB plus the event's headers. The same limit applies under uvicorn, so
# a client sees the same behaviour locally as on Lambda. Photos up to
# PLANT_ID_MAX_UPLOAD_BYTES go through POST /uploads instead.
DIRECT_UPLOAD_MAX_BYTES = 4_500_000

# Room for the multipart boundaries, part headers and the top_k field around the photo.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

# Body limit of every request other than POST /identify.
SMALL_BODY_BYTES = 64 * 1024

# File parts that a multipart POST /identify may carry before the form parser rejects it
# outright; between MAX_PHOTOS + 1 and this, the error states the photo limit.
MAX_FILE_PARTS = 4 * MAX_PHOTOS

IDENTIFY_PATH = "/identify"


# Response and request models (they also document the API at /docs).


class MatchModel(BaseModel):
    rank: int
    plant_id: str
    scientific_name: str | None
    common_name: str | None
    score: float = Field(description="cosine similarity between the query embedding and the prototype")
    thumbnail_url: str = Field(
        description="path of the species' reference thumbnail, relative to the API base URL (GET /species/{plant_id}/thumbnail)"
    )


class IdentifyResponse(BaseModel):
    matches: list[MatchModel]
    model_id: str
    index_version: str
    elapsed_ms: float = Field(description="time spent encoding the views and searching, in milliseconds")
    views: int = Field(description="the photo plus its test-time augmentations")
    photos: int = Field(default=1, description="photos of the plant combined into this query")
    confident: bool = Field(
        description="false when the top match fails the index's rejection rule (minimum top-1 score and "
        "margin over the second species); true when it passes or the index stores no rule"
    )
    no_confident_match: bool = Field(
        description="true when `confident` is false: the photo may show a species that is not in the index, "
        "and `matches` lists only the closest species"
    )
    test_model: bool | None = Field(
        default=None, description="present and true when the encoder is the tiny test model"
    )


class IdentifyByKey(BaseModel):
    key: str | None = Field(
        default=None, description="key of an uploaded photo in the upload bucket, such as uploads/<name>.jpg"
    )
    keys: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PHOTOS,
        description=f"keys of 1 to {MAX_PHOTOS} uploaded photos of the same plant, combined into one query",
    )
    top_k: int | None = None


class UploadRequest(BaseModel):
    content_type: str = Field(description="image/jpeg, image/png or image/webp")


class UploadForm(BaseModel):
    url: str
    fields: dict[str, str]
    key: str
    expires_in: int = Field(description="seconds until the form expires")
    max_bytes: int


class ErrorResponse(BaseModel):
    error: str
    message: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 503)
}


# The identification shared by HTTP requests and S3 events.


def identification_body(result: Any, encoder: Any) -> dict[str, Any]:
    """Convert a handler.query.Identification into the JSON body of POST /identify."""
    body: dict[str, Any] = {
        "matches": [
            {
                "rank": match.rank,
                "plant_id": match.plant_id,
                "scientific_name": match.scientific_name,
                "common_name": match.common_name,
                "score": match.score,
                "thumbnail_url": thumbnail_path(match.plant_id, result.index_version),
            }
            for match in result.matches
        ],
        "model_id": result.model_id,
        "index_version": result.index_version,
        "elapsed_ms": result.elapsed_ms,
        "views": result.views,
        "photos": getattr(result, "photos", 1),
        "confident": result.confident,
        "no_confident_match": not result.confident,
    }
    if getattr(encoder, "is_test_model", False):
        body["test_model"] = True
    return body


def identify_bytes(state: ServiceState, data: bytes, top_k: int) -> dict[str, Any]:
    """Decode a photo, identify it with the warm Identifier and return the JSON body.

    Raises the shared errors: 503 while the service is unavailable, ImageError subclasses
    for bad photos. Blocking: run it in a worker thread from async code.
    """
    return identify_photos(state, [("", data)], top_k)


def photo_label(position: int, name: str) -> str:
    """Name a photo of a request in error messages: "photo 2 (leaf.jpg)", or "photo 2" without a name."""
    return f"photo {position} ({name})" if name else f"photo {position}"


def labelled_error(error: PlantIdError, position: int, name: str) -> PlantIdError:
    """Return an error of the same class whose message starts with the photo's label."""
    return type(error)(f"{photo_label(position, name)}: {error.message}")


def identify_photos(state: ServiceState, photos: list[tuple[str, bytes]], top_k: int) -> dict[str, Any]:
    """Decode 1 to MAX_PHOTOS photos of one plant, identify them as one query and return the JSON body.

    `photos` holds (name, bytes) pairs, where the name is a file name or an upload key. When
    several photos cannot be decoded, the error has the class (and so the HTTP status) of the
    first failure and its message names every bad photo by position and name. A single
    photo's error message is unchanged. Blocking: run it in a worker thread from async code.
    """
    from shared.imaging import DecodeLimits, decode_image
    from shared.preprocess import shrink_for_views, view_source_side

    identifier = state.identifier()
    preprocess = identifier.encoder.preprocess

    limits = DecodeLimits(max_bytes=state.settings.max_upload_bytes, max_pixels=state.settings.max_pixels)
    # Large JPEGs decode at reduced size, no smaller than the views need. Each photo is
    # shrunk as soon as it is decoded (the Identifier would do it later), so five
    # full-size photos never sit in memory together.
    target_size = view_source_side(preprocess)
    images = []
    failures: list[tuple[int, str, ImageError]] = []
    for position, (name, data) in enumerate(photos, start=1):
        try:
            images.append(shrink_for_views(decode_image(data, limits, target_size=target_size), preprocess))
        except ImageError as error:
            failures.append((position, name, error))

    if failures and len(photos) == 1:
        raise failures[0][2]
    if failures:
        first = failures[0][2]
        message = "; ".join(f"{photo_label(position, name)}: {error.message}" for position, name, error in failures)
        raise type(first)(message) from first

    result = identifier.identify_many(images, top_k=top_k)
    return identification_body(result, identifier.encoder)


# Request body size limit.


class BodySizeLimitMiddleware:
    """Respond 413 before the endpoint decodes anything when a request body is too large.

    A declared Content-Length over the limit is rejected without reading the body, and a
    chunked body is counted while it streams in.
    """

    def __init__(self, app: ASGIApp, identify_max_bytes: int, other_max_bytes: int = SMALL_BODY_BYTES) -> None:
        self.app = app
        self.identify_max_bytes = identify_max_bytes
        self.other_max_bytes = other_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        limit = self.identify_max_bytes if scope["path"] == IDENTIFY_PATH else self.other_max_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            logger.info("rejected a %d-byte body for %s (limit %d)", declared, scope["path"], limit)
            await _send_too_large(send, declared, limit)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ImageTooLargeError(_too_large_message(received, limit))
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large_message(size: int, limit: int) -> str:
    return (
        f"request body is {size} bytes or more, over the limit of {limit} bytes; "
        "send a smaller photo, or upload it with POST /uploads and identify it by key"
    )


async def _send_too_large(send: Send, size: int, limit: int) -> None:
    body = json.dumps(ImageTooLargeError(_too_large_message(size, limit)).to_dict()).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Request parsing helpers.


def _top_k_adapter(maximum: int) -> TypeAdapter[int]:
    return TypeAdapter(Annotated[int, Field(ge=1, le=maximum)])


def _validate_top_k(adapter: TypeAdapter[int], value: Any, location: tuple[str, ...]) -> int:
    """Validate a top_k body field, raising FastAPI's 422 error with the field's location."""
    if not isinstance(value, (str, int)):
        # A file part named top_k: its UploadFile could not be serialised into the error body.
        raise RequestValidationError(
            [{"type": "int_type", "loc": location, "msg": "Input should be a valid integer", "input": None}]
        )

    try:
        return adapter.validate_python(value)
    except ValidationError as error:
        raise RequestValidationError(
            [{**item, "loc": location + tuple(item["loc"])} for item in error.errors(include_url=False)]
        ) from None


def _check_key_or_keys(by_key: IdentifyByKey) -> None:
    """Raise FastAPI's 422 error unless exactly one of "key" and "keys" is present."""
    if by_key.key is None and by_key.keys is None:
        raise RequestValidationError(
            [
                {
                    "type": "missing",
                    "loc": ("body", "key"),
                    "msg": 'Field required: send "key" (one upload key) or "keys" (a list of upload keys)',
                    "input": None,
                }
            ]
        )
    if by_key.key is not None and by_key.keys is not None:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "keys"),
                    "msg": 'send either "key" or "keys", not both',
                    "input": None,
                }
            ]
        )


def _too_many_photos_error(count: int) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "too_long",
                "loc": ("body", "file"),
                "msg": f"too many photos: send 1 to {MAX_PHOTOS} photos of the same plant per request, got {count}",
                "input": None,
            }
        ]
    )


def _missing_file_error() -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "missing",
                "loc": ("body", "file"),
                "msg": "Field required: send the photo as the multipart file field 'file', or JSON {\"key\": ...}",
                "input": None,
            }
        ]
    )


async def _read_form(request: Request) -> Any:
    try:
        # More file parts than MAX_PHOTOS are parsed so that the error names the limit.
        return await request.form(max_files=MAX_FILE_PARTS, max_fields=8)
    except StarletteHTTPException as error:
        raise PlantIdError(f"invalid multipart body: {error.detail}") from error


async def _read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except json.JSONDecodeError as error:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", error.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": error.msg},
                }
            ]
        ) from None
    except UnicodeDecodeError as error:
        # json.loads decodes bytes as UTF-8, UTF-16 or UTF-32 first, and raises this error,
        # not JSONDecodeError, for bytes in none of these encodings.
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", error.start),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": f"the body is not UTF-8 text ({error.reason})"},
                }
            ]
        ) from None


async def _read_file_part(upload: UploadFile, max_bytes: int) -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLargeError(
            f"photo is over the limit of {max_bytes} bytes; "
            "send a smaller photo, or upload it with POST /uploads and identify it by key"
        )
    return data


# Application.


def direct_upload_limit(settings: Settings) -> int:
    """Return the largest photo, in bytes, accepted in the body of POST /identify."""
    return min(settings.max_upload_bytes, DIRECT_UPLOAD_MAX_BYTES)


def create_app(settings: Settings | None = None, *, state: ServiceState | None = None, warm_up: bool = True) -> FastAPI:
    """Build the application. `settings` default to Settings.from_env().

    With `warm_up`, the lifespan startup (uvicorn) loads the model and the index before the
    first request. Mangum runs with lifespan="off", so the Lambda entry point calls
    ServiceState.warm_up itself during the init phase.
    """
    settings = settings if settings is not None else Settings.from_env()
    state = state if state is not None else ServiceState(settings)
    top_k_adapter = _top_k_adapter(settings.top_k_max)
    direct_max_bytes = direct_upload_limit(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            await run_in_threadpool(state.warm_up)
        yield

    app = FastAPI(
        title="Plant identification",
        summary="Rank plant species for a photo by CLIP image similarity.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = state

    app.add_middleware(
        BodySizeLimitMiddleware,
        identify_max_bytes=direct_max_bytes + MULTIPART_OVERHEAD_BYTES,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["content-type"],
        )

    _add_exception_handlers(app)
    app.include_router(thumbnails_router)

    @app.post(
        IDENTIFY_PATH,
        response_model=IdentifyResponse,
        responses=ERROR_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                    "minItems": 1,
                                    "maxItems": MAX_PHOTOS,
                                    "description": f"1 to {MAX_PHOTOS} photos of the same plant, one `file` field each",
                                },
                                "top_k": {"type": "integer", "minimum": 1, "maximum": settings.top_k_max},
                            },
                        }
                    },
                    "application/json": {"schema": IdentifyByKey.model_json_schema()},
                },
            }
        },
    )
    async def identify(
        request: Request,
        # The constraints go in the default, not in Annotated, because annotations are
        # strings here (PEP 563) and could not see `settings` in this closure.
        top_k: int | None = Query(
            None,
            ge=1,
            le=settings.top_k_max,
            description=f"number of species to return (default {settings.default_top_k})",
        ),
    ) -> JSONResponse:
        """Identify the plant in 1 to 5 photos sent as multipart fields `file` or named by upload keys.

        Several photos must show the same plant: their query embeddings are averaged into one query.
        """
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        chosen_top_k = top_k if top_k is not None else settings.default_top_k

        if media_type == "application/json":
            payload = await _read_json(request)
            try:
                by_key = IdentifyByKey.model_validate(payload)
            except ValidationError as error:
                raise RequestValidationError(
                    [{**item, "loc": ("body", *item["loc"])} for item in error.errors(include_url=False)]
                ) from None
            _check_key_or_keys(by_key)
            if by_key.top_k is not None:
                chosen_top_k = _validate_top_k(top_k_adapter, by_key.top_k, ("body", "top_k"))

            keys = by_key.keys if by_key.keys is not None else [by_key.key or ""]
            photos = []
            for position, key in enumerate(keys, start=1):
                try:
                    key = validate_upload_key(key, settings.upload_prefix, MAX_KEY_LENGTH)
                    bucket = require_bucket(settings.upload_bucket)
                    photos.append((key, await run_in_threadpool(read_upload, bucket, key, settings.max_upload_bytes)))
                except PlantIdError as error:
                    if by_key.keys is None or error.status >= 500:
                        raise
                    raise labelled_error(error, position, key) from error
        else:
            form = await _read_form(request)
            try:
                uploads = form.getlist("file")
                if not uploads or not all(isinstance(upload, UploadFile) for upload in uploads):
                    raise _missing_file_error()
                if len(uploads) > MAX_PHOTOS:
                    raise _too_many_photos_error(len(uploads))
                if form.get("top_k") is not None:
                    chosen_top_k = _validate_top_k(top_k_adapter, form.get("top_k"), ("body", "top_k"))

                photos = []
                for position, upload in enumerate(uploads, start=1):
                    try:
                        photos.append((upload.filename or "", await _read_file_part(upload, direct_max_bytes)))
                    except ImageTooLargeError as error:
                        if len(uploads) == 1:
                            raise
                        raise labelled_error(error, position, upload.filename or "") from error
            finally:
                await form.close()

        body = await run_in_threadpool(identify_photos, state, photos, chosen_top_k)
        return JSONResponse(body)

    @app.post(
        "/uploads",
        response_model=UploadForm,
        responses=ERROR_RESPONSES,
    )
    def create_upload(body: UploadRequest) -> dict[str, Any]:
        """Create a presigned POST form for uploading one photo straight to the upload bucket.

        Send every returned field unchanged, then the photo as the last form field `file`.
        The form accepts 1 byte to `max_bytes`, only with the declared Content-Type, until it
        expires after `expires_in` seconds.
        """
        bucket = require_bucket(settings.upload_bucket)
        return create_presigned_upload(
            bucket,
            settings.upload_prefix,
            body.content_type,
            settings.max_upload_bytes,
            settings.presign_expires,
        )

    @app.get("/health")
    def health() -> JSONResponse:
        """Report whether the model and the index are loaded (503 with the reason while no index serves)."""
        status, body = state.health()
        return JSONResponse(body, status_code=status)

    return app


HTTP_ERROR_CODES = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _add_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(PlantIdError)
    async def plant_id_error(request: Request, error: PlantIdError) -> JSONResponse:
        if error.status >= 500:
            logger.warning("%s %s -> %d %s: %s", request.method, request.url.path, error.status, error.code, error.message)
        else:
            logger.info("%s %s -> %d %s: %s", request.method, request.url.path, error.status, error.code, error.message)
        return JSONResponse(error.to_dict(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Routing and body-parsing errors (404, 405, an unparsable body) get the same
        # {"error", "message"} shape as the service's own errors.
        code = HTTP_ERROR_CODES.get(error.status_code, "http_error")
        logger.info("%s %s -> %d %s: %s", request.method, request.url.path, error.status_code, code, error.detail)
        return JSONResponse(
            {"error": code, "message": str(error.detail)},
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        # Last resort: the log keeps the traceback, the client gets no paths or frames.
        logger.exception("%s %s failed with an unexpected error", request.method, request.url.path)
        body = {"error": "internal_error", "message": "internal server error; the function log has the details"}
        return JSONResponse(body, status_code=500)


# Module-level application for `uvicorn handler.app:app`, built from the environment on
# first access so that importing this module never needs the PLANT_ID_* variables.
_default_app: FastAPI | None = None


def get_app() -> FastAPI:
    """Return the process-wide application built from environment variables."""
    global _default_app
    if _default_app is None:
        _default_app = create_app()
    return _default_app


def __getattr__(name: str) -> Any:
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
