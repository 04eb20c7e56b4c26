"""Exact top-K cosine search over species prototypes.

Every backend returns the same ranking: score descending, then plant id ascending among
equal scores, so a result never depends on row order or on the backend. Queries are
L2-normalised here, scores are computed in float32 and clipped to [-1, 1].
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from shared.errors import ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "numpy", "faiss")

# Prototype rows upcast to float32 per step: 16384 x 512 x 4 bytes = 32 MiB of scratch.
# On a loaded 2-core AMD EPYC VM, blocks of 4096 to 65536 rows gave median latencies
# within about 15% of each other for 100k x 512 prototypes.
DEFAULT_BLOCK_ROWS = 16384

# From this many prototypes on, "auto" picks faiss, whose SIMD kernels beat the numpy
# path on large indexes at the price of a float32 copy (see FaissSearch).
DEFAULT_FAISS_THRESHOLD = 200_000

# Extra neighbours fetched from faiss, so that ties at the k-th score can be re-sorted
# by plant id. The search fetches more when the ties extend past them.
FAISS_TIE_MARGIN = 16


class SearchBackend(Protocol):
    """Exact inner-product search over L2-normalised prototypes."""

    name: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores float32 [Q, k'], row indices int64 [Q, k']) with k' = min(k, N)."""
        ...


class NumpySearch:
    """Search that keeps the float16 matrix as given and computes scores in float32 blocks.

    Memory beyond the caller's matrix is one int64 per row for the tie-break plus one
    float32 block during a search.
    """

    name = "numpy"

    def __init__(
        self,
        embeddings: np.ndarray,
        plant_ids: Sequence[str],
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be at least 1, got {block_rows}")

        self._embeddings = _as_prototype_matrix(embeddings, np.float16)
        self._id_ranks = _plant_id_ranks(plant_ids, self._embeddings.shape[0])
        self._block_rows = block_rows
        _check_finite(self._embeddings, block_rows)

    @property
    def count(self) -> int:
        return int(self._embeddings.shape[0])

    @property
    def dimension(self) -> int:
        return int(self._embeddings.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this backend holds, the prototype matrix included."""
        return int(self._embeddings.nbytes + self._id_ranks.nbytes)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        query_matrix = _prepare_queries(queries, self.dimension)
        k_found = _check_k(k, self.count)

        best_scores = [np.empty(0, np.float32) for _ in range(len(query_matrix))]
        best_rows = [np.empty(0, np.int64) for _ in range(len(query_matrix))]

        # One float32 buffer per call is reused for every block, which avoids allocating
        # and page-faulting a fresh block at each step.
        buffer = np.empty((min(self._block_rows, self.count), self.dimension), dtype=np.float32)
        for start in range(0, self.count, self._block_rows):
            block = buffer[: min(self._block_rows, self.count - start)]
            np.copyto(block, self._embeddings[start : start + len(block)])
            block_scores = query_matrix @ block.T
            np.clip(block_scores, -1.0, 1.0, out=block_scores)
            block_rows = np.arange(start, start + len(block), dtype=np.int64)

            for query in range(len(query_matrix)):
                scores = np.concatenate([best_scores[query], block_scores[query]])
                rows = np.concatenate([best_rows[query], block_rows])
                best_scores[query], best_rows[query] = _top_k(scores, rows, self._id_ranks, k_found)

        return np.stack(best_scores), np.stack(best_rows)


class FaissSearch:
    """Search with a faiss IndexFlatIP (exact inner product) over a float32 copy.

    The copy costs 4 * N * D bytes, twice the float16 index: 2 GiB for 1M x 512.
    """

    name = "faiss"

    def __init__(self, embeddings: np.ndarray, plant_ids: Sequence[str]) -> None:
        import faiss

        matrix = _as_prototype_matrix(embeddings, None)
        count, dimension = matrix.shape
        self._id_ranks = _plant_id_ranks(plant_ids, count)

        # Adding in blocks keeps the float32 peak at one block besides faiss' own copy,
        # and checks each converted block for inf and NaN on the way.
        self._index = faiss.IndexFlatIP(dimension)
        for start in range(0, count, DEFAULT_BLOCK_ROWS):
            block = np.ascontiguousarray(matrix[start : start + DEFAULT_BLOCK_ROWS], dtype=np.float32)
            _check_finite(block, len(block), first_row=start)
            self._index.add(block)

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    @property
    def nbytes(self) -> int:
        """Bytes of the float32 copy inside faiss plus the tie-break ranks."""
        return int(self.count * self.dimension * 4 + self._id_ranks.nbytes)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        query_matrix = _prepare_queries(queries, self.dimension)
        k_found = _check_k(k, self.count)

        # faiss breaks ties at the k-th score arbitrarily. Fetch more neighbours until the
        # last fetched score is below the k-th, so that every tied row is a candidate.
        fetch = min(self.count, k_found + FAISS_TIE_MARGIN)
        while True:
            scores, rows = self._index.search(query_matrix, fetch)
            np.clip(scores, -1.0, 1.0, out=scores)
            ties_cut_off = scores[:, fetch - 1] >= scores[:, k_found - 1]
            if fetch == self.count or not ties_cut_off.any():
                break
            fetch = min(self.count, fetch * 2)

        top_scores = np.empty((len(query_matrix), k_found), np.float32)
        top_rows = np.empty((len(query_matrix), k_found), np.int64)
        for query in range(len(query_matrix)):
            top_scores[query], top_rows[query] = _top_k(
                scores[query], rows[query].astype(np.int64), self._id_ranks, k_found
            )
        return top_scores, top_rows


def build_search(
    embeddings: np.ndarray,
    plant_ids: Sequence[str],
    backend: str = "auto",
    faiss_threshold: int = DEFAULT_FAISS_THRESHOLD,
) -> SearchBackend:
    """Build the search backend by name; "auto" picks faiss from ``faiss_threshold`` rows on.

    "auto" falls back to numpy when faiss is not installed. Raises ConfigError for an
    unknown backend name or for "faiss" without faiss installed.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown search backend {backend!r}; use one of {', '.join(BACKENDS)}")

    count = int(np.shape(embeddings)[0])
    if backend == "auto":
        backend = "faiss" if count >= faiss_threshold and _faiss_installed() else "numpy"
    elif backend == "faiss" and not _faiss_installed():
        raise ConfigError("search backend 'faiss' needs the faiss-cpu package; install it or use 'numpy'")

    logger.info("building %s search over %d prototypes", backend, count)
    if backend == "faiss":
        return FaissSearch(embeddings, plant_ids)
    return NumpySearch(embeddings, plant_ids)


def _faiss_installed() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _as_prototype_matrix(embeddings: np.ndarray, dtype: type | None) -> np.ndarray:
    matrix = np.asarray(embeddings)
    if matrix.dtype.kind != "f":
        raise ValueError(f"prototypes have dtype {matrix.dtype}, expected a float type")
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"prototypes have shape {matrix.shape}, expected a non-empty [count, dimension]")
    return matrix if dtype is None else np.asarray(matrix, dtype=dtype)


def _check_finite(matrix: np.ndarray, block_rows: int, first_row: int = 0) -> None:
    """Raise ValueError naming the first row (numbered from ``first_row``) with inf or NaN."""
    for start in range(0, matrix.shape[0], block_rows):
        finite = np.isfinite(matrix[start : start + block_rows]).all(axis=1)
        if not finite.all():
            row = first_row + start + int(np.argmin(finite))
            raise ValueError(f"prototype row {row} contains non-finite values (inf or NaN)")


def _plant_id_ranks(plant_ids: Sequence[str], count: int) -> np.ndarray:
    """Return each row's position in plant id order, the tie-break key."""
    ids = list(plant_ids)
    if len(ids) != count:
        raise ValueError(f"{len(ids)} plant ids for {count} prototypes")

    # Code point order, the same as Python's str comparison.
    order = np.argsort(np.array(ids, dtype=str), kind="stable")
    ranks = np.empty(count, dtype=np.int64)
    ranks[order] = np.arange(count, dtype=np.int64)
    return ranks


def _prepare_queries(queries: np.ndarray, dimension: int) -> np.ndarray:
    """Return the queries as a float32 [Q, D] matrix of unit rows. A 1-D query becomes Q=1."""
    matrix = np.asarray(queries, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[np.newaxis, :]
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] != dimension:
        raise ValueError(f"queries have shape {np.shape(queries)}, expected [Q, {dimension}]")
    if not np.isfinite(matrix).all():
        raise ValueError("queries contain non-finite values (inf or NaN)")

    # float64 norms, so that float32 values near the top of the range cannot overflow.
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("a query embedding is all zeros and has no direction")
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


def _check_k(k: int, count: int) -> int:
    """Return min(k, count); raise ValueError for k < 1."""
    if isinstance(k, bool):
        raise ValueError(f"k must be an integer of at least 1, got {k!r}")
    k = operator.index(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return min(k, count)


def _top_k(
    scores: np.ndarray,
    rows: np.ndarray,
    id_ranks: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the k best (score, row) pairs, by score descending then plant id ascending."""
    if len(scores) > k:
        # Keep every row tied with the k-th score, so that the plant id tie-break covers all of them.
        kth_score = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth_score
        scores = scores[keep]
        rows = rows[keep]

    order = np.lexsort((id_ranks[rows], -scores))[:k]
    return scores[order].astype(np.float32), rows[order]
