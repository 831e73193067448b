"""Retrieval metrics from exact ranks (``engine.ranks``): Recall@K, median/mean rank, AP, P@K.

Ranks are 1-based positions in the gallery ordered by score, ties by lower gallery index (see
``engine.ranks``). Queries without any relevant item are excluded and counted (``PerQueryScores``),
never scored 0.

Two conventions for the @K figures and AP (design section 7):

- ``"standard"`` (trec_eval): AP = (1/R) sum over relevant items of precision at their rank; AP@K keeps
  the relevant items ranked <= K and still divides by R (trec_eval ``map_cut_K``); P@K = hits in the
  top K / K.
- ``"zs-sbir"`` (the zero-shot sketch-based image retrieval code, e.g. Doodle2Search/SAKE's
  ``eval_AP_inner`` + ``VOCap``): precision is interpolated (at each hit, the best precision at that or
  any later hit) and AP@K, P@K divide by min(K, R); with no cutoff AP divides by R.

R is the number of relevant gallery items of the query.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from embedeval.engine.ranks import NO_POSITIVE
from embedeval.metrics.per_query import PerQueryScores

Convention = Literal["standard", "zs-sbir"]
_PAD_ELEMENTS = 1 << 22  # queries x max ranks padded at once


def recall_at_k(best_ranks: np.ndarray, k: int) -> PerQueryScores:
    """Per query 1.0 if its best true match ranks within the top k, else 0.0 (R@K = the mean).

    ``best_ranks`` from ``engine.ranks.best_positive_rank``; queries with ``NO_POSITIVE`` (0) are
    excluded and counted.
    """
    ranks = _check_best_ranks(best_ranks)
    if int(k) < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    missing = ranks == NO_POSITIVE
    values = np.where(missing, np.nan, (ranks <= int(k)).astype(np.float64))
    return PerQueryScores(values=values, n_excluded=int(missing.sum()))


def median_rank(best_ranks: np.ndarray) -> float:
    """Median 1-based rank of the best true match over queries that have one (NaN if none)."""
    ranks = _check_best_ranks(best_ranks)
    ranks = ranks[ranks != NO_POSITIVE]
    return float(np.median(ranks)) if ranks.size else float("nan")


def mean_rank(best_ranks: np.ndarray) -> float:
    """Mean 1-based rank of the best true match over queries that have one (NaN if none)."""
    ranks = _check_best_ranks(best_ranks)
    ranks = ranks[ranks != NO_POSITIVE]
    return float(np.mean(ranks)) if ranks.size else float("nan")


def rsum(image_to_text_best_ranks: np.ndarray, text_to_image_best_ranks: np.ndarray) -> float:
    """R@1 + R@5 + R@10 of both directions, in percent (the image<->text leaderboard sum)."""
    return float(sum(100.0 * recall_at_k(r, k).mean()
                     for r in (image_to_text_best_ranks, text_to_image_best_ranks) for k in (1, 5, 10)))


def average_precision_from_ranks(ranks_indptr: np.ndarray, ranks: np.ndarray, n_relevant: np.ndarray,
                                 cutoff: int | None = None, convention: Convention = "standard"
                                 ) -> PerQueryScores:
    """Per-query average precision from the sorted ranks of each query's relevant items.

    ``ranks[ranks_indptr[q]:ranks_indptr[q + 1]]``: ascending, distinct 1-based ranks of query q's
    relevant items (``engine.ranks.positive_ranks``); all R of them when ``cutoff`` is None, at least
    those <= cutoff otherwise. ``n_relevant`` (nq,) gives R. ``cutoff=None`` is mAP@all, ``cutoff=200``
    mAP@200. Queries with R = 0 are NaN and counted in ``n_excluded``.
    """
    indptr, flat, n_rel = _check_rank_lists(ranks_indptr, ranks, n_relevant)
    k = _check_cutoff(cutoff)
    _check_convention(convention)
    lengths = np.diff(indptr)
    if k is None and np.any(lengths != n_rel):
        bad = int(np.flatnonzero(lengths != n_rel)[0])
        raise ValueError(f"mAP@all needs the ranks of all relevant items: query {bad} lists {lengths[bad]} "
                         f"rank(s) but has {n_rel[bad]} relevant item(s)")
    values = np.zeros(n_rel.size)  # a query with relevant items but no hit within the cutoff scores 0
    for queries, rank_rows, valid in _padded_chunks(indptr, flat, k):
        hits = np.arange(1, rank_rows.shape[1] + 1)[None, :]
        precision = np.where(valid, hits / np.where(valid, rank_rows, 1.0), 0.0)
        rel = n_rel[queries].astype(np.float64)
        if convention == "standard":
            values[queries] = precision.sum(axis=1) / rel
        else:
            interpolated = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            denominator = rel if k is None else np.minimum(rel, k)
            values[queries] = np.where(valid, interpolated, 0.0).sum(axis=1) / denominator
    excluded = n_rel == 0
    values[excluded] = np.nan
    return PerQueryScores(values=values, n_excluded=int(excluded.sum()))


def precision_at_k(ranks_indptr: np.ndarray, ranks: np.ndarray, n_relevant: np.ndarray, k: int,
                   convention: Convention = "standard") -> PerQueryScores:
    """Per-query precision among the top k: hits / k ("standard") or hits / min(k, R) ("zs-sbir").

    Inputs as ``average_precision_from_ranks`` (ranks <= k must be listed). Queries with R = 0 are NaN
    and counted in ``n_excluded``.
    """
    indptr, flat, n_rel = _check_rank_lists(ranks_indptr, ranks, n_relevant)
    kk = _check_cutoff(k)
    assert kk is not None
    hits = _count_per_query(flat <= kk, indptr).astype(np.float64)
    _check_convention(convention)
    if convention == "standard":
        denominator = np.full(n_rel.size, float(kk))
    else:
        denominator = np.minimum(n_rel, kk).astype(np.float64)
    excluded = n_rel == 0
    values = np.where(excluded, np.nan, hits / np.where(excluded, 1.0, denominator))
    return PerQueryScores(values=values, n_excluded=int(excluded.sum()))


def _check_best_ranks(best_ranks: np.ndarray) -> np.ndarray:
    ranks = np.asarray(best_ranks)
    if ranks.ndim != 1 or not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"best_ranks must be a 1-D integer array; got shape {ranks.shape}, dtype {ranks.dtype}")
    if np.any(ranks < 0):
        raise ValueError("best_ranks must be 1-based ranks, or 0 for a query without a true match")
    return ranks.astype(np.int64)


def _check_convention(convention: str) -> None:
    if convention not in ("standard", "zs-sbir"):
        raise ValueError(f"convention must be 'standard' or 'zs-sbir'; got {convention!r}")


def _check_cutoff(cutoff: int | None) -> int | None:
    if cutoff is None:
        return None
    if int(cutoff) < 1:
        raise ValueError(f"the cutoff k must be >= 1; got {cutoff}")
    return int(cutoff)


def _check_rank_lists(indptr: np.ndarray, ranks: np.ndarray, n_relevant: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indptr = np.asarray(indptr, dtype=np.int64)
    ranks = np.asarray(ranks, dtype=np.int64)
    n_rel = np.asarray(n_relevant, dtype=np.int64)
    nq = n_rel.size
    if indptr.shape != (nq + 1,) or indptr[0] != 0 or indptr[-1] != ranks.size or np.any(np.diff(indptr) < 0):
        raise ValueError(f"ranks_indptr must be a non-decreasing ({nq + 1},) array from 0 to len(ranks)")
    if np.any(np.diff(indptr) > n_rel):
        raise ValueError("a query lists more ranks than it has relevant items (n_relevant)")
    if ranks.size and ranks.min() < 1:
        raise ValueError("ranks must be 1-based (>= 1)")
    same_query = np.repeat(np.arange(nq), np.diff(indptr))
    if ranks.size > 1 and np.any((np.diff(ranks) <= 0) & (same_query[1:] == same_query[:-1])):
        raise ValueError("each query's ranks must be strictly ascending (distinct positions)")
    return indptr, ranks, n_rel


def _count_per_query(mask: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Per query, how many of its entries (CSR ``indptr``) have ``mask`` set."""
    nq = indptr.size - 1
    query_of = np.repeat(np.arange(nq), np.diff(indptr))
    return np.bincount(query_of[mask], minlength=nq).astype(np.int64)


def _padded_chunks(indptr: np.ndarray, ranks: np.ndarray, cutoff: int | None):  # noqa: ANN202
    """Yield (query ids, (q, L) float ranks padded with inf, validity mask), ranks > cutoff dropped."""
    lengths = np.diff(indptr)
    if cutoff is not None:  # ranks are ascending: keep each query's prefix of ranks <= cutoff
        lengths = _count_per_query(ranks <= cutoff, indptr)
    queries = np.flatnonzero(lengths > 0)
    if queries.size == 0:
        return
    width = int(lengths.max())
    step = max(1, _PAD_ELEMENTS // width)
    for s in range(0, queries.size, step):
        q = queries[s:s + step]
        cols = np.arange(width)[None, :]
        valid = cols < lengths[q][:, None]
        idx = np.minimum(indptr[q][:, None] + cols, max(ranks.size - 1, 0))
        yield q, np.where(valid, ranks[idx].astype(np.float64), np.inf), valid
