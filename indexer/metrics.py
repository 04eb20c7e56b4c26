"""Retrieval metrics of the evaluation: ranks, top-1, top-5, mean reciprocal rank.

Ties between equal scores are broken by plant id, as the search backends do, so a metric
never counts a tie as a win for the labelled species only because of row order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOP_K = 5


@dataclass(frozen=True)
class Scored:
    """The result of scoring query embeddings against prototypes.

    `ranks` is the 1-based rank of the labelled species for each query, and 0 for a
    query whose species is not among the prototypes. `margins` is top-1 minus top-2 (0
    with a single prototype).
    """

    ranks: np.ndarray
    top1_rows: np.ndarray
    top1_scores: np.ndarray
    margins: np.ndarray

    @property
    def known(self) -> np.ndarray:
        return self.ranks > 0

    @property
    def correct(self) -> np.ndarray:
        """True where the top-1 species is the labelled one."""
        return self.ranks == 1

    @property
    def wrong(self) -> np.ndarray:
        """True where the top-1 answer is wrong: another species, or any species for an unknown one."""
        return self.ranks != 1


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float
    mrr: float
    count: int

    def to_dict(self) -> dict[str, float | int]:
        return {"top1": self.top1, "top5": self.top5, "mrr": self.mrr, "count": self.count}


def score_queries(
    queries: np.ndarray,
    prototypes: np.ndarray,
    plant_ids: Sequence[str],
    labels: Sequence[str | None],
) -> Scored:
    """Score every query against every prototype by cosine similarity (rows are unit vectors)."""
    queries = np.asarray(queries, dtype=np.float32)
    prototypes = np.asarray(prototypes, dtype=np.float32)
    if queries.shape[0] != len(labels):
        raise ValueError(f"{queries.shape[0]} query embeddings for {len(labels)} labels")
    scores = queries @ prototypes.T

    # Position of each prototype in plant id order, for the tie break.
    id_order = np.empty(len(plant_ids), dtype=np.int64)
    id_order[np.argsort(np.array(plant_ids, dtype=object), kind="stable")] = np.arange(len(plant_ids))
    row_of = {plant_id: row for row, plant_id in enumerate(plant_ids)}

    ranks = np.zeros(len(labels), dtype=np.int64)
    for position, label in enumerate(labels):
        row = row_of.get(label) if label is not None else None
        if row is None:
            continue
        own = scores[position, row]
        ahead = (scores[position] > own) | ((scores[position] == own) & (id_order < id_order[row]))
        ranks[position] = 1 + int(ahead.sum())

    # Best first; equal scores in plant id order.
    order = np.lexsort((np.broadcast_to(id_order, scores.shape), -scores), axis=1)
    top1_rows = order[:, 0]
    top1_scores = scores[np.arange(scores.shape[0]), top1_rows]
    if scores.shape[1] > 1:
        margins = top1_scores - scores[np.arange(scores.shape[0]), order[:, 1]]
    else:
        margins = np.zeros_like(top1_scores)
    return Scored(ranks=ranks, top1_rows=top1_rows, top1_scores=top1_scores, margins=margins)


def accuracy(ranks: np.ndarray) -> Accuracy:
    """Top-1, top-5 and mean reciprocal rank over the queries with a rank (known species).

    Returns NaN metrics and count 0 when no query has a rank.
    """
    known = np.asarray(ranks)[np.asarray(ranks) > 0]
    if known.size == 0:
        return Accuracy(float("nan"), float("nan"), float("nan"), 0)
    return Accuracy(
        top1=float(np.mean(known == 1)),
        top5=float(np.mean(known <= TOP_K)),
        mrr=float(np.mean(1.0 / known)),
        count=int(known.size),
    )


def accuracy_per_species(ranks: np.ndarray, labels: Sequence[str | None]) -> dict[str, Accuracy]:
    """Accuracy of each labelled species' queries, keyed by plant id (numeric ids in numeric order)."""
    positions: dict[str, list[int]] = {}
    for position, label in enumerate(labels):
        if label is not None and ranks[position] > 0:
            positions.setdefault(label, []).append(position)
    return {plant_id: accuracy(ranks[positions[plant_id]]) for plant_id in sorted(positions, key=_natural_key)}


def _natural_key(plant_id: str) -> tuple[int, int, str]:
    return (0, int(plant_id), plant_id) if plant_id.isascii() and plant_id.isdigit() else (1, 0, plant_id)


def paired_bootstrap(
    first: np.ndarray, second: np.ndarray, samples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Return the mean of second - first and its 95 % percentile bootstrap interval.

    `first` and `second` are per-query outcomes (such as 1 for a correct top-1) on the
    same queries, so the queries are resampled together.
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.size == 0:
        raise ValueError("paired outcomes must be non-empty and of the same length")

    differences = second - first
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, differences.size, size=(samples, differences.size))
    means = differences[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(differences.mean()), float(low), float(high)


def centre(prototypes: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the mean prototype from prototypes and queries, then L2-normalise both.

    This is SimpleShot's centring (Wang et al., 2019), which the few-shot evaluation of
    BioCLIP 2 (simpleshot.py from biobench) applies to training and test features. It
    removes the direction that all species share, so cosine scores compare what differs.
    Here the mean is that of the prototypes, one per species.
    """
    prototypes = np.asarray(prototypes, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    mean = prototypes.mean(axis=0, keepdims=True)
    return _normalise(prototypes - mean), _normalise(queries - mean)


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, np.float32(1e-12))
