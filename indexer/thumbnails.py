"""Reference thumbnails: one small JPEG per indexed species, stored in the index version folder.

The page shows each match's reference photo beside the query, so a person can compare them
by eye. The indexer writes `versions/<version>/thumbnails/<plant_id>.jpg` through
shared.storage (local folder or S3) before the latest.json pointer, and the inference
function serves them at GET /species/{plant_id}/thumbnail.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from shared import storage
from shared.errors import PlantIdError
from shared.imaging import decode_image
from shared.index_store import THUMBNAILS_FOLDER, Index
from shared.storage import Location

logger = logging.getLogger(__name__)

MAX_SIDE = 256
JPEG_QUALITY = 85
CONTENT_TYPE = "image/jpeg"

# Thumbnails are small, so the time goes into S3 round trips; a few threads overlap them.
WRITE_THREADS = 8


def thumbnail_meta() -> dict[str, Any]:
    """Return the meta.json entry that marks an index version as having thumbnails."""
    return {"folder": THUMBNAILS_FOLDER, "format": "jpeg", "max_side": MAX_SIDE, "quality": JPEG_QUALITY}


def thumbnail_name(plant_id: str) -> str:
    return f"{plant_id}.jpg"


def make_thumbnail(data: bytes) -> bytes:
    """Decode a photo (upright RGB) and return a JPEG whose longest side is at most MAX_SIDE.

    Raises the ImageError of decode_image for bytes that are not a usable photo.
    """
    image = decode_image(data)
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def write_thumbnails(photos: Mapping[str, Path], version_folder: Location) -> int:
    """Write the thumbnail of every {plant_id: photo path} into the version folder; return how many.

    A photo that cannot be read or decoded is logged and skipped, so the page shows its
    placeholder instead of failing the whole index.
    """
    destination = version_folder.join(THUMBNAILS_FOLDER)

    def write_one(item: tuple[str, Path]) -> bool:
        plant_id, path = item
        try:
            data = make_thumbnail(Path(path).read_bytes())
        except (OSError, PlantIdError) as error:
            logger.warning("no thumbnail for plant id %r from %s: %s", plant_id, path, error)
            return False
        storage.write_bytes(destination.join(thumbnail_name(plant_id)), data, CONTENT_TYPE)
        return True

    written = _run_all(write_one, photos.items())
    logger.info("wrote %d of %d thumbnails to %s", written, len(photos), destination)
    return written


def copy_thumbnails(parts: Sequence[Index], version_folder: Location) -> int:
    """Copy the thumbnails of index parts (loaded with load_index) into a merged version folder.

    Parts without thumbnails and missing files are logged and skipped. Returns how many
    thumbnails were copied.
    """
    destination = version_folder.join(THUMBNAILS_FOLDER)
    sources: list[tuple[str, Location]] = []
    for part in parts:
        if part.folder is None or not part.meta.get("thumbnails"):
            logger.warning("index part version %s has no thumbnails; its species get none", part.version)
            continue
        folder = part.folder.join(THUMBNAILS_FOLDER)
        sources.extend((plant_id, folder.join(thumbnail_name(plant_id))) for plant_id in part.plant_ids)

    def copy_one(item: tuple[str, Location]) -> bool:
        plant_id, source = item
        try:
            data = storage.read_bytes(source)
        except storage.ObjectNotFound:
            logger.warning("thumbnail of plant id %r not found at %s; skipped", plant_id, source)
            return False
        storage.write_bytes(destination.join(thumbnail_name(plant_id)), data, CONTENT_TYPE)
        return True

    copied = _run_all(copy_one, sources)
    logger.info("copied %d of %d thumbnails to %s", copied, len(sources), destination)
    return copied


def _run_all(task: Any, items: Iterable[Any]) -> int:
    """Run `task` on every item in a thread pool; return how many returned True.

    A StorageError from any task is raised, so the caller never writes the pointer of a
    version whose thumbnails failed to store.
    """
    with ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="thumbnail") as pool:
        return sum(1 for done in pool.map(task, items) if done)
