"""Labelled query photos for the evaluation: from a labels CSV, or from file names.

A labels CSV has the columns `file,plant_id`. `file` is relative to the queries folder,
and an empty `plant_id` marks a photo of a species that is not in the index. Without a
CSV, each photo in the queries folder is named `{plant_id}_{n}.{ext}`, and every photo in
an optional unknown folder is a species that is not in the index.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from indexer.scan import IMAGE_EXTENSIONS, is_valid_plant_id
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ("file", "plant_id")

# {plant_id}_{n}: the plant id is everything before the last underscore.
QUERY_NAME_PATTERN = re.compile(r"^(?P<plant_id>.+)_(?P<number>\d+)$")


@dataclass(frozen=True)
class QueryPhoto:
    """A query photo and its species, or None for a species that is not in the index."""

    path: Path
    plant_id: str | None

    @property
    def is_known(self) -> bool:
        return self.plant_id is not None


def _is_photo(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _require_folder(folder: Path, role: str) -> None:
    if not folder.exists():
        raise ConfigError(f"{role} folder not found: {folder}")
    if not folder.is_dir():
        raise ConfigError(f"{role} path is not a folder: {folder}")


def queries_from_names(folder: Path) -> list[QueryPhoto]:
    """List the photos of `folder` named {plant_id}_{n}.{ext}, sorted by file name.

    Raises ConfigError for a photo whose name does not follow that pattern, because
    guessing its species would make the numbers wrong without notice.
    """
    _require_folder(folder, "queries")
    photos = []
    for path in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if not _is_photo(path):
            continue
        match = QUERY_NAME_PATTERN.fullmatch(path.stem)
        if match is None or not is_valid_plant_id(match["plant_id"]):
            raise ConfigError(
                f"query photo {path.name!r} is not named {{plant_id}}_{{n}} (such as 12_1.jpg): "
                "rename it or pass --labels CSV with file,plant_id columns"
            )
        photos.append(QueryPhoto(path, match["plant_id"]))
    return photos


def unknown_photos(folder: Path) -> list[QueryPhoto]:
    """List every photo in `folder` as a query of a species that is not in the index."""
    _require_folder(folder, "unknown species")
    return [
        QueryPhoto(path, None)
        for path in sorted(folder.iterdir(), key=lambda entry: entry.name)
        if _is_photo(path)
    ]


def read_labels_csv(path: Path, queries_folder: Path) -> list[QueryPhoto]:
    """Read a file,plant_id CSV (UTF-8, a byte order mark allowed) into query photos.

    Raises ConfigError when the file or a column is missing, when a row names a file that
    does not exist under `queries_folder`, lists a file twice or has an invalid plant id.
    """
    _require_folder(queries_folder, "queries")
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as error:
        raise ConfigError(f"could not read the labels CSV {path}: {error}") from error

    photos: list[QueryPhoto] = []
    seen: set[str] = set()
    with handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in LABEL_COLUMNS if name not in columns]
        if missing:
            raise ConfigError(
                f"labels CSV {path} has no {', '.join(missing)} column; "
                f"expected a header with {','.join(LABEL_COLUMNS)}, found {','.join(columns) or 'nothing'}"
            )
        reader.fieldnames = columns

        for line, row in enumerate(reader, start=2):
            name = (row.get("file") or "").strip()
            plant_id = (row.get("plant_id") or "").strip() or None
            if not name:
                raise ConfigError(f"labels CSV {path} line {line}: the file column is empty")
            if name in seen:
                raise ConfigError(f"labels CSV {path} line {line}: file {name!r} is listed twice")
            seen.add(name)

            photo = queries_folder / name
            if not photo.is_file():
                raise ConfigError(
                    f"labels CSV {path} line {line}: file {name!r} not found in {queries_folder}; "
                    "file names are relative to the --queries folder"
                )
            if plant_id is not None and not is_valid_plant_id(plant_id):
                raise ConfigError(f"labels CSV {path} line {line}: plant id {plant_id!r} is invalid")
            photos.append(QueryPhoto(photo, plant_id))

    if not photos:
        raise ConfigError(f"labels CSV {path} lists no photos")
    return photos


def mark_unindexed(photos: list[QueryPhoto], species: Collection[str]) -> tuple[list[QueryPhoto], list[QueryPhoto]]:
    """Turn queries labelled with a species that has no prototype into unknown-species queries.

    Returns (all photos after the change, the photos that were changed).
    """
    changed = [photo for photo in photos if photo.plant_id is not None and photo.plant_id not in species]
    if changed:
        logger.warning(
            "%d query photos name species that are not in the index (such as %s); they count as unknown species",
            len(changed), changed[0].plant_id,
        )
    changed_paths = {photo.path for photo in changed}
    updated = [QueryPhoto(photo.path, None) if photo.path in changed_paths else photo for photo in photos]
    return updated, changed
