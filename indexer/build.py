"""Prototype building: each species' reference photos and their augmentations become one embedding.

A species' prototype is the L2-normalised mean of the embeddings of its reference photos
and `count` augmented views of each. The views of one photo are encoded as one batch, so
an encoder whose output depends on the batch (int8 activation scales) still gives each
photo the same embeddings in every run. Each photo gets its own seed, derived from the
run's seed, its plant id and, for photos after the first, its file name, so a prototype
does not depend on which other species share the run. That keeps sharded runs equal to a
single run.
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
from shared.preprocess import shrink_for_views, view_source_side

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


def view_seed_key(plant_id: str, position: int, path: Path) -> str:
    """Return the text a photo's seed derives from: the plant id for the first photo, else id and file name."""
    return plant_id if position == 0 else f"{plant_id}/{path.name}"


def encode_views(
    image_bytes: bytes,
    seed_key: str,
    encoder: ImageEncoder,
    recipe: AugmentationRecipe,
    count: int,
    seed: int,
    batch_size: int,
) -> np.ndarray:
    """Decode one reference photo and return the embeddings [count + 1, D] of it and its augmented views.

    All views go through the encoder in one batch, even when batch_size is smaller.
    Raises ImageError for a bad photo.
    """
    image = decode_image(image_bytes, target_size=view_source_side(encoder.preprocess))
    image = shrink_for_views(image, encoder.preprocess)
    views = reference_views(image, recipe, count, photo_seed(seed, seed_key))
    return encoder.encode(views, batch_size=max(batch_size, len(views)))


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
    return mean_embedding(encode_views(image_bytes, plant_id, encoder, recipe, count, seed, batch_size))


def _encode_photo(
    path: Path,
    seed_key: str,
    encoder: ImageEncoder,
    recipe: AugmentationRecipe,
    count: int,
    seed: int,
    batch_size: int,
    result: BuildResult,
) -> np.ndarray | None:
    """Return the view embeddings of one photo, or record it in result.skipped and return None."""
    try:
        data = path.read_bytes()
    except OSError as error:
        logger.warning("skipping %s: cannot read the file (%s)", path, error)
        result.skipped.append(Skipped(path, f"cannot read the file: {error}"))
        return None

    try:
        return encode_views(data, seed_key, encoder, recipe, count, seed, batch_size)
    except (ImageError, ValueError) as error:
        logger.warning("skipping %s: %s", path, error)
        result.skipped.append(Skipped(path, str(error)))
        return None


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
        view_embeddings = []
        for position, path in enumerate(getattr(photo, "paths", (photo.path,))):
            embeddings = _encode_photo(Path(path), view_seed_key(photo.plant_id, position, Path(path)),
                                       encoder, recipe, count, seed, batch_size, result)
            if embeddings is not None:
                view_embeddings.append(embeddings)
        if not view_embeddings:
            continue

        try:
            prototype = mean_embedding(np.concatenate(view_embeddings))
        except ValueError as error:
            logger.warning("skipping plant id %s: %s", photo.plant_id, error)
            result.skipped.append(Skipped(Path(photo.path), str(error)))
            continue

        result.plant_ids.append(photo.plant_id)
        result.prototypes.append(prototype)

    bar.close()
    logger.info(
        "built %d prototypes, skipped %d photos", len(result.plant_ids), len(result.skipped)
    )
    return result
