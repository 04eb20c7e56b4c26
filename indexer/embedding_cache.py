"""Embeddings of reference and query photos, each view set encoded once per evaluation run.

Reference photos go through indexer.build.encode_views, the indexer's own code, so
rebuilt prototypes equal the index's when the photos, recipe, count and seed are the
same. Query photos go through the steps of handler.query.Identifier.embed: decode, shrink,
query_views, one encoder batch per photo, mean, L2 normalisation.

The sweep compares 0, 5 and 20 augmentations. The first k views of a photo do not depend
on how many are made (shared.augment.reference_views), so the cache keeps the longest set
encoded so far and slices shorter ones from it. NOTE: with an encoder whose output
depends on the batch (int8 activation scales), a sliced set can differ slightly from a
set encoded at that count.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer.build import encode_views, view_seed_key
from indexer.scan import ReferencePhoto
from shared.augment import AugmentationRecipe, query_views
from shared.encoder import ImageEncoder, l2_normalize, mean_embedding
from shared.errors import ConfigError, ImageError
from shared.imaging import decode_image
from shared.preprocess import shrink_for_views, view_source_side

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceItem:
    """One reference photo of a species, with the text its augmentation seed derives from."""

    plant_id: str
    path: Path
    seed_key: str


def reference_items(photos: Sequence[ReferencePhoto]) -> list[ReferenceItem]:
    """Flatten species with one or more photos into one item per photo, seeded as the indexer does."""
    items = []
    for photo in photos:
        for position, path in enumerate(photo.paths):
            items.append(ReferenceItem(photo.plant_id, Path(path), view_seed_key(photo.plant_id, position, Path(path))))
    return items


class EmbeddingCache:
    """Query embeddings and per-view reference embeddings for one encoder."""

    def __init__(self, encoder: ImageEncoder, batch_size: int = 32, progress: bool = False) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.progress = progress
        self.encoded_images = 0
        self._queries: dict[tuple[str, int], np.ndarray] = {}
        self._references: dict[tuple[str, str, str, int], np.ndarray] = {}

    def query_embeddings(self, paths: Sequence[Path], views: int) -> np.ndarray:
        """Return the query embedding of each photo with `views` views, as the query path makes it: [P, D]."""
        missing = [Path(path) for path in paths if (str(path), views) not in self._queries]
        label = f"queries ({views} {'view' if views == 1 else 'views'})"
        for path in tqdm(missing, desc=label, unit="photo", disable=not self.progress or not missing, dynamic_ncols=True):
            image = _decode(path, view_source_side(self.encoder.preprocess))
            images = query_views(shrink_for_views(image, self.encoder.preprocess), views)
            self._queries[(str(path), views)] = mean_embedding(self.encoder.encode(images, batch_size=max(views, 1)))
            self.encoded_images += len(images)
        if missing:
            logger.info("encoded %s of %d photos (%d images so far)", label, len(missing), self.encoded_images)
        return np.stack([self._queries[(str(path), views)] for path in paths])

    def reference_views(
        self, items: Sequence[ReferenceItem], recipe: AugmentationRecipe, count: int, seed: int
    ) -> list[np.ndarray]:
        """Return the [1 + count, D] view embeddings of each reference photo, the original first.

        For a recipe that changes nothing, only the original is encoded and repeated.
        """
        encoded_count = 0 if recipe.is_identity else count
        recipe_key = "identity" if recipe.is_identity else json.dumps(recipe.to_dict(), sort_keys=True)
        keys = [(str(item.path), item.seed_key, recipe_key, seed) for item in items]

        missing = [
            (key, item) for key, item in zip(keys, items)
            if key not in self._references or self._references[key].shape[0] < encoded_count + 1
        ]
        label = f"reference views ({recipe.name}, {count} augmentations)"
        for key, item in tqdm(missing, desc=label, unit="photo", disable=not self.progress or not missing, dynamic_ncols=True):
            self._references[key] = self._encode_reference(item, recipe, encoded_count, seed)
            self.encoded_images += encoded_count + 1
        if missing:
            logger.info("encoded %s of %d photos (%d images so far)", label, len(missing), self.encoded_images)

        views = [self._references[key][: encoded_count + 1] for key in keys]
        if recipe.is_identity:
            views = [np.repeat(embedding, count + 1, axis=0) for embedding in views]
        return views

    def _encode_reference(self, item: ReferenceItem, recipe: AugmentationRecipe, count: int, seed: int) -> np.ndarray:
        try:
            data = item.path.read_bytes()
        except OSError as error:
            raise ConfigError(f"could not read reference photo {item.path}: {error}") from error
        try:
            return encode_views(data, item.seed_key, self.encoder, recipe, count, seed, self.batch_size)
        except ImageError as error:
            raise ConfigError(f"could not use reference photo {item.path}: {error.message}; fix or remove it") from error


def _decode(path: Path, target_size: int):
    """Decode one photo as the query path does, raising ConfigError that names the file."""
    try:
        return decode_image(path.read_bytes(), target_size=target_size)
    except OSError as error:
        raise ConfigError(f"could not read {path}: {error}") from error
    except ImageError as error:
        raise ConfigError(f"could not use {path}: {error.message}; fix or remove the photo") from error


def species_prototypes(
    view_embeddings: Sequence[np.ndarray],
    photo_plant_ids: Sequence[str],
    plant_ids: Sequence[str],
    count: int,
) -> np.ndarray:
    """Build one prototype per plant id in `plant_ids` order: [N, D].

    A prototype is the L2-normalised mean of the first `count` view embeddings of every
    reference photo of that species, as the indexer makes it. Raises ValueError for a
    species without a photo.
    """
    rows: dict[str, list[np.ndarray]] = {}
    for views, plant_id in zip(view_embeddings, photo_plant_ids):
        rows.setdefault(plant_id, []).append(np.asarray(views[:count], dtype=np.float32))

    missing = [plant_id for plant_id in plant_ids if plant_id not in rows]
    if missing:
        raise ValueError(f"no reference photo for {len(missing)} species, such as {missing[0]!r}")
    means = np.stack([np.concatenate(rows[plant_id]).mean(axis=0) for plant_id in plant_ids])
    return l2_normalize(means)
