"""The query path: one photo in, the top-K species out.

The photo and its test-time augmentations are encoded as one batch, the view embeddings
are averaged and L2-normalised, and that query embedding is scored against every prototype
with one matrix product. Up to MAX_PHOTOS photos of the same plant combine into one query:
each photo's query embedding is computed as above, and their mean, L2-normalised again, is
scored. The command line, the HTTP API and the S3 event handler all call `Identifier`, so
they rank the same photos the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from shared.augment import query_views
from shared.confidence import RejectionRule, rule_from_meta
from shared.encoder import ImageEncoder, mean_embedding
from shared.errors import ConfigError, IndexValidationError
from shared.index_store import Index
from shared.preprocess import resized_size, shrink_for_views
from shared.search import SearchBackend

logger = logging.getLogger(__name__)

DEFAULT_VIEWS = 8
DEFAULT_TOP_K = 5
MAX_TOP_K = 50

# Most photos of one plant that a single query combines.
MAX_PHOTOS = 5


@dataclass(frozen=True)
class Match:
    rank: int
    plant_id: str
    score: float
    scientific_name: str | None
    common_name: str | None


@dataclass(frozen=True)
class Identification:
    matches: list[Match]
    model_id: str
    index_version: str
    views: int
    elapsed_ms: float
    photos: int = 1
    # False when the index stores a rejection rule and the top-1 match fails it: the
    # matches are then only the closest species, not an identification.
    confident: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class Identifier:
    """Rank the species of an index for query photos with one encoder."""

    def __init__(
        self,
        encoder: ImageEncoder,
        index: Index,
        search: SearchBackend,
        views: int = DEFAULT_VIEWS,
    ) -> None:
        if encoder.dimension != index.dimension:
            raise ValueError(
                f"encoder {encoder.model_id!r} gives {encoder.dimension}-dim embeddings "
                f"but the index holds {index.dimension}-dim prototypes; "
                "use the model the index was built with"
            )
        self.encoder = encoder
        self.index = index
        self.search = search
        self.views = views
        try:
            self.rejection: RejectionRule | None = rule_from_meta(index.meta)
        except ConfigError as error:
            raise IndexValidationError(
                f"index version {index.version} stores an invalid rejection rule: {error.message}"
            ) from error

    def view_images(self, image: Image.Image, views: int | None = None) -> list[Image.Image]:
        """Return the photo and its test-time augmentations, as the encoder receives them."""
        count = self.views if views is None else views
        preprocess = self.encoder.preprocess
        image = shrink_for_views(image, preprocess)
        # Views made at the model's resize target leave the encoder's preprocessing only a crop.
        size = resized_size(image.width, image.height, preprocess.shortest_edge)
        return query_views(image, count, size=size)

    def embed(self, image: Image.Image, views: int | None = None) -> np.ndarray:
        """Encode the photo and its test-time augmentations into one query embedding."""
        view_images = self.view_images(image, views)
        # One batch for all views: batching them is faster than encoding them one by one.
        return mean_embedding(self.encoder.encode(view_images, batch_size=len(view_images)))

    def embed_many(self, images: Sequence[Image.Image], views: int | None = None) -> np.ndarray:
        """Return the query embedding of photos of one plant: the L2-normalised mean of their query embeddings.

        A single photo gives exactly its own query embedding.
        """
        embeddings = [self.embed(image, views) for image in images]
        if len(embeddings) == 1:
            return embeddings[0]
        return mean_embedding(np.stack(embeddings))

    def identify(
        self, image: Image.Image, top_k: int = DEFAULT_TOP_K, views: int | None = None
    ) -> Identification:
        """Rank the species of the index for one photo."""
        return self.identify_many([image], top_k, views)

    def identify_many(
        self, images: Sequence[Image.Image], top_k: int = DEFAULT_TOP_K, views: int | None = None
    ) -> Identification:
        """Rank the species for 1 to MAX_PHOTOS photos of the same plant, combined into one query.

        Raises ValueError for a top_k outside 1..MAX_TOP_K or a photo count outside 1..MAX_PHOTOS.
        """
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        if not 1 <= len(images) <= MAX_PHOTOS:
            raise ValueError(f"expected 1 to {MAX_PHOTOS} photos of one plant, got {len(images)}")

        started = time.perf_counter()
        query = self.embed_many(images, views)
        # The rejection rule needs the second score even when only the top-1 is returned.
        searched = top_k if self.rejection is None else max(top_k, 2)
        scores, indices = self.search.search(query[None, :], searched)
        confident = self.rejection is None or self.rejection.is_confident(scores[0])

        matches = []
        for rank, (score, row) in enumerate(zip(scores[0][:top_k], indices[0][:top_k]), start=1):
            species = self.index.species[int(row)]
            matches.append(
                Match(
                    rank=rank,
                    plant_id=self.index.plant_ids[int(row)],
                    score=round(float(score), 6),
                    scientific_name=species.get("scientific_name") or None,
                    common_name=species.get("common_name") or None,
                )
            )

        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return Identification(
            matches=matches,
            model_id=self.encoder.model_id,
            index_version=self.index.version,
            views=self.views if views is None else views,
            elapsed_ms=round(elapsed_ms, 2),
            photos=len(images),
            confident=confident,
        )
