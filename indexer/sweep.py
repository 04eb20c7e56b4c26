"""Sweep of augmentation recipes and counts: which prototypes rank the queries best.

Each reference photo's views are encoded once per recipe, for the largest count, and the
smaller counts reuse the first views (reference_views makes the first k views the same
for any count). Count 0 is the original photo alone. It is the same for every recipe, and
a recipe that changes nothing ("none") gives it at any count, so it is one row. Every row
is compared with the baseline recipe at the largest count by a paired bootstrap over the
queries. A recipe counts as measurably better only when the 95 % interval of its top-1
gain lies above zero.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.embedding_cache import EmbeddingCache, ReferenceItem, species_prototypes
from indexer.metrics import Accuracy, accuracy, paired_bootstrap, score_queries
from shared.augment import AugmentationRecipe

logger = logging.getLogger(__name__)

ORIGINAL_ONLY = "original only"


@dataclass(frozen=True)
class SweepRow:
    """Accuracy of prototypes from one recipe and count, with 1 query view and with `views`."""

    recipe: str
    count: int
    one_view: Accuracy
    multi_view: Accuracy
    correct: np.ndarray
    gain: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class SweepResult:
    rows: list[SweepRow]
    baseline: str
    views: int
    seed: int
    best: SweepRow
    best_is_better: bool

    def row(self, recipe: str, count: int) -> SweepRow:
        for candidate in self.rows:
            if candidate.recipe == recipe and candidate.count == count:
                return candidate
        raise KeyError(f"no sweep row for recipe {recipe!r} with {count} augmentations")


def run_sweep(
    cache: EmbeddingCache,
    references: Sequence[ReferenceItem],
    plant_ids: Sequence[str],
    query_paths: Sequence[Path],
    query_labels: Sequence[str],
    recipes: Sequence[AugmentationRecipe],
    counts: Sequence[int],
    views: int,
    seed: int,
    baseline: str,
) -> SweepResult:
    """Score prototypes of every recipe and count on the labelled queries.

    `query_labels` must all be plant ids of `plant_ids`. Raises ValueError when the
    baseline recipe is not swept or no count is given.
    """
    names = [recipe.name for recipe in recipes]
    if baseline not in names:
        raise ValueError(f"the baseline recipe {baseline!r} is not among the swept recipes {names}")
    if not counts or max(counts) == 0:
        raise ValueError("the sweep needs at least one augmentation count above 0")

    one_view = cache.query_embeddings(query_paths, 1)
    multi_view = cache.query_embeddings(query_paths, views)
    reference_ids = [item.plant_id for item in references]
    largest = max(counts)

    def score(view_embeddings: list[np.ndarray], count: int, recipe: str) -> SweepRow:
        prototypes = species_prototypes(view_embeddings, reference_ids, plant_ids, count + 1)
        single = score_queries(one_view, prototypes, plant_ids, query_labels)
        multiple = score_queries(multi_view, prototypes, plant_ids, query_labels)
        return SweepRow(
            recipe=recipe, count=count,
            one_view=accuracy(single.ranks), multi_view=accuracy(multiple.ranks),
            correct=multiple.correct.astype(np.float64),
        )

    rows: list[SweepRow] = []
    for recipe in recipes:
        logger.info("sweep: recipe %s, up to %d augmentations", recipe.name, largest)
        view_embeddings = cache.reference_views(references, recipe, largest, seed)
        if 0 in counts and not rows:
            rows.append(score(view_embeddings, 0, ORIGINAL_ONLY))
        if recipe.is_identity:
            # Every view equals the original, so all counts give the "original only" prototype.
            continue
        for count in sorted(set(counts) - {0}):
            rows.append(score(view_embeddings, count, recipe.name))

    rows = _with_gains(rows, baseline, largest)
    candidates = [row for row in rows if row.count == largest] or rows
    best = max(candidates, key=lambda row: (row.multi_view.top1, row.multi_view.mrr))
    best_is_better = best.recipe != baseline and best.gain is not None and best.gain[1] > 0
    return SweepResult(rows=rows, baseline=baseline, views=views, seed=seed, best=best, best_is_better=best_is_better)


def _with_gains(rows: list[SweepRow], baseline: str, largest: int) -> list[SweepRow]:
    """Attach each row's top-1 gain over the baseline recipe with the largest count."""
    reference = next(row for row in rows if row.recipe == baseline and row.count == largest)
    updated = []
    for row in rows:
        gain = None if row is reference else paired_bootstrap(reference.correct, row.correct)
        updated.append(SweepRow(row.recipe, row.count, row.one_view, row.multi_view, row.correct, gain))
    return updated
