"""Find the reference photos in a folder and the plant id in each file name.

A reference photo is named plant_species_thumbnail_image_{plant_id}.{jpg,jpeg,png,webp}.
A species may have several photos, which the builder averages into one prototype:

* by name: plant_species_thumbnail_image_{plant_id}__{n}.jpg, with two underscores and
  the photo number n (digits), is photo n of {plant_id}. The unnumbered photo, if any,
  comes first, then the numbered ones by n. Only the last "__" followed by nothing but
  digits is read this way, so ids with single underscores and digits ("007", "a_1",
  "1_2") keep their meaning. An id that itself ends in "__" and digits can only be given
  by a photo table;
* by a photo table (--photos-csv): a CSV with the columns `file` (a path relative to the
  folder) and `plant_id`. A listed file takes the id of its row and is not read by name,
  so any id can have any number of photos. Files that the table does not list follow the
  name rule.

The scan only lists files. The builder decodes them and skips the corrupt ones.
"""

from __future__ import annotations

import csv
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

# "{plant_id}__{n}": photo n of plant_id. The id part is matched lazily, so the suffix is
# the last "__" that only digits follow.
PHOTO_NUMBER_PATTERN = re.compile(r"^(?P<plant_id>.+?)__(?P<number>[0-9]+)$")

# Columns of a photo table (--photos-csv).
PHOTO_TABLE_COLUMNS = ("file", "plant_id")

# Supported extensions, compared in lower case. When one plant id has several photos,
# the one whose extension comes first here is used.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class ReferencePhoto:
    """The reference photos of one species: `path` first, then `extra_paths` in order."""

    plant_id: str
    path: Path
    extra_paths: tuple[Path, ...] = ()

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path, *self.extra_paths)


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


def _extension_problem(path: Path) -> str | None:
    """Return why `path` is not a supported image file by its extension, or None."""
    supported = ", ".join(IMAGE_EXTENSIONS)
    if not path.suffix:
        return f"file name has no extension; expected one of {supported}"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"extension {path.suffix!r} is not a supported image type ({supported})"
    return None


def _invalid_id_reason(plant_id: str) -> str:
    return (
        f"plant id {plant_id!r} is invalid: use letters, digits, '-' or '_' "
        "(ASCII only, starting with a letter or digit)"
    )


def split_photo_number(name_id: str) -> tuple[str, int | None]:
    """Split "{plant_id}__{n}" into (plant_id, n); any other text is (text, None)."""
    match = PHOTO_NUMBER_PATTERN.fullmatch(name_id)
    if match is None:
        return name_id, None
    return match.group("plant_id"), int(match.group("number"))


def _plant_id_from_name(path: Path) -> tuple[str | None, int | None, str | None]:
    """Return (plant id, photo number or None, None) for a reference photo name, or (None, None, reason to skip)."""
    problem = _extension_problem(path)
    if problem is not None:
        return None, None, problem

    stem = path.name[: -len(path.suffix)]
    if not stem.startswith(REFERENCE_PREFIX):
        return None, None, f"file name does not start with {REFERENCE_PREFIX!r}"

    plant_id, number = split_photo_number(stem[len(REFERENCE_PREFIX) :])
    if not plant_id:
        return None, None, "plant id is empty"
    if not is_valid_plant_id(plant_id):
        return None, None, _invalid_id_reason(plant_id)
    return plant_id, number, None


def _preference(path: Path) -> tuple[int, str]:
    return (IMAGE_EXTENSIONS.index(path.suffix.lower()), path.name)


def read_photo_table(path: Path, folder: Path) -> tuple[list[tuple[str, Path]], list[Skipped]]:
    """Read a photo table: (plant id, photo path) pairs in table order, and the rows it skips.

    `file` is a path relative to `folder`. A row is skipped, with the reason, when its id is
    invalid, its file is missing, not a supported image or listed in an earlier row. Raises
    ConfigError when the table cannot be read or lacks a column.
    """
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in PHOTO_TABLE_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(
                    f"photo table {path} has no column {', '.join(missing)}: "
                    f"its header must name the columns {', '.join(PHOTO_TABLE_COLUMNS)}"
                )
            rows = [(row.get("file") or "", row.get("plant_id") or "") for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"could not read photo table {path}: {error}") from error

    pairs: list[tuple[str, Path]] = []
    skipped: list[Skipped] = []
    seen: dict[Path, int] = {}
    for line, (name, plant_id) in enumerate(rows, start=2):
        name, plant_id = name.strip(), plant_id.strip()
        photo = folder / name
        if not name:
            skipped.append(Skipped(path, f"row {line} of the photo table has no file"))
        elif not is_valid_plant_id(plant_id):
            skipped.append(Skipped(photo, f"photo table row {line}: {_invalid_id_reason(plant_id)}"))
        elif not photo.is_file():
            skipped.append(Skipped(photo, f"photo table row {line}: file not found in {folder}"))
        elif _extension_problem(photo) is not None:
            skipped.append(Skipped(photo, f"photo table row {line}: {_extension_problem(photo)}"))
        elif photo.resolve() in seen:
            skipped.append(Skipped(photo, f"photo table row {line} repeats the file of row {seen[photo.resolve()]}"))
        else:
            seen[photo.resolve()] = line
            pairs.append((plant_id, photo))
    return pairs, skipped


def find_reference_photos(folder: str | Path, photos_csv: str | Path | None = None) -> ScanResult:
    """List the reference photos inside `folder`, one entry per plant id, sorted by plant id.

    Extensions match ignoring case. Names that start with '.' (such as .DS_Store) are
    ignored without a record. Other entries that are not usable photos go to `skipped`
    with the reason: subfolders, other extensions, names without the prefix, empty or
    invalid plant ids, and all but one file of a repeated plant id and photo number.
    `photos_csv` names a photo table whose files take the ids of its rows (module
    docstring). Raises ConfigError when the folder does not exist or is not a folder or
    the table cannot be read, and StorageError when the folder cannot be listed.
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
    listed: list[tuple[str, Path]] = []
    if photos_csv is not None:
        listed, table_skipped = read_photo_table(Path(photos_csv), folder)
        result.skipped.extend(table_skipped)
    listed_files = {path.resolve() for _, path in listed}

    # Photos found by name, keyed by (plant id, photo number); None numbers the unnumbered photo.
    paths_by_key: dict[tuple[str, int | None], list[Path]] = {}
    for entry in entries:
        if entry.name.startswith(".") or entry.resolve() in listed_files:
            continue
        if entry.is_dir():
            result.skipped.append(Skipped(entry, "is a folder; subfolders are not scanned"))
            continue

        plant_id, number, reason = _plant_id_from_name(entry)
        if plant_id is None:
            result.skipped.append(Skipped(entry, reason or "not a reference photo"))
            continue
        paths_by_key.setdefault((plant_id, number), []).append(entry)

    # One file per plant id and photo number: the first by IMAGE_EXTENSIONS order, then by name.
    paths_by_id: dict[str, list[Path]] = {}
    for plant_id, number in sorted(paths_by_key, key=lambda key: (key[0], -1 if key[1] is None else key[1])):
        chosen, *others = sorted(paths_by_key[(plant_id, number)], key=_preference)
        paths_by_id.setdefault(plant_id, []).append(chosen)
        subject = f"plant id {plant_id!r}" if number is None else f"photo {number} of plant id {plant_id!r}"
        for other in others:
            result.skipped.append(Skipped(other, f"duplicate {subject}: using {chosen.name}, not {other.name}"))

    for plant_id, path in listed:
        paths_by_id.setdefault(plant_id, []).append(path)

    for plant_id in sorted(paths_by_id):
        first, *extra = paths_by_id[plant_id]
        result.photos.append(ReferencePhoto(plant_id, first, tuple(extra)))

    result.skipped.sort(key=lambda skipped: skipped.path.name)
    logger.info(
        "found %d reference photos of %d species in %s, skipped %d file(s)",
        sum(len(photo.paths) for photo in result.photos),
        len(result.photos),
        folder,
        len(result.skipped),
    )
    return result
