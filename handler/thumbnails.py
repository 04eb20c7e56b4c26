"""GET /species/{plant_id}/thumbnail: the reference thumbnail of an indexed species.

The indexer stores one JPEG per species in the index version folder
(`versions/<version>/thumbnails/<plant_id>.jpg`). For an index in S3 the route responds with
a 307 redirect to a short-lived presigned GET URL, so the photo bytes never pass through the
function and its 6 MB response limit on Lambda. For a local index it returns the bytes.
"""

from __future__ import annotations

import logging
import re
import urllib.parse

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from handler.state import ServiceState
from shared import storage
from shared.errors import PlantIdError, StorageError
from shared.index_store import THUMBNAILS_FOLDER, Index
from shared.storage import Location, ObjectNotFound

logger = logging.getLogger(__name__)

# The indexer's plant id rule (indexer.scan.PLANT_ID_PATTERN), repeated here because the
# function's container image holds only handler/ and shared/.
PLANT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
MAX_PLANT_ID_LENGTH = 200

# A presigned URL lives for PRESIGNED_URL_EXPIRES seconds. Browsers may reuse the redirect
# for REDIRECT_MAX_AGE seconds, well within that lifetime.
PRESIGNED_URL_EXPIRES = 300
REDIRECT_MAX_AGE = 60

# The URL is not versioned, so a new index version may change the bytes behind it.
LOCAL_MAX_AGE = 3600

THUMBNAIL_CONTENT_TYPE = "image/jpeg"

router = APIRouter()


class InvalidPlantIdError(PlantIdError):
    code = "invalid_plant_id"


class SpeciesNotFoundError(PlantIdError):
    status = 404
    code = "species_not_found"


class ThumbnailNotFoundError(PlantIdError):
    status = 404
    code = "thumbnail_not_found"


def thumbnail_path(plant_id: str, index_version: str | None = None) -> str:
    """Return the path of a species' thumbnail, relative to the API base URL.

    The index version goes into the query string, so a browser that cached the thumbnail
    of one index version fetches it again after a new index is published.
    """
    path = f"/species/{urllib.parse.quote(plant_id, safe='')}/thumbnail"
    if index_version:
        path += "?" + urllib.parse.urlencode({"v": index_version})
    return path


def validate_plant_id(plant_id: str) -> str:
    """Return `plant_id` when it is a valid plant id, else raise InvalidPlantIdError (400)."""
    if len(plant_id) > MAX_PLANT_ID_LENGTH or PLANT_ID_PATTERN.fullmatch(plant_id) is None:
        excerpt = plant_id[:40] + ("..." if len(plant_id) > 40 else "")
        raise InvalidPlantIdError(
            f"plant id {excerpt!r} is invalid; a plant id is 1 to {MAX_PLANT_ID_LENGTH} letters, "
            "digits, '-' and '_', starting with a letter or digit"
        )
    return plant_id


def thumbnail_location(index: Index, plant_id: str) -> Location:
    """Return where the thumbnail of `plant_id` is stored, or raise a 404 error.

    Raises SpeciesNotFoundError when the index has no such species and
    ThumbnailNotFoundError when the index version was built without thumbnails.
    """
    try:
        index.species_row(plant_id)
    except KeyError:
        raise SpeciesNotFoundError(f"plant id {plant_id!r} is not in the index version {index.version}") from None

    if index.folder is None or not index.meta.get("thumbnails"):
        raise ThumbnailNotFoundError(
            f"the index version {index.version} has no thumbnails; rebuild it with the indexer to add them"
        )
    return index.folder.join(THUMBNAILS_FOLDER, f"{plant_id}.jpg")


def presigned_get_url(location: Location, expires_in: int = PRESIGNED_URL_EXPIRES) -> str:
    """Return a presigned GET URL of an S3 object, or raise StorageError when botocore cannot sign it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return storage.s3_client().generate_presigned_url(
            "get_object",
            Params={"Bucket": location.bucket, "Key": location.path},
            ExpiresIn=expires_in,
        )
    except (BotoCoreError, ClientError) as error:
        logger.error("presigning a GET of %s failed: %s", location, error)
        raise StorageError(f"cannot create a thumbnail URL: {error}") from error


def local_thumbnail(location: Location, etag: str, request: Request) -> Response:
    """Return the thumbnail bytes with cache headers, or 304 when the client's copy is current."""
    headers = {"Cache-Control": f"public, max-age={LOCAL_MAX_AGE}", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)

    try:
        data = storage.read_bytes(location)
    except ObjectNotFound as error:
        raise ThumbnailNotFoundError(f"no thumbnail stored for this species at {location.name}") from error
    return Response(content=data, media_type=THUMBNAIL_CONTENT_TYPE, headers=headers)


@router.get(
    "/species/{plant_id}/thumbnail",
    response_class=Response,
    responses={
        200: {"content": {THUMBNAIL_CONTENT_TYPE: {}}, "description": "the JPEG (local index)"},
        307: {"description": "redirect to a presigned S3 URL of the JPEG (index in S3)"},
        400: {"description": "invalid plant id"},
        404: {"description": "unknown plant id, or an index without thumbnails"},
        503: {"description": "no index is loaded"},
    },
)
def species_thumbnail(plant_id: str, request: Request) -> Response:
    """Return the reference thumbnail of a species (JPEG, longest side at most 256 px)."""
    validate_plant_id(plant_id)

    state: ServiceState = request.app.state.service
    index = state.identifier().index
    location = thumbnail_location(index, plant_id)

    if location.is_s3:
        url = presigned_get_url(location)
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": f"private, max-age={REDIRECT_MAX_AGE}"})

    etag = f'"{index.version}-{plant_id}"'
    return local_thumbnail(location, etag, request)
