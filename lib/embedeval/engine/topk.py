"""The per-query top-k reduction state: a (rows x k) heap, merged exactly (faiss exhaustive_search style).

Order: score descending, then gallery index ascending (a deterministic tie-break). Unfilled slots hold
score -inf and index ``EMPTY``. ``merge_topk`` combines states built from disjoint column sets in any
order or grouping with the same result; ``update_with_tile`` folds one score tile into a state in place,
touching only the rows whose tile holds an entry better than their current k-th best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMPTY = np.iinfo(np.int64).max
# A tile with more candidates than this many per row (k-th best not yet known, or an adversarial
# column order) is first cut to its own per-row top-k, so a merge never sorts a whole tile.
_MAX_CANDIDATES_PER_ROW_FACTOR = 4


@dataclass
class TopK:
    """scores (rows, k) float32 best first; indices (rows, k) int64 gallery indices (``EMPTY`` if unfilled)."""

    scores: np.ndarray
    indices: np.ndarray

    @staticmethod
    def empty(rows: int, k: int) -> "TopK":
        return TopK(np.full((rows, k), -np.inf, dtype=np.float32), np.full((rows, k), EMPTY, dtype=np.int64))

    @staticmethod
    def empty_exact(rows: int, k: int) -> "TopK":
        """An empty state for canonical float64 scores (what tile kernels and their merges carry)."""
        return TopK(np.full((rows, k), -np.inf), np.full((rows, k), EMPTY, dtype=np.int64))

    @property
    def k(self) -> int:
        return self.scores.shape[1]


def merge_topk(a: TopK, b: TopK) -> TopK:
    """The top-k of the union of two states over disjoint gallery items (same rows, same k)."""
    scores = np.concatenate([a.scores, b.scores], axis=1)
    indices = np.concatenate([a.indices, b.indices], axis=1)
    order = np.lexsort((indices, -scores), axis=1)[:, :a.k]
    return TopK(np.take_along_axis(scores, order, axis=1), np.take_along_axis(indices, order, axis=1))


def update_with_tile(state: TopK, tile: np.ndarray, col_offset: int, mask_buffer: np.ndarray | None = None) -> None:
    """Fold ``tile`` (rows, w) float32 scores of gallery items ``col_offset .. col_offset + w`` into ``state``.

    Requires every index already in ``state`` to be below ``col_offset`` (tiles arrive left to right), so
    a tile entry equal to the current k-th best loses the tie and only strictly better entries are
    candidates. Extra memory O(rows x w) booleans (reuse ``mask_buffer``) plus O(candidates).
    """
    rows, w = tile.shape
    k = state.k
    if mask_buffer is not None and mask_buffer.shape == tile.shape:
        mask = mask_buffer
        np.greater(tile, state.scores[:, -1:], out=mask)
    else:
        mask = tile > state.scores[:, -1:]
    flat = np.flatnonzero(mask)
    if flat.size > _MAX_CANDIDATES_PER_ROW_FACTOR * k * rows and w > k:
        # Keep only entries at or above each row's k-th best within the tile (ties kept for the merge).
        kth = np.partition(tile, w - k, axis=1)[:, w - k]
        np.logical_and(mask, tile >= kth[:, None], out=mask)
        flat = np.flatnonzero(mask)
    if flat.size == 0:
        return
    cand_rows = flat // w
    cand_cols = flat - cand_rows * w
    _merge_candidates(state, cand_rows, cand_cols + col_offset, tile.ravel()[flat])


def _merge_candidates(state: TopK, cand_rows: np.ndarray, cand_idx: np.ndarray, cand_scores: np.ndarray) -> None:
    """Merge candidates (sorted by row, then by index within a row) into ``state`` in place.

    Per touched row, [heap | candidates] is stably sorted by descending score: heap entries come first
    and carry lower indices, candidates follow in index order, so ties resolve to the lower index.
    Rows are padded to the longest candidate list unless that wastes too much, then a flat lexsort.
    """
    k = state.k
    starts = np.flatnonzero(np.r_[True, cand_rows[1:] != cand_rows[:-1]])
    counts = np.diff(np.r_[starts, cand_rows.size])
    touched = cand_rows[starts]
    width = k + int(counts.max())
    if touched.size * width > 4 * (touched.size * k + cand_rows.size):
        _merge_candidates_flat(state, touched, counts, cand_idx, cand_scores)
        return
    scores = np.full((touched.size, width), -np.inf, dtype=np.float32)
    indices = np.full((touched.size, width), EMPTY, dtype=np.int64)
    scores[:, :k] = state.scores[touched]
    indices[:, :k] = state.indices[touched]
    local_row = np.repeat(np.arange(touched.size), counts)
    position = k + np.arange(cand_rows.size) - np.repeat(starts, counts)
    scores[local_row, position] = cand_scores
    indices[local_row, position] = cand_idx
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    state.scores[touched] = np.take_along_axis(scores, order, axis=1)
    state.indices[touched] = np.take_along_axis(indices, order, axis=1)


def _merge_candidates_flat(state: TopK, touched: np.ndarray, counts: np.ndarray, cand_idx: np.ndarray,
                           cand_scores: np.ndarray) -> None:
    """The same merge as one lexsort over (row, -score, index): for very uneven candidate counts."""
    k = state.k
    local = np.arange(touched.size)
    all_rows = np.concatenate([np.repeat(local, k), np.repeat(local, counts)])
    all_scores = np.concatenate([state.scores[touched].ravel(), cand_scores])
    all_idx = np.concatenate([state.indices[touched].ravel(), cand_idx])
    order = np.lexsort((all_idx, -all_scores, all_rows))
    row_start = np.r_[0, np.cumsum(k + counts)[:-1]]
    take = order[row_start[:, None] + np.arange(k)]
    state.scores[touched] = all_scores[take]
    state.indices[touched] = all_idx[take]
