"""The query path: one photo in, the top-K species out.

The photo and its test-time augmentations are encoded, the view embeddings are averaged
and L2-normalised, and that query embedding is scored against every prototype with one
matrix product. The command line, the HTTP API and the S3 event handler all call
`Identifier.identify`, so they rank the same photo the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from shared.augment import query_views
from shared.encoder import ImageEncoder, mean_embedding
from shared.index_store import Index
from shared.preprocess import shrink_for_views
from shared.search import SearchBackend

logger = logging.getLogger(__name__)

DEFAULT_VIEWS = 8
DEFAULT_TOP_K = 5
MAX_TOP_K = 50


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

    def embed(self, image: Image.Image, views: int | None = None) -> np.ndarray:
        """Encode the photo and its test-time augmentations into one query embedding."""
        count = self.views if views is None else views
        image = shrink_for_views(image, self.encoder.preprocess)
        view_images = query_views(image, count)
        return mean_embedding(self.encoder.encode(view_images))

    def identify(
        self, image: Image.Image, top_k: int = DEFAULT_TOP_K, views: int | None = None
    ) -> Identification:
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")

        started = time.perf_counter()
        query = self.embed(image, views)
        scores, indices = self.search.search(query[None, :], top_k)

        matches = []
        for rank, (score, row) in enumerate(zip(scores[0], indices[0]), start=1):
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
        )
