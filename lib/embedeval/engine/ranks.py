"""Exact ranks of true matches in a gallery, counted tile by tile without sorting the gallery.

Ranking convention (the same order as ``knn.exact_topk``): the gallery is ordered by score descending,
ties by lower gallery index first, so every item has a distinct 1-based rank:

    rank(p) = 1 + #{g : s(g) > s(p)} + #{g < p : s(g) == s(p)}

Scores are canonical float64 inner products (``engine.exact``): tiles are computed with a GEMM and every
comparison a GEMM value cannot decide within its rigorous error bound is redone in float64, so ranks do
not depend on block size, tile dtype or runner.

How: per query, the scores of its positives ("thresholds") are computed first and sorted; each tile then
adds, for each gallery item, how many thresholds it beats (a searchsorted against the sorted thresholds)
to a small histogram; the count above each positive follows from the histogram's suffix sums. Memory per
task O(B x W + B x d + B x R_max) (W tile width, R_max most positives of one query), never O(N^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedeval.engine.exact import canonical_scores, gemm_error_bound, max_row_norm, row_norms
from embedeval.engine.knn import DEFAULT_BLOCK_SIZE
from embedeval.engine.runner import TileRunner, default_runner
from embedeval.engine.validate import as_query_gallery, check_block_size

NO_POSITIVE = 0  # best_positive_rank of a query without any true match (ranks are otherwise >= 1)
# Gallery columns per tile (square B x B tiles up to this): wide tiles amortise the per-row searches.
RANK_TILE_COLUMNS = 4096
# Mean positives per query above which tiles are computed in float64: with many thresholds a float32
# tile leaves too many values inside the error band (each one recomputed); results are identical.
_FLOAT64_TILES_ABOVE_MEAN_POSITIVES = 16
# A query row with at least this many candidates in a tile searches its own thresholds in a Python loop
# (fast per element); fewer go to one vectorised search over the whole block.
_PER_ROW_SEARCH_ABOVE = 256


@dataclass(frozen=True)
class RankLists:
    """Per query, the sorted 1-based ranks of all its relevant gallery items (CSR layout)."""

    indptr: np.ndarray  # (nq + 1,) int64
    ranks: np.ndarray  # (indptr[-1],) int64, ascending within each query

    @property
    def n_relevant(self) -> np.ndarray:
        """(nq,) number of relevant gallery items per query (0: query has none)."""
        return np.diff(self.indptr)

    def ranks_of(self, query: int) -> np.ndarray:
        return self.ranks[self.indptr[query]:self.indptr[query + 1]]


@dataclass(frozen=True)
class _PositiveSets:
    """Positives of query i: ``pool[start[i]:stop[i]]`` (gallery indices), minus ``exclude[i]``."""

    pool: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    exclude: np.ndarray  # (nq,) gallery index banned from query i's gallery, -1 for none


def best_positive_rank(Q: np.ndarray, G: np.ndarray, positives_indptr: np.ndarray,
                       positives_indices: np.ndarray, *, block_size: int = DEFAULT_BLOCK_SIZE,
                       runner: TileRunner | None = None) -> np.ndarray:
    """(nq,) int64: the 1-based rank of each query's best true match (``NO_POSITIVE`` = 0 if it has none).

    Q (nq, d), G (ng, d) float (inner product; normalise for cosine). Query i's true matches are
    ``positives_indices[positives_indptr[i]:positives_indptr[i + 1]]`` (CSR, distinct gallery indices;
    e.g. an image's 5 captions). The rank counts gallery items ordered before the best match under the
    module's convention (score descending, ties by lower index): for image<->text R@K and median rank.
    Raises ``ValueError`` on NaN/Inf rows, dimension mismatch, or malformed/duplicate positives.
    """
    Q, G = as_query_gallery(Q, G)
    indptr = np.asarray(positives_indptr, dtype=np.int64)
    indices = np.asarray(positives_indices, dtype=np.int64)
    if indptr.shape != (Q.shape[0] + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0) \
            or indptr[-1] != indices.size:
        raise ValueError(f"positives_indptr must be a non-decreasing ({Q.shape[0] + 1},) array from 0 to "
                         f"len(positives_indices) = {indices.size}")
    sets = _PositiveSets(indices, indptr[:-1], indptr[1:], np.full(Q.shape[0], -1, dtype=np.int64))
    _check_positive_sets(sets, G.shape[0])
    out = np.zeros(Q.shape[0], dtype=np.int64)
    for res in _run_rank_tasks(Q, G, sets, "best", block_size, runner):
        out[res.start:res.stop] = res.value[1]
    return out


def positive_ranks(Q: np.ndarray, G: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray, *,
                   block_size: int = DEFAULT_BLOCK_SIZE, runner: TileRunner | None = None,
                   exclude_same_index: bool = False) -> RankLists:
    """Per query, the sorted 1-based ranks of every gallery item with the query's label (exact mAP@all).

    Q (nq, d), G (ng, d); ``q_labels`` (nq,), ``g_labels`` (ng,) of any comparable dtype; relevance =
    equal label. ``exclude_same_index``: Q and G are the same items (nq == ng) and gallery item i is
    removed from query i's ranking (neither counted nor relevant). Ranks follow the module's
    convention (ties by lower gallery index), so they are distinct. Output size is the total number of
    relevant pairs. Raises ``ValueError`` on NaN/Inf rows, dimension or length mismatch.
    """
    Q, G = as_query_gallery(Q, G)
    q_lab = np.asarray(q_labels)
    g_lab = np.asarray(g_labels)
    if q_lab.shape != (Q.shape[0],) or g_lab.shape != (G.shape[0],):
        raise ValueError(f"q_labels and g_labels must be 1-D with {Q.shape[0]} and {G.shape[0]} entries; "
                         f"got shapes {q_lab.shape} and {g_lab.shape}")
    if exclude_same_index and Q.shape[0] != G.shape[0]:
        raise ValueError("exclude_same_index needs Q and G to be the same items (equal row counts); "
                         f"got {Q.shape[0]} and {G.shape[0]}")
    _, codes = np.unique(np.concatenate([q_lab, g_lab]), return_inverse=True)
    q_codes = codes[:Q.shape[0]].astype(np.int64)
    g_codes = codes[Q.shape[0]:].astype(np.int64)
    pool = np.argsort(g_codes, kind="stable")
    per_code = np.bincount(g_codes, minlength=int(codes.max()) + 1 if codes.size else 0)
    code_start = np.concatenate([[0], np.cumsum(per_code)[:-1]]).astype(np.int64)
    start = code_start[q_codes]
    stop = start + per_code[q_codes]
    exclude = np.arange(Q.shape[0], dtype=np.int64) if exclude_same_index else np.full(Q.shape[0], -1, np.int64)
    sets = _PositiveSets(pool, start, stop, exclude)

    lengths = stop - start
    if exclude_same_index:
        lengths = lengths - (g_codes[np.arange(Q.shape[0])] == q_codes)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ranks = np.empty(int(indptr[-1]), dtype=np.int64)
    for res in _run_rank_tasks(Q, G, sets, "all", block_size, runner):
        ranks[indptr[res.start]:indptr[res.stop]] = res.value[1]
    return RankLists(indptr=indptr, ranks=ranks)


def _check_positive_sets(sets: _PositiveSets, n_gallery: int) -> None:
    pool = sets.pool
    if pool.size and (pool.min() < 0 or pool.max() >= n_gallery):
        raise ValueError(f"positives_indices must lie in [0, {n_gallery}); got values from "
                         f"{pool.min()} to {pool.max()}")
    rows = np.repeat(np.arange(sets.start.size), sets.stop - sets.start)
    order = np.lexsort((pool, rows))
    dup = (rows[order][1:] == rows[order][:-1]) & (pool[order][1:] == pool[order][:-1])
    if dup.any():
        raise ValueError(f"positives_indices repeat a gallery item within a query ({int(dup.sum())} time(s), "
                         f"first for query {int(rows[order][1:][dup][0])}); list each true match once")


def _run_rank_tasks(Q: np.ndarray, G: np.ndarray, sets: _PositiveSets, mode: str, block_size: int,
                    runner: TileRunner | None):  # noqa: ANN202 - an iterator of BlockResult
    block_size = check_block_size(block_size)
    nq = Q.shape[0]
    mean_positives = float(np.mean(sets.stop - sets.start)) if nq else 0.0
    tile_dtype = "float64" if mode == "all" and mean_positives > _FLOAT64_TILES_ABOVE_MEAN_POSITIVES else "float32"
    g_norm_max = max_row_norm(G)
    params = {"mode": mode, "tile_columns": min(block_size, RANK_TILE_COLUMNS), "tile_dtype": tile_dtype,
              "g_norm_max": g_norm_max}
    runner = runner or default_runner()
    q_shared = runner.put(Q)
    g_shared = q_shared if G is Q else runner.put(G)
    arrays = [q_shared, g_shared, sets.pool, sets.start, sets.stop, sets.exclude]
    return runner.map_blocks(rank_block_task, nq, block_size, arrays, params)


def rank_block_task(start: int, stop: int, Q: np.ndarray, G: np.ndarray, pool: np.ndarray,
                    pos_start: np.ndarray, pos_stop: np.ndarray, exclude: np.ndarray, *, mode: str,
                    tile_columns: int, tile_dtype: str, g_norm_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Block task for queries ``start:stop``: returns (lengths (b,), ranks).

    mode "best": ranks (b,) of the best positive (``NO_POSITIVE`` when none). mode "all": the ranks of
    all positives, concatenated per query in ascending order.
    """
    b = stop - start
    thr = _Thresholds.build(Q, G, pool, pos_start[start:stop], pos_stop[start:stop], exclude[start:stop],
                            start, best_only=(mode == "best"))
    dtype = np.dtype(tile_dtype)
    q = np.asarray(Q[start:stop], dtype=dtype)
    eps = gemm_error_bound(Q.shape[1], dtype) * row_norms(q) * g_norm_max
    low, high = thr.bounds()
    lo = low - eps
    hi = high + eps
    above_all = np.zeros(b, dtype=np.int64)
    hist = np.zeros(thr.scores.size + b, dtype=np.int64)  # per query, bins 0..R for "beats b thresholds"
    excluded_rows = np.flatnonzero(exclude[start:stop] >= 0)
    ex_cols = exclude[start:stop][excluded_rows]
    for c0 in range(0, G.shape[0], tile_columns):
        c1 = min(G.shape[0], c0 + tile_columns)
        tile = q @ np.asarray(G[c0:c1], dtype=dtype).T
        inside = (ex_cols >= c0) & (ex_cols < c1)
        tile[excluded_rows[inside], ex_cols[inside] - c0] = -np.inf
        above_all += np.count_nonzero(tile > hi[:, None], axis=1)
        mid = (tile >= lo[:, None]) & (tile <= hi[:, None])
        flat = np.flatnonzero(mid)
        if flat.size:
            rows = flat // (c1 - c0)
            _count_mid(thr, hist, eps, rows, flat - rows * (c1 - c0) + c0,
                       tile.ravel()[flat].astype(np.float64), Q, G, start)
    ranks = thr.ranks(above_all, hist)
    if mode == "best":
        best = np.full(b, NO_POSITIVE, dtype=np.int64)
        best[thr.lengths > 0] = ranks
        return thr.lengths, best
    return thr.lengths, ranks


def _count_mid(thr: "_Thresholds", hist: np.ndarray, eps: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               values: np.ndarray, Q: np.ndarray, G: np.ndarray, q_offset: int) -> None:
    """Add to ``hist`` how many thresholds each candidate (row, gallery col, GEMM value) beats.

    Decided from the GEMM value when no threshold lies within ``eps`` of it, else from the canonical
    float64 score and, on an exact score tie, the gallery index (lower index ranks first).
    Rows with many candidates search their own small threshold array (cache-resident); the others
    are searched all at once in the block's (row, score) keys.
    """
    seg = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    seg_len = np.diff(np.r_[seg, rows.size])
    looped = seg_len >= _PER_ROW_SEARCH_ABOVE
    lo = np.empty(rows.size, dtype=np.int64)
    sure = np.empty(rows.size, dtype=bool)
    for s, n in zip(seg[looped], seg_len[looped]):
        r = rows[s]
        t = thr.scores_of(r)
        v = values[s:s + n]
        a = np.searchsorted(t, v, side="left")  # thresholds strictly below v
        near_below = (a > 0) & (v - t[np.maximum(a - 1, 0)] <= eps[r])
        near_above = (a < t.size) & (t[np.minimum(a, t.size - 1)] - v <= eps[r])
        lo[s:s + n] = a
        sure[s:s + n] = ~(near_below | near_above)
    batch = np.flatnonzero(~np.repeat(looped, seg_len))
    if batch.size:
        r = rows[batch]
        below = np.searchsorted(thr.keys, r + 1j * (values[batch] - eps[r]), side="left") - thr.offset[r]
        upto = np.searchsorted(thr.keys, r + 1j * (values[batch] + eps[r]), side="right") - thr.offset[r]
        lo[batch] = below
        sure[batch] = below == upto  # no threshold within eps of v
    bins = [thr.bin_offset[rows[sure]] + lo[sure]]
    unsure = np.flatnonzero(~sure)
    if unsure.size:
        bins.append(_resolve_exactly(thr, rows[unsure], cols[unsure], Q, G, q_offset))
    hist += np.bincount(np.concatenate(bins), minlength=hist.size)


def _resolve_exactly(thr: "_Thresholds", rows: np.ndarray, cols: np.ndarray, Q: np.ndarray, G: np.ndarray,
                     q_offset: int) -> np.ndarray:
    """Histogram bins of candidates a GEMM value could not place: compare canonical scores, then, on an
    exact tie, gallery indices (the item beats tied positives with a higher index)."""
    exact = canonical_scores(Q, G, rows + q_offset, cols)
    key = rows + 1j * exact
    lo = np.searchsorted(thr.keys, key, side="left") - thr.offset[rows]
    hi = np.searchsorted(thr.keys, key, side="right") - thr.offset[rows]
    beats = lo.copy()
    one = np.flatnonzero(hi - lo == 1)  # the common tie: the positive itself, or one duplicate
    beats[one] += thr.index[thr.offset[rows[one]] + lo[one]] > cols[one]
    for i in np.flatnonzero(hi - lo > 1):  # several positives with exactly this score (duplicates)
        tied = thr.index[thr.offset[rows[i]] + lo[i]:thr.offset[rows[i]] + hi[i]]
        beats[i] += int(np.count_nonzero(tied > cols[i]))
    return thr.bin_offset[rows] + beats


@dataclass(frozen=True)
class _Thresholds:
    """The canonical scores of each query's positives, sorted ascending by (score, -gallery index)."""

    scores: np.ndarray  # concatenated per query
    index: np.ndarray  # gallery index of each threshold
    offset: np.ndarray  # (b + 1,) start of each query's thresholds
    lengths: np.ndarray  # (b,)
    keys: np.ndarray  # complex (local row + 1j * score): sorted, so one searchsorted serves all rows
    bin_offset: np.ndarray  # (b,) start of query r's histogram bins (R_r + 1 of them)

    @staticmethod
    def build(Q: np.ndarray, G: np.ndarray, pool: np.ndarray, start: np.ndarray, stop: np.ndarray,
              exclude: np.ndarray, q_offset: int, best_only: bool) -> "_Thresholds":
        b = start.size
        counts = stop - start
        rows = np.repeat(np.arange(b), counts)
        first = np.repeat(start - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        pos = pool[first + np.arange(rows.size)] if rows.size else np.zeros(0, np.int64)
        keep = pos != exclude[rows]
        rows, pos = rows[keep], pos[keep]
        scores = canonical_scores(Q, G, rows + q_offset, pos)
        order = np.lexsort((-pos, scores, rows))
        rows, pos, scores = rows[order], pos[order], scores[order]
        if best_only:  # the last entry of each query is its best positive
            last = np.flatnonzero(np.r_[rows[1:] != rows[:-1], True]) if rows.size else np.zeros(0, np.int64)
            rows, pos, scores = rows[last], pos[last], scores[last]
        lengths = np.bincount(rows, minlength=b).astype(np.int64)
        offset = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # numpy orders complex numbers by real part, then imaginary part: (row, score) lexicographically.
        keys = rows.astype(np.float64) + 1j * scores
        return _Thresholds(scores, pos, offset, lengths, keys, offset[:-1] + np.arange(b))

    def scores_of(self, r: int) -> np.ndarray:
        return self.scores[self.offset[r]:self.offset[r + 1]]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lowest, highest) threshold per query; +inf for queries without positives."""
        has = self.lengths > 0
        low = np.full(self.lengths.size, np.inf)
        high = np.full(self.lengths.size, np.inf)
        low[has] = self.scores[self.offset[:-1][has]]
        high[has] = self.scores[self.offset[1:][has] - 1]
        return low, high

    def ranks(self, above_all: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """Ranks of the thresholds, ascending per query: 1 + number of items ordered before each."""
        out = np.empty(self.scores.size, dtype=np.int64)
        bins = self.bin_offset
        for r in np.flatnonzero(self.lengths):
            n = self.lengths[r]
            suffix = np.cumsum(hist[bins[r]:bins[r] + n + 1][::-1])[::-1]
            # Items before threshold m (ascending keys) = those beating more than m thresholds.
            before = above_all[r] + suffix[1:]
            out[self.offset[r]:self.offset[r + 1]] = (1 + before)[::-1]
        return out
