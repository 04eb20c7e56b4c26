"""Find the reference photos in a folder and the plant id in each file name.

A reference photo is named plant_species_thumbnail_image_{plant_id}.{jpg,jpeg,png,webp}.
The scan only lists files. The builder decodes them and skips the corrupt ones.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import ConfigError, StorageError

logger = logging.getLogger(__name__)

# A plant id is ASCII letters, digits, '-' and '_', and starts with a letter or digit.
# It becomes part of S3 keys and JSON, so spaces, dots and non-ASCII letters are
# rejected instead of being stripped: ' 7 é' must not silently turn into '7'.
# Match it with fullmatch, because '$' also matches before a trailing newline.
PLANT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

REFERENCE_PREFIX = "plant_species_thumbnail_image_"

# Supported extensions, compared in lower case. When one plant id has several photos,
# the one whose extension comes first here is used.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class ReferencePhoto:
    plant_id: str
    path: Path


@dataclass(frozen=True)
class Skipped:
    """A file the scan did not use, with the reason in words."""

    path: Path
    reason: str


@dataclass
class ScanResult:
    photos: list[ReferencePhoto] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def is_valid_plant_id(plant_id: str) -> bool:
    """True when the whole string matches PLANT_ID_PATTERN."""
    return PLANT_ID_PATTERN.fullmatch(plant_id) is not None


def _plant_id_from_name(path: Path) -> tuple[str | None, str | None]:
    """Return (plant id, None) for a reference photo name, or (None, reason to skip)."""
    supported = ", ".join(IMAGE_EXTENSIONS)
    if not path.suffix:
        return None, f"file name has no extension; expected one of {supported}"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None, f"extension {path.suffix!r} is not a supported image type ({supported})"

    stem = path.name[: -len(path.suffix)]
    if not stem.startswith(REFERENCE_PREFIX):
        return None, f"file name does not start with {REFERENCE_PREFIX!r}"

    plant_id = stem[len(REFERENCE_PREFIX) :]
    if not plant_id:
        return None, "plant id is empty"
    if not is_valid_plant_id(plant_id):
        return None, (
            f"plant id {plant_id!r} is invalid: use letters, digits, '-' or '_' "
            "(ASCII only, starting with a letter or digit)"
        )
    return plant_id, None


def _preference(path: Path) -> tuple[int, str]:
    return (IMAGE_EXTENSIONS.index(path.suffix.lower()), path.name)


def find_reference_photos(folder: str | Path) -> ScanResult:
    """List the reference photos directly inside `folder`, sorted by plant id.

    Extensions match ignoring case. Names that start with '.' (such as .DS_Store) are
    ignored without a record. Other entries that are not usable photos go to `skipped`
    with the reason: subfolders, other extensions, names without the prefix, empty or
    invalid plant ids, and all but one photo of a repeated plant id. Raises ConfigError
    when the folder does not exist or is not a folder, and StorageError when it cannot
    be listed.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ConfigError(f"reference photo folder not found: {folder}")
    if not folder.is_dir():
        raise ConfigError(f"reference photo path is not a folder: {folder}")

    logger.info("scanning %s for reference photos", folder)
    try:
        entries = sorted(folder.iterdir(), key=lambda entry: entry.name)
    except OSError as error:
        raise StorageError(f"could not list reference photo folder {folder}: {error}") from error

    result = ScanResult()
    paths_by_id: dict[str, list[Path]] = {}

    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            result.skipped.append(Skipped(entry, "is a folder; subfolders are not scanned"))
            continue

        plant_id, reason = _plant_id_from_name(entry)
        if plant_id is None:
            result.skipped.append(Skipped(entry, reason or "not a reference photo"))
            continue
        paths_by_id.setdefault(plant_id, []).append(entry)

    # One photo per plant id: the first by IMAGE_EXTENSIONS order, then by file name.
    for plant_id in sorted(paths_by_id):
        chosen, *others = sorted(paths_by_id[plant_id], key=_preference)
        result.photos.append(ReferencePhoto(plant_id, chosen))
        for other in others:
            result.skipped.append(
                Skipped(other, f"duplicate plant id {plant_id!r}: using {chosen.name}, not {other.name}")
            )

    result.skipped.sort(key=lambda skipped: skipped.path.name)
    logger.info(
        "found %d reference photos in %s, skipped %d file(s)",
        len(result.photos),
        folder,
        len(result.skipped),
    )
    return result
