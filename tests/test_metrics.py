"""Retrieval metrics of the evaluation: ranks, ties, top-K, MRR, centring and the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.metrics import accuracy, accuracy_per_species, centre, paired_bootstrap, score_queries


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


PROTOTYPES = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
PLANT_IDS = ["a", "b", "c"]


def test_ranks_of_labels() -> None:
    queries = unit([[1, 0.2, 0], [1, 0.5, 0.1], [0.1, 0.2, 1]])
    scored = score_queries(queries, PROTOTYPES, PLANT_IDS, ["a", "b", "b"])
    assert scored.ranks.tolist() == [1, 2, 2]


def test_unknown_label_has_rank_zero() -> None:
    scored = score_queries(unit([[1, 0, 0]]), PROTOTYPES, PLANT_IDS, [None])
    assert scored.ranks.tolist() == [0]


def test_tie_broken_by_plant_id() -> None:
    queries = unit([[1, 1, 0], [1, 1, 0]])
    scored = score_queries(queries, PROTOTYPES, PLANT_IDS, ["a", "b"])
    assert scored.ranks.tolist() == [1, 2]


def test_top1_and_margin() -> None:
    queries = unit([[0.8, 0.6, 0]])
    scored = score_queries(queries, PROTOTYPES, PLANT_IDS, ["a"])

    assert scored.top1_rows.tolist() == [0]
    assert scored.top1_scores[0] == pytest.approx(0.8)
    assert scored.margins[0] == pytest.approx(0.2)


def test_single_prototype_margin_zero() -> None:
    scored = score_queries(unit([[1, 0, 0]]), PROTOTYPES[:1], ["a"], ["a"])
    assert scored.margins.tolist() == [0.0]


def test_accuracy_values() -> None:
    result = accuracy(np.array([1, 2, 6, 0]))

    assert result.count == 3
    assert result.top1 == pytest.approx(1 / 3)
    assert result.top5 == pytest.approx(2 / 3)
    assert result.mrr == pytest.approx((1 + 0.5 + 1 / 6) / 3)


def test_accuracy_without_known() -> None:
    result = accuracy(np.array([0, 0]))
    assert result.count == 0
    assert np.isnan(result.top1)


def test_per_species_numeric_order() -> None:
    labels = ["10", "9", "10", "x", None]
    result = accuracy_per_species(np.array([1, 2, 3, 1, 0]), labels)

    assert list(result) == ["9", "10", "x"]
    assert result["10"].count == 2
    assert result["10"].mrr == pytest.approx((1 + 1 / 3) / 2)


def test_centre_removes_shared_direction() -> None:
    prototypes = unit([[1, 0.1, 5], [0.1, 1, 5]])
    queries = unit([[1, 0, 5]])
    centred_prototypes, centred_queries = centre(prototypes, queries)

    assert np.allclose(np.linalg.norm(centred_prototypes, axis=1), 1.0)
    assert abs(float(centred_prototypes.mean(axis=0) @ np.array([0, 0, 1]))) < 1e-6
    assert float((centred_queries @ centred_prototypes.T)[0, 0]) > 0.9


def test_bootstrap_brackets_mean() -> None:
    generator = np.random.default_rng(3)
    first = (generator.random(300) < 0.4).astype(float)
    second = (generator.random(300) < 0.6).astype(float)
    mean, low, high = paired_bootstrap(first, second)

    assert low < mean < high
    assert mean == pytest.approx(second.mean() - first.mean())


def test_bootstrap_identical_is_zero() -> None:
    outcomes = np.array([1.0, 0.0, 1.0, 1.0])
    assert paired_bootstrap(outcomes, outcomes) == (0.0, 0.0, 0.0)
