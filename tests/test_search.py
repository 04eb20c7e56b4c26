"""Tests for shared.search: exact top-K against brute force, tie-breaks and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import ConfigError
from shared.search import FaissSearch, NumpySearch, build_search

BACKENDS = ["numpy", "faiss"]


def unit_rows(count: int, dimension: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((count, dimension)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_search(backend: str, embeddings: np.ndarray, plant_ids: list[str]):
    if backend == "numpy":
        # Small blocks, so that the merge across blocks is exercised.
        return NumpySearch(embeddings, plant_ids, block_rows=97)
    return FaissSearch(embeddings, plant_ids)


def brute_force(embeddings: np.ndarray, plant_ids: list[str], queries: np.ndarray, k: int):
    """Return the expected (scores, rows): score descending, then plant id ascending."""
    scores = np.clip(queries @ embeddings.astype(np.float32).T, -1, 1)
    expected_rows = []
    for row_scores in scores:
        order = sorted(range(len(plant_ids)), key=lambda row: (-row_scores[row], plant_ids[row]))
        expected_rows.append(order[:k])
    rows = np.array(expected_rows, dtype=np.int64)
    return np.take_along_axis(scores, rows, axis=1), rows


def tied_prototypes(ids: list[str], dimension: int = 16) -> np.ndarray:
    """Identical rows whose dot product with themselves is exactly 1.0 in any summation order."""
    rows = np.zeros((len(ids), dimension), dtype=np.float16)
    rows[:, :4] = 0.5
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_brute_force(backend: str) -> None:
    embeddings = unit_rows(1000, 64, seed=1).astype(np.float16)
    ids = [f"p{i:04d}" for i in range(1000)]
    queries = unit_rows(5, 64, seed=2)

    scores, rows = make_search(backend, embeddings, ids).search(queries, 10)
    expected_scores, expected_rows = brute_force(embeddings, ids, queries, 10)

    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_types(backend: str) -> None:
    search = make_search(backend, unit_rows(50, 8).astype(np.float16), [str(i) for i in range(50)])
    scores, rows = search.search(unit_rows(3, 8, seed=5), 4)

    assert scores.dtype == np.float32
    assert rows.dtype == np.int64
    assert scores.shape == (3, 4)
    assert rows.shape == (3, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_descending(backend: str) -> None:
    search = make_search(backend, unit_rows(300, 32).astype(np.float16), [str(i) for i in range(300)])
    scores, _ = search.search(unit_rows(4, 32, seed=9), 20)
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_by_plant_id(backend: str) -> None:
    ids = ["b", "007", "a", "7", "10", "1"]
    embeddings = tied_prototypes(ids)
    query = embeddings[:1].astype(np.float32)

    scores, rows = make_search(backend, embeddings, ids).search(query, 6)

    assert [ids[row] for row in rows[0]] == sorted(ids)
    assert (scores == 1.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_beyond_k(backend: str) -> None:
    """Ties that extend far past k (and past faiss' extra margin) still resolve by plant id."""
    rng = np.random.default_rng(3)
    ids = [f"id{number:03d}" for number in rng.permutation(300)]
    embeddings = tied_prototypes(ids)
    embeddings[250:] = unit_rows(50, 16, seed=4).astype(np.float16)
    query = tied_prototypes(["q"]).astype(np.float32)

    _, rows = make_search(backend, embeddings, ids).search(query, 5)

    assert [ids[row] for row in rows[0]] == sorted(ids[:250])[:5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_above_count(backend: str) -> None:
    search = make_search(backend, unit_rows(7, 8).astype(np.float16), [str(i) for i in range(7)])
    scores, rows = search.search(unit_rows(2, 8, seed=1), 50)

    assert scores.shape == (2, 7)
    assert sorted(rows[0].tolist()) == list(range(7))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one(backend: str, k: int) -> None:
    search = make_search(backend, unit_rows(7, 8).astype(np.float16), [str(i) for i in range(7)])
    with pytest.raises(ValueError, match="k must be at least 1"):
        search.search(unit_rows(1, 8), k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_equals_single(backend: str) -> None:
    search = make_search(backend, unit_rows(500, 32).astype(np.float16), [str(i) for i in range(500)])
    queries = unit_rows(6, 32, seed=7)

    batch_scores, batch_rows = search.search(queries, 5)
    for position, query in enumerate(queries):
        scores, rows = search.search(query[np.newaxis], 5)
        np.testing.assert_array_equal(rows[0], batch_rows[position])
        np.testing.assert_allclose(scores[0], batch_scores[position], atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_vector_query(backend: str) -> None:
    search = make_search(backend, unit_rows(20, 8).astype(np.float16), [str(i) for i in range(20)])
    scores, _ = search.search(unit_rows(1, 8)[0], 3)
    assert scores.shape == (1, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_queries_normalised(backend: str) -> None:
    search = make_search(backend, unit_rows(20, 8).astype(np.float16), [str(i) for i in range(20)])
    query = unit_rows(1, 8, seed=3)

    unit_scores, unit_rows_found = search.search(query, 5)
    scaled_scores, scaled_rows_found = search.search(query * 40.0, 5)

    np.testing.assert_array_equal(scaled_rows_found, unit_rows_found)
    np.testing.assert_allclose(scaled_scores, unit_scores, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_query_dimension(backend: str) -> None:
    search = make_search(backend, unit_rows(20, 8).astype(np.float16), [str(i) for i in range(20)])
    with pytest.raises(ValueError, match="expected \\[Q, 8\\]"):
        search.search(unit_rows(1, 9), 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_query(backend: str) -> None:
    search = make_search(backend, unit_rows(20, 8).astype(np.float16), [str(i) for i in range(20)])
    with pytest.raises(ValueError, match="all zeros"):
        search.search(np.zeros((1, 8), np.float32), 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_query(backend: str) -> None:
    search = make_search(backend, unit_rows(20, 8).astype(np.float16), [str(i) for i in range(20)])
    query = unit_rows(1, 8)
    query[0, 2] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        search.search(query, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inf_prototype_rejected(backend: str) -> None:
    embeddings = unit_rows(5, 8).astype(np.float16)
    embeddings[3, 1] = np.inf
    with pytest.raises(ValueError, match="row 3 contains non-finite"):
        make_search(backend, embeddings, [str(i) for i in range(5)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_prototype_scores_zero(backend: str) -> None:
    embeddings = unit_rows(5, 8).astype(np.float16)
    embeddings[2] = 0
    scores, rows = make_search(backend, embeddings, [str(i) for i in range(5)]).search(unit_rows(1, 8, seed=4), 5)

    assert np.isfinite(scores).all()
    assert scores[0, rows[0].tolist().index(2)] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_overflow_case_finite(backend: str, cases_dir: Path) -> None:
    """Scaled, all-zero and overflowing float16 rows still give finite scores in [-1, 1]."""
    with np.load(cases_dir / "index" / "index_fp16_unnormalized.npz", allow_pickle=False) as archive:
        embeddings = archive["embeddings"]
    queries = np.concatenate([unit_rows(4, embeddings.shape[1], seed=8), embeddings[[0, 2]].astype(np.float32)])

    scores, _ = make_search(backend, embeddings, ["1", "2", "12"]).search(queries, 3)

    assert np.isfinite(scores).all()
    assert scores.max() <= 1.0
    assert scores.min() >= -1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_id_count_mismatch(backend: str) -> None:
    with pytest.raises(ValueError, match="4 plant ids for 5 prototypes"):
        make_search(backend, unit_rows(5, 8).astype(np.float16), ["1", "2", "3", "4"])


def test_backends_agree() -> None:
    embeddings = unit_rows(2000, 48, seed=11).astype(np.float16)
    ids = [str(i) for i in range(2000)]
    queries = unit_rows(3, 48, seed=12)

    numpy_scores, numpy_rows = NumpySearch(embeddings, ids).search(queries, 8)
    faiss_scores, faiss_rows = FaissSearch(embeddings, ids).search(queries, 8)

    np.testing.assert_array_equal(faiss_rows, numpy_rows)
    np.testing.assert_allclose(faiss_scores, numpy_scores, atol=1e-5)


def test_numpy_keeps_float16() -> None:
    embeddings = unit_rows(10, 8).astype(np.float16)
    search = NumpySearch(embeddings, [str(i) for i in range(10)])
    assert search.nbytes == embeddings.nbytes + 10 * 8


def test_build_auto_small_numpy() -> None:
    search = build_search(unit_rows(10, 8).astype(np.float16), [str(i) for i in range(10)])
    assert search.name == "numpy"


def test_build_auto_large_faiss() -> None:
    search = build_search(unit_rows(10, 8).astype(np.float16), [str(i) for i in range(10)], faiss_threshold=10)
    assert search.name == "faiss"


def test_build_named_backend() -> None:
    search = build_search(unit_rows(10, 8).astype(np.float16), [str(i) for i in range(10)], backend="faiss")
    assert search.name == "faiss"


def test_build_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="unknown search backend 'annoy'"):
        build_search(unit_rows(10, 8).astype(np.float16), [str(i) for i in range(10)], backend="annoy")
