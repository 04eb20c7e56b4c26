"""Write and load the species prototype index: float16 embeddings plus species metadata.

Layout under a destination (local folder or ``s3://bucket/prefix``)::

    versions/<version>/embeddings_fp16.npz   arrays `embeddings` float16 [N, D], `plant_ids` '<U..' [N]
    versions/<version>/meta.json             model, augmentation, processor and species rows
    latest.json                              pointer to the current version, written last

Versioned objects are never rewritten with other content, so a reader that follows the
pointer always gets one consistent pair. Loading validates everything and raises
IndexValidationError that names the problem: a service must refuse a bad index, never guess.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from shared import storage
from shared.errors import IndexNotFoundError, IndexValidationError
from shared.storage import Location, ObjectNotFound

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings_fp16.npz"
META_FILE = "meta.json"
POINTER_FILE = "latest.json"
VERSIONS_FOLDER = "versions"

# Reference thumbnails (<plant_id>.jpg) live in this folder beside meta.json.
THUMBNAILS_FOLDER = "thumbnails"

EMBEDDINGS_KEY = "embeddings"
PLANT_IDS_KEY = "plant_ids"

# float16 storage changes a unit vector's norm by about 1e-3 at D=512, so 1e-2 accepts
# every correctly normalised prototype and still rejects scaled or zero rows.
NORM_TOLERANCE = 1e-2

# Rows per step when upcasting to float32 for checks, so a 1M x 512 index needs about
# 128 MB of scratch memory, not a full 2 GB float32 copy.
CHECK_BLOCK_ROWS = 65536

PathLike = str | os.PathLike[str] | Location


@dataclass(frozen=True, eq=False)
class Index:
    """A validated prototype index: row i of ``embeddings`` belongs to ``plant_ids[i]``."""

    embeddings: np.ndarray
    plant_ids: tuple[str, ...]
    species: tuple[dict[str, Any], ...]
    meta: dict[str, Any]
    version: str
    # Folder of meta.json (versions/<version>/ under a destination written by write_index),
    # where files of this version such as thumbnails live. None when parsed from bytes.
    folder: Location | None = None

    @property
    def count(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dimension(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def model_id(self) -> str | None:
        return _model_id(self.meta)

    def species_row(self, plant_id: str) -> dict[str, Any]:
        """Return the species row of ``plant_id``. Raises KeyError for an unknown id."""
        return self.species[self._row_numbers()[plant_id]]

    def name_of(self, plant_id: str) -> str | None:
        """Return the scientific name of ``plant_id``, else its common name, else None."""
        row = self.species_row(plant_id)
        return row.get("scientific_name") or row.get("common_name") or None

    def _row_numbers(self) -> dict[str, int]:
        # Built on first use; the dataclass is frozen, so the cache goes in __dict__.
        cached = self.__dict__.get("_row_number_cache")
        if cached is None:
            cached = {plant_id: row for row, plant_id in enumerate(self.plant_ids)}
            object.__setattr__(self, "_row_number_cache", cached)
        return cached


# Writing.


def write_index(
    dest: PathLike,
    embeddings: np.ndarray,
    plant_ids: Sequence[str],
    meta: Mapping[str, Any],
    before_pointer: Callable[[Location], None] | None = None,
) -> str:
    """Write a new index version under ``dest``, then point latest.json at it; return the version.

    ``meta`` comes from the caller (model, augmentation, image_processor, species rows and
    anything else). This function sets format_version, version, count, dimension and
    created_at, and fills species rows ({"plant_id": ...}) when they are missing. The
    data is validated exactly as load_index does before anything is written, so an
    IndexValidationError leaves the destination untouched. ``before_pointer``, when
    given, is called with the version folder after the embeddings and meta.json are
    written and before latest.json, so it can add files (thumbnails) to the version.
    """
    root = storage.parse_location(dest)
    matrix = _as_float16_matrix(embeddings)
    ids = _as_plant_id_list(plant_ids)
    if len(ids) != matrix.shape[0]:
        raise IndexValidationError(f"{len(ids)} plant ids for {matrix.shape[0]} embeddings")

    npz_bytes = _npz_bytes(matrix, ids)
    created_at = datetime.now(timezone.utc)
    version = f"{created_at:%Y%m%dT%H%M%SZ}-{_content_hash(matrix, ids, meta)}"

    full_meta = _complete_meta(meta, ids, matrix.shape[1], version, created_at)
    meta_bytes = json.dumps(full_meta, ensure_ascii=False, indent=1).encode("utf-8")

    # Validate exactly what will be stored, so every written index loads.
    parse_index(npz_bytes, meta_bytes, version=version)

    version_folder = f"{VERSIONS_FOLDER}/{version}"
    pointer = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "embeddings": f"{version_folder}/{EMBEDDINGS_FILE}",
        "meta": f"{version_folder}/{META_FILE}",
        "count": matrix.shape[0],
        "dimension": matrix.shape[1],
        "model_id": _model_id(full_meta),
        "created_at": full_meta["created_at"],
    }

    logger.info("writing index version %s to %s: %d x %d", version, root, *matrix.shape)
    storage.write_bytes(root.join(pointer["embeddings"]), npz_bytes, "application/octet-stream")
    storage.write_bytes(root.join(pointer["meta"]), meta_bytes, "application/json")
    if before_pointer is not None:
        before_pointer(root.join(version_folder))

    # The pointer goes last: until it lands, readers keep loading the previous version.
    pointer_bytes = json.dumps(pointer, ensure_ascii=False, indent=1).encode("utf-8")
    storage.write_bytes(root.join(POINTER_FILE), pointer_bytes, "application/json")
    logger.info("index version %s is now the latest at %s", version, root)
    return version


def _model_id(meta: Mapping[str, Any]) -> str | None:
    model = meta.get("model")
    return model.get("id") if isinstance(model, Mapping) else None


def _as_float16_matrix(embeddings: np.ndarray) -> np.ndarray:
    array = np.asarray(embeddings)
    if array.dtype.kind != "f":
        raise IndexValidationError(f"embeddings have dtype {array.dtype}, expected a float type")
    if array.ndim != 2:
        raise IndexValidationError(f"embeddings have shape {array.shape}, expected [count, dimension]")
    return np.ascontiguousarray(array, dtype=np.float16)


def _as_plant_id_list(plant_ids: Sequence[str]) -> list[str]:
    ids = list(plant_ids)
    for position, plant_id in enumerate(ids):
        if not isinstance(plant_id, str):
            raise IndexValidationError(
                f"plant id at row {position} is {type(plant_id).__name__} {plant_id!r}; "
                "plant ids must be strings (so that '007' stays '007')"
            )
    return ids


def _npz_bytes(matrix: np.ndarray, ids: list[str]) -> bytes:
    # A fixed-width unicode array loads without pickle, unlike an object array.
    width = max((len(plant_id) for plant_id in ids), default=1) or 1
    id_array = np.array(ids, dtype=f"<U{width}")

    buffer = io.BytesIO()
    np.savez(buffer, **{EMBEDDINGS_KEY: matrix, PLANT_IDS_KEY: id_array})
    return buffer.getvalue()


def _content_hash(matrix: np.ndarray, ids: list[str], meta: Mapping[str, Any]) -> str:
    # The caller's meta counts too, so a version that only adds metadata (such as a
    # rejection rule) written within the same second never reuses the version folder.
    digest = hashlib.sha256(matrix.tobytes())
    digest.update("\n".join(ids).encode("utf-8"))
    digest.update(json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
    return digest.hexdigest()[:8]


def _complete_meta(
    meta: Mapping[str, Any],
    ids: list[str],
    dimension: int,
    version: str,
    created_at: datetime,
) -> dict[str, Any]:
    full = dict(meta)
    full["format_version"] = FORMAT_VERSION
    full["version"] = version
    full["count"] = len(ids)
    full["dimension"] = dimension
    full["created_at"] = created_at.isoformat(timespec="seconds").replace("+00:00", "Z")

    rows = full.get("species")
    if rows is None:
        full["species"] = [{"plant_id": plant_id} for plant_id in ids]
    elif isinstance(rows, Sequence) and len(rows) == len(ids):
        # Rows without a plant_id get the one of their embedding row; a mismatch stays
        # for parse_index to report.
        full["species"] = [
            {"plant_id": plant_id, **row} if isinstance(row, Mapping) else row
            for plant_id, row in zip(ids, rows)
        ]
    return full


# Loading.


def load_index(location: PathLike, expected_dim: int | None = None) -> Index:
    """Load and validate the index at ``location``.

    ``location`` is a destination written by write_index (latest.json is followed) or a
    folder that directly contains embeddings_fp16.npz and meta.json. Raises
    IndexNotFoundError when neither exists, IndexValidationError when the data is
    invalid and StorageError when storage cannot be reached.
    """
    root = storage.parse_location(location)
    pointer = _read_pointer(root)

    if pointer is None:
        npz_location = root.join(EMBEDDINGS_FILE)
        meta_location = root.join(META_FILE)
        folder = root
        version = None
    else:
        npz_location = root.join(pointer["embeddings"])
        meta_location = root.join(pointer["meta"])
        folder = root.join(posixpath.dirname(pointer["meta"]))
        version = pointer["version"]

    # NOTE: the whole .npz is read into memory and then decoded, so loading peaks at about
    # twice the embeddings size (2 GB for 1M x 512 float16) before the bytes are freed.
    try:
        npz_bytes = storage.read_bytes(npz_location)
        meta_bytes = storage.read_bytes(meta_location)
    except ObjectNotFound as error:
        if pointer is None:
            raise IndexNotFoundError(
                f"no index at {root}: expected {POINTER_FILE}, or {EMBEDDINGS_FILE} and "
                f"{META_FILE}; build one with the indexer ({error.message})"
            ) from error
        raise IndexNotFoundError(
            f"{POINTER_FILE} at {root} names version {version}, but its files are missing: {error.message}"
        ) from error

    try:
        index = parse_index(npz_bytes, meta_bytes, expected_dim=expected_dim, version=version)
        if pointer is not None:
            _check_pointer_matches(pointer, index)
        index = replace(index, folder=folder)
    except IndexValidationError as error:
        logger.error("index at %s is invalid: %s", root, error.message)
        raise IndexValidationError(f"index at {root} is invalid: {error.message}") from error

    logger.info(
        "loaded index from %s: version %s, %d prototypes, dimension %d",
        root, index.version, index.count, index.dimension,
    )
    return index


def read_index_version(location: PathLike) -> str:
    """Return the version that load_index would load now, reading only latest.json.

    For a folder without latest.json, meta.json is read (and the .npz as well when
    meta.json carries no version), so that is not cheap.
    """
    root = storage.parse_location(location)
    pointer = _read_pointer(root)
    if pointer is not None:
        return pointer["version"]

    try:
        meta_bytes = storage.read_bytes(root.join(META_FILE))
        meta = _parse_json(meta_bytes, META_FILE)
        if isinstance(meta, dict) and isinstance(meta.get("version"), str):
            return meta["version"]
        npz_bytes = storage.read_bytes(root.join(EMBEDDINGS_FILE))
    except ObjectNotFound as error:
        raise IndexNotFoundError(f"no index at {root}: {error.message}") from error
    return _unversioned_id(npz_bytes, meta_bytes)


def _read_pointer(root: Location) -> dict[str, Any] | None:
    """Return the validated latest.json under ``root``, or None when there is none."""
    pointer_location = root.join(POINTER_FILE)
    try:
        data = storage.read_bytes(pointer_location)
    except ObjectNotFound:
        return None

    pointer = _parse_json(data, POINTER_FILE)
    if not isinstance(pointer, dict):
        raise IndexValidationError(f"{pointer_location} is not a JSON object")

    format_version = pointer.get("format_version")
    if not isinstance(format_version, int) or isinstance(format_version, bool):
        raise IndexValidationError(f"{pointer_location} has no integer format_version")
    if format_version > FORMAT_VERSION:
        raise IndexValidationError(
            f"{pointer_location} has format_version {format_version}, but this code reads "
            f"up to {FORMAT_VERSION}; deploy a newer service or rebuild the index"
        )

    for key in ("version", "embeddings", "meta"):
        value = pointer.get(key)
        if not isinstance(value, str) or not value:
            raise IndexValidationError(f"{pointer_location} has no {key!r} string")

    for key in ("embeddings", "meta"):
        parts = pointer[key].split("/")
        if pointer[key].startswith("/") or ".." in parts or "\\" in pointer[key]:
            raise IndexValidationError(
                f"{pointer_location} {key!r} path {pointer[key]!r} must be relative to the index folder"
            )
    return pointer


def _check_pointer_matches(pointer: dict[str, Any], index: Index) -> None:
    for key, actual in (("count", index.count), ("dimension", index.dimension)):
        stated = pointer.get(key)
        if stated is not None and stated != actual:
            raise IndexValidationError(f"{POINTER_FILE} has {key} {stated}, but the index has {actual}")


# Validation.


def parse_index(
    npz_bytes: bytes,
    meta_bytes: bytes,
    expected_dim: int | None = None,
    version: str | None = None,
) -> Index:
    """Validate the contents of embeddings_fp16.npz and meta.json and return an Index.

    Checks, each raising IndexValidationError that names the problem:

    - the bytes are a real .npz archive without pickled object arrays;
    - `embeddings` is a non-empty 2-D float16 or float32 array with ``expected_dim``
      columns when that is given;
    - every row is finite with unit L2 norm within NORM_TOLERANCE, computed in float32;
    - plant ids come from a unicode `plant_ids` array or, when that is absent, from the
      meta.json rows, and they are unique and non-empty;
    - meta.json is our dict form or a plain list of species rows, one per embedding in
      the same order;
    - ``version`` (from latest.json) matches meta.json's version.
    """
    arrays = _read_npz(npz_bytes)
    embeddings = _check_embeddings(arrays, expected_dim)
    count = embeddings.shape[0]

    meta, rows = _parse_meta(meta_bytes, count, embeddings.shape[1])
    plant_ids = _resolve_plant_ids(arrays.get(PLANT_IDS_KEY), rows, count)
    _check_rows(embeddings, plant_ids)

    stated_version = meta.get("version")
    if version is not None and stated_version is not None and stated_version != version:
        raise IndexValidationError(
            f"{POINTER_FILE} names version {version}, but {META_FILE} has version {stated_version}"
        )
    resolved_version = version or stated_version or _unversioned_id(npz_bytes, meta_bytes)

    stored = np.ascontiguousarray(embeddings, dtype=np.float16)
    stored.setflags(write=False)
    species = tuple({**row, "plant_id": plant_id} for row, plant_id in zip(rows, plant_ids))
    return Index(
        embeddings=stored,
        plant_ids=tuple(plant_ids),
        species=species,
        meta=meta,
        version=str(resolved_version),
    )


def _read_npz(npz_bytes: bytes) -> dict[str, np.ndarray]:
    """Load every array of the archive without pickle; reject anything else."""
    if not npz_bytes.startswith(b"PK"):
        raise IndexValidationError("index file is not a valid .npz archive (no zip header)")

    try:
        archive = np.load(io.BytesIO(npz_bytes), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise IndexValidationError(f"index file is not a valid .npz archive: {error}") from error

    arrays: dict[str, np.ndarray] = {}
    pickled: list[str] = []
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as error:
                if "allow_pickle" not in str(error):
                    raise IndexValidationError(f"index array {key!r} cannot be read: {error}") from error
                pickled.append(key)
            except (OSError, EOFError, zipfile.BadZipFile) as error:
                raise IndexValidationError(f"index array {key!r} is corrupt: {error}") from error

    if pickled:
        raise IndexValidationError(
            f"index contains pickled object arrays ({', '.join(pickled)}), which are never loaded; "
            "save every array with a numeric or unicode dtype"
        )
    return arrays


def _check_embeddings(arrays: dict[str, np.ndarray], expected_dim: int | None) -> np.ndarray:
    if EMBEDDINGS_KEY not in arrays:
        found = ", ".join(sorted(arrays)) or "nothing"
        raise IndexValidationError(f"index file has no {EMBEDDINGS_KEY!r} array (found: {found})")

    embeddings = arrays[EMBEDDINGS_KEY]
    if embeddings.dtype not in (np.float16, np.float32):
        raise IndexValidationError(
            f"index embeddings have dtype {embeddings.dtype}, expected float16 or float32"
        )
    if embeddings.ndim != 2:
        raise IndexValidationError(
            f"index embeddings have shape {embeddings.shape}, expected [count, dimension]"
        )

    count, dimension = embeddings.shape
    if count == 0:
        raise IndexValidationError("index contains no embeddings")
    if dimension == 0:
        raise IndexValidationError("index embeddings have dimension 0")
    if expected_dim is not None and dimension != expected_dim:
        raise IndexValidationError(
            f"index embeddings have dimension {dimension}, expected {expected_dim} "
            "(was the index built with another model?)"
        )
    return embeddings


def _check_rows(embeddings: np.ndarray, plant_ids: list[str]) -> None:
    """Raise unless every row is finite with unit norm, checked in float32 blocks."""
    first_non_finite: int | None = None
    non_finite_count = 0
    first_off_norm: tuple[int, float] | None = None
    off_norm_count = 0

    for start in range(0, embeddings.shape[0], CHECK_BLOCK_ROWS):
        block = embeddings[start : start + CHECK_BLOCK_ROWS].astype(np.float32)

        finite = np.isfinite(block).all(axis=1)
        non_finite_count += int((~finite).sum())
        if first_non_finite is None and not finite.all():
            first_non_finite = start + int(np.argmin(finite))

        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        off = finite & (np.abs(norms - 1.0) > NORM_TOLERANCE)
        off_norm_count += int(off.sum())
        if first_off_norm is None and off.any():
            position = int(np.argmax(off))
            first_off_norm = (start + position, float(norms[position]))

    total = embeddings.shape[0]
    if first_non_finite is not None:
        row = first_non_finite
        raise IndexValidationError(
            f"row {row} (plant id {plant_ids[row]!r}) contains non-finite values (inf or NaN); "
            f"{non_finite_count} of {total} rows do"
        )
    if first_off_norm is not None:
        row, norm = first_off_norm
        raise IndexValidationError(
            f"row {row} (plant id {plant_ids[row]!r}) has norm {norm:.3f}, expected 1 +/- "
            f"{NORM_TOLERANCE:g}; {off_norm_count} of {total} rows are not L2-normalised"
        )


def _parse_json(data: bytes, name: str) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise IndexValidationError(f"{name} is not UTF-8: {error}") from error
    except json.JSONDecodeError as error:
        raise IndexValidationError(f"{name} is not valid JSON: {error}") from error


def _parse_meta(meta_bytes: bytes, count: int, dimension: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return (meta dict, species rows) from our dict form or a plain list of rows."""
    parsed = _parse_json(meta_bytes, META_FILE)

    if isinstance(parsed, list):
        meta: dict[str, Any] = {}
        rows = parsed
    elif isinstance(parsed, dict):
        meta = parsed
        _check_meta_header(meta, count, dimension)
        rows = meta.get("species")
        if not isinstance(rows, list):
            raise IndexValidationError(f"{META_FILE} has no 'species' list")
    else:
        raise IndexValidationError(f"{META_FILE} must be an object or a list of species rows")

    if len(rows) != count:
        raise IndexValidationError(
            f"{META_FILE} lists {len(rows)} species for {count} embeddings"
        )
    for position, row in enumerate(rows):
        if not isinstance(row, dict):
            raise IndexValidationError(f"{META_FILE} species row {position} is not an object")
    return meta, rows


def _check_meta_header(meta: dict[str, Any], count: int, dimension: int) -> None:
    format_version = meta.get("format_version")
    if isinstance(format_version, int) and format_version > FORMAT_VERSION:
        raise IndexValidationError(
            f"{META_FILE} has format_version {format_version}, but this code reads up to "
            f"{FORMAT_VERSION}; deploy a newer service or rebuild the index"
        )

    for key, actual in (("count", count), ("dimension", dimension)):
        stated = meta.get(key)
        if stated is not None and stated != actual:
            raise IndexValidationError(f"{META_FILE} has {key} {stated}, but the embeddings have {actual}")


def _resolve_plant_ids(id_array: np.ndarray | None, rows: list[dict[str, Any]], count: int) -> list[str]:
    """Return the plant ids from the .npz, checked against meta.json rows, or from the rows."""
    if id_array is None:
        ids = [row.get("plant_id") for row in rows]
        for position, plant_id in enumerate(ids):
            if not isinstance(plant_id, str):
                raise IndexValidationError(
                    f"{META_FILE} species row {position} has plant_id {plant_id!r}, expected a string"
                )
    else:
        if id_array.dtype.kind != "U" or id_array.ndim != 1:
            raise IndexValidationError(
                f"index {PLANT_IDS_KEY!r} array has dtype {id_array.dtype} and shape "
                f"{id_array.shape}, expected a 1-D unicode array"
            )
        if id_array.shape[0] != count:
            raise IndexValidationError(
                f"index has {id_array.shape[0]} plant ids for {count} embeddings"
            )
        ids = id_array.tolist()
        for position, (plant_id, row) in enumerate(zip(ids, rows)):
            stated = row.get("plant_id")
            if stated is not None and stated != plant_id:
                raise IndexValidationError(
                    f"{META_FILE} species row {position} has plant_id {stated!r}, but embedding "
                    f"row {position} belongs to {plant_id!r}"
                )

    _check_unique(ids)
    return ids


def _check_unique(ids: list[str]) -> None:
    seen: dict[str, int] = {}
    for position, plant_id in enumerate(ids):
        if not plant_id or plant_id != plant_id.strip("\x00"):
            raise IndexValidationError(f"row {position} has an empty or invalid plant id {plant_id!r}")
        if plant_id in seen:
            raise IndexValidationError(
                f"plant id {plant_id!r} appears twice (rows {seen[plant_id]} and {position}); "
                "each species needs exactly one prototype"
            )
        seen[plant_id] = position


def _unversioned_id(npz_bytes: bytes, meta_bytes: bytes) -> str:
    """Return a content-derived version for an index written without one."""
    digest = hashlib.sha256(npz_bytes)
    digest.update(meta_bytes)
    return f"unversioned-{digest.hexdigest()[:8]}"
