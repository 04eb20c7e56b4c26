"""Sharding for indexing across machines, and the merge of the parts into one index.

Shard I of N takes every N-th reference photo (sorted by plant id), starting at photo I.
An AWS Batch array job passes its index in AWS_BATCH_JOB_ARRAY_INDEX, so `--shard auto/N`
reads I from there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import numpy as np

from indexer.thumbnails import copy_thumbnails, thumbnail_meta
from shared.errors import ConfigError, IndexValidationError
from shared.index_store import Index, load_index, write_index

logger = logging.getLogger(__name__)

ARRAY_INDEX_VARIABLE = "AWS_BATCH_JOB_ARRAY_INDEX"

# Settings that every part of one index must share; anything else may differ.
SETTINGS_THAT_MUST_MATCH = ("model", "dimension", "augmentation", "image_processor")

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def select(self, items: Sequence[T]) -> list[T]:
        return list(items[self.index :: self.count])

    def to_dict(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}


def parse_shard(text: str, environ: dict[str, str] | None = None) -> Shard:
    """Parse `I/N`, where I may be `auto` to read AWS_BATCH_JOB_ARRAY_INDEX."""
    environ = os.environ if environ is None else environ
    index_text, slash, count_text = text.partition("/")
    if not slash:
        raise ConfigError(f"invalid --shard {text!r}: expected I/N, for example 0/4 or auto/4")

    if index_text == "auto":
        index_text = environ.get(ARRAY_INDEX_VARIABLE, "")
        if not index_text:
            raise ConfigError(
                f"--shard {text} needs {ARRAY_INDEX_VARIABLE} in the environment "
                "(AWS Batch sets it in array jobs); otherwise pass the shard number, e.g. 0/4"
            )

    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"invalid --shard {text!r}: I and N must be integers") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"invalid --shard {text!r}: need 0 <= I < N and N >= 1")
    return Shard(index, count)


def check_compatible(first: Index, other: Index, other_location: str) -> None:
    for key in SETTINGS_THAT_MUST_MATCH:
        if first.meta.get(key) != other.meta.get(key):
            raise IndexValidationError(
                f"cannot merge {other_location}: its {key!r} setting differs from the first "
                f"part ({other.meta.get(key)!r} != {first.meta.get(key)!r}); "
                "build every shard with the same options"
            )


def merge_indexes(locations: Sequence[str], dest: str) -> str:
    """Join index parts into one index sorted by plant id and write it; return its version."""
    if not locations:
        raise ConfigError("merge needs at least one index part")

    parts = [load_index(location) for location in locations]
    first = parts[0]
    for part, location in zip(parts[1:], locations[1:]):
        check_compatible(first, part, location)

    rows: dict[str, tuple[np.ndarray, dict]] = {}
    for part, location in zip(parts, locations):
        for plant_id, vector, species in zip(part.plant_ids, part.embeddings, part.species):
            if plant_id in rows:
                raise IndexValidationError(
                    f"plant id {plant_id!r} appears in more than one part (again in {location}); "
                    "shards must not overlap"
                )
            rows[plant_id] = (vector, species)

    plant_ids = sorted(rows)
    embeddings = np.stack([rows[plant_id][0] for plant_id in plant_ids]).astype(np.float32)

    meta = {key: first.meta[key] for key in SETTINGS_THAT_MUST_MATCH if key in first.meta}
    meta["species"] = [rows[plant_id][1] for plant_id in plant_ids]
    meta["merged_from"] = [
        {"location": location, "version": part.version, "count": part.count}
        for part, location in zip(parts, locations)
    ]
    meta["skipped"] = [entry for part in parts for entry in part.meta.get("skipped", [])]
    for key in ("test_model", "sample"):
        if key in first.meta:
            meta[key] = first.meta[key]
    if any(part.meta.get("thumbnails") for part in parts):
        meta["thumbnails"] = thumbnail_meta()

    logger.info("merging %d parts into %d prototypes at %s", len(parts), len(plant_ids), dest)
    return write_index(dest, embeddings, plant_ids, meta, before_pointer=lambda folder: copy_thumbnails(parts, folder))
