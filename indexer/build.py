"""Prototype building: each reference photo and its augmentations become one embedding.

A species' prototype is the L2-normalised mean of the embeddings of its reference photo
and `count` augmented views. Each photo gets its own seed, derived from the run's seed and
its plant id, so a prototype does not depend on which other photos share the run. That
keeps sharded runs equal to a single run.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from indexer.scan import ReferencePhoto, Skipped
from shared.augment import AugmentationRecipe, reference_views
from shared.encoder import ImageEncoder, mean_embedding
from shared.errors import ImageError
from shared.imaging import decode_image
from shared.preprocess import shrink_for_views

logger = logging.getLogger(__name__)


@dataclass
class BuildResult:
    plant_ids: list[str] = field(default_factory=list)
    prototypes: list[np.ndarray] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def embeddings(self) -> np.ndarray:
        return np.stack(self.prototypes).astype(np.float32)


def photo_seed(seed: int, plant_id: str) -> int:
    """Derive a per-photo seed that is stable across runs, machines and shards."""
    digest = hashlib.sha256(f"{seed}:{plant_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


def build_prototype(
    image_bytes: bytes,
    plant_id: str,
    encoder: ImageEncoder,
    recipe: AugmentationRecipe,
    count: int,
    seed: int,
    batch_size: int,
) -> np.ndarray:
    """Decode one reference photo and return its prototype. Raises ImageError for a bad photo."""
    image = decode_image(image_bytes)
    image = shrink_for_views(image, encoder.preprocess)
    views = reference_views(image, recipe, count, photo_seed(seed, plant_id))
    return mean_embedding(encoder.encode(views, batch_size=batch_size))


def build_prototypes(
    photos: Sequence[ReferencePhoto],
    encoder: ImageEncoder,
    recipe: AugmentationRecipe,
    count: int,
    seed: int,
    batch_size: int = 32,
    progress: bool = True,
) -> BuildResult:
    """Build a prototype for every readable photo; skip and record the others."""
    result = BuildResult()
    logger.info(
        "building prototypes for %d photos (%d augmentations each, recipe %s, seed %d)",
        len(photos), count, recipe.name, seed,
    )

    bar = tqdm(photos, unit="img", desc="indexing", disable=not progress, dynamic_ncols=True)
    for photo in bar:
        try:
            data = Path(photo.path).read_bytes()
        except OSError as error:
            logger.warning("skipping %s: cannot read the file (%s)", photo.path, error)
            result.skipped.append(Skipped(Path(photo.path), f"cannot read the file: {error}"))
            continue

        try:
            prototype = build_prototype(
                data, photo.plant_id, encoder, recipe, count, seed, batch_size
            )
        except (ImageError, ValueError) as error:
            logger.warning("skipping %s: %s", photo.path, error)
            result.skipped.append(Skipped(Path(photo.path), str(error)))
            continue

        result.plant_ids.append(photo.plant_id)
        result.prototypes.append(prototype)

    bar.close()
    logger.info(
        "built %d prototypes, skipped %d photos", len(result.plant_ids), len(result.skipped)
    )
    return result
