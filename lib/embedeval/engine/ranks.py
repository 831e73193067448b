"""Exact ranks of true matches in a gallery, counted tile by tile without sorting the gallery.

Ranking convention (the same order as ``knn.exact_topk``): the gallery is ordered by score descending,
ties by lower gallery index first, so every item has a distinct 1-based rank:

    rank(p) = 1 + #{g : s(g) > s(p)} + #{g < p : s(g) == s(p)}

Scores are canonical float64 inner products (``engine.exact``): tiles are computed with a GEMM and every
comparison a GEMM value cannot decide within its rigorous error bound is redone in float64, so ranks do
not depend on block size, tile dtype or runner.

How: per query, the scores of its positives ("thresholds") are computed first and sorted; each tile then
adds, for each gallery item, how many thresholds it beats to a small histogram (a search in the sorted
thresholds for queries with few positives; for many, a per-row table of equal-width score bins,
``_count_binned_block``); the count above each positive follows from the histogram's suffix sums. Memory
per task O(B x W + B x d + B x R_max) (W tile width, R_max most positives of one query), never O(N^2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedeval.engine.exact import _row_dots, canonical_scores, gemm_error_bound, max_row_norm, row_norms
from embedeval.engine.kernels import matmul_t
from embedeval.engine.knn import DEFAULT_BLOCK_SIZE
from embedeval.engine.runner import TileRunner, default_runner
from embedeval.engine.sources import ArrayBlocks, BlockSource
from embedeval.engine.tiles import QueryChunk, pack_in_order, query_chunks, tile_reduce
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
# A chunk whose queries have up to this many positives counts candidates one by one; beyond, each row's
# items are counted through a table of score bins (``_count_binned_block``).
_BINNED_COUNT_FROM_POSITIVES = 64


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
class Relevance:
    """Which gallery items are true matches of each query, in one of two forms.

    - codes: query i's matches are the gallery items j with ``g_codes[j] == q_codes[i]`` (labels, or
      item keys for caption retrieval); codes < 0 match nothing.
    - pairs: explicit CSR lists ``indices[indptr[i]:indptr[i + 1]]`` (distinct gallery indices).

    ``exclude[i]`` (>= 0) is a gallery item removed from query i's ranking (neither counted nor a match).
    """

    q_codes: np.ndarray | None = None
    g_codes: np.ndarray | None = None
    indptr: np.ndarray | None = None
    indices: np.ndarray | None = None
    exclude: np.ndarray | None = None

    def chunk_arg(self, lo: int, hi: int) -> tuple[Any, ...]:
        ex = None if self.exclude is None else self.exclude[lo:hi]
        if self.q_codes is not None:
            return ("codes", self.q_codes[lo:hi], ex)
        assert self.indptr is not None and self.indices is not None
        counts = np.diff(self.indptr[lo:hi + 1])
        rows = np.repeat(np.arange(hi - lo, dtype=np.int64), counts)
        cols = self.indices[self.indptr[lo]:self.indptr[hi]]
        order = np.argsort(cols, kind="stable")
        return ("pairs", (rows[order], cols[order]), ex)

    def block_args(self, gallery: BlockSource) -> list[Any] | None:
        if self.g_codes is None:
            return None
        return [self.g_codes[gallery.block_range(b)[0]:gallery.block_range(b)[1]] for b in range(gallery.n_blocks)]

    def positive_counts(self, lo: int, hi: int) -> np.ndarray:
        """(hi - lo,) how many matches each query has (after the exclusion)."""
        if self.indptr is not None:
            counts = np.diff(self.indptr[lo:hi + 1]).astype(np.int64)
            if self.exclude is not None:
                ex = self.exclude[lo:hi]
                for r in np.flatnonzero(ex >= 0):
                    pos = self.indices[self.indptr[lo + r]:self.indptr[lo + r + 1]]
                    counts[r] -= int(np.any(pos == ex[r]))
            return counts
        assert self.q_codes is not None and self.g_codes is not None
        uniq, per = np.unique(self.g_codes[self.g_codes >= 0], return_counts=True)
        q = self.q_codes[lo:hi]
        at = np.searchsorted(uniq, q)
        found = (q >= 0) & (at < uniq.size) & (uniq[np.minimum(at, max(uniq.size - 1, 0))] == q) if uniq.size \
            else np.zeros(q.size, bool)
        counts = np.zeros(q.size, dtype=np.int64)
        counts[found] = per[at[found]]
        if self.exclude is not None:
            ex = self.exclude[lo:hi]
            has = ex >= 0
            counts[has] -= (self.g_codes[ex[has]] == q[has]) & (q[has] >= 0)
        return counts


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
    _check_positive_lists(indptr, indices, G.shape[0])
    block_size = check_block_size(block_size)
    q_src, g_src = _sources(Q, G, block_size)
    lists = rank_positives(q_src, g_src, Relevance(indptr=indptr, indices=indices), best_only=True,
                           chunk_rows=block_size, runner=runner)
    out = np.full(Q.shape[0], NO_POSITIVE, dtype=np.int64)
    has = lists.n_relevant > 0
    out[has] = lists.ranks
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
    relevance = Relevance(q_codes=codes[:Q.shape[0]].astype(np.int64), g_codes=codes[Q.shape[0]:].astype(np.int64),
                          exclude=np.arange(Q.shape[0], dtype=np.int64) if exclude_same_index else None)
    block_size = check_block_size(block_size)
    q_src, g_src = _sources(Q, G, block_size)
    return rank_positives(q_src, g_src, relevance, best_only=False, chunk_rows=block_size, runner=runner)


def _sources(Q: np.ndarray, G: np.ndarray, block_size: int) -> tuple[BlockSource, BlockSource]:
    g_rows = 4 * block_size
    q_src = ArrayBlocks(Q, g_rows)
    return q_src, (q_src if G is Q else ArrayBlocks(G, g_rows))


def _check_positive_lists(indptr: np.ndarray, indices: np.ndarray, n_gallery: int) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= n_gallery):
        raise ValueError(f"positives_indices must lie in [0, {n_gallery}); got values from "
                         f"{indices.min()} to {indices.max()}")
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    order = np.lexsort((indices, rows))
    dup = (rows[order][1:] == rows[order][:-1]) & (indices[order][1:] == indices[order][:-1])
    if dup.any():
        raise ValueError(f"positives_indices repeat a gallery item within a query ({int(dup.sum())} time(s), "
                         f"first for query {int(rows[order][1:][dup][0])}); list each true match once")


# Thresholds held on the driver at once (a group of query chunks is ranked fully before the next).
_THRESHOLDS_PER_GROUP = 4_000_000


def rank_positives(queries: BlockSource, gallery: BlockSource, relevance: Relevance, *, best_only: bool,
                   chunk_rows: int = DEFAULT_BLOCK_SIZE, runner: TileRunner | None = None) -> RankLists:
    """Exact ranks of every query's true matches (or only its best one) over the whole gallery.

    Two passes of the tile driver per group of query chunks: (1) each tile scores the chunk's positives
    that lie in its gallery block (canonical float64), the driver sorts them into thresholds; (2) each
    tile counts, per query, how many of its block's items beat each threshold (integer states, merged
    by addition). Groups keep at most ``_THRESHOLDS_PER_GROUP`` thresholds on the driver. Memory: driver
    O(queries + thresholds of a group); task O(chunk x d + block x d + chunk x RANK_TILE_COLUMNS), and
    for queries with many positives O(chunk x d + 3 x block x d + 3 x ``_SLAB_ELEMENTS``) (the block in
    float64, a slab of the tile, and its rows' bin tables, about as large).
    ``best_only``: one rank per query that has a match (``RankLists`` with lengths 0/1).
    """
    chunk_rows = check_block_size(chunk_rows)
    nq = queries.n
    counts = relevance.positive_counts(0, nq) if nq else np.zeros(0, np.int64)
    lengths = np.minimum(counts, 1) if best_only else counts
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ranks = np.empty(int(indptr[-1]), dtype=np.int64)
    if nq == 0 or not indptr[-1]:
        return RankLists(indptr=indptr, ranks=ranks)
    runner = runner or default_runner()
    q_src = runner.place(queries)
    g_src = q_src if gallery is queries else runner.place(gallery)
    block_args = relevance.block_args(g_src)
    placed_block_args = None if block_args is None else block_args
    mean_positives = float(counts.mean())
    tile_dtype = "float64" if not best_only and mean_positives > _FLOAT64_TILES_ABOVE_MEAN_POSITIVES else "float32"
    tile_columns = min(chunk_rows, RANK_TILE_COLUMNS)
    chunks = query_chunks(q_src, chunk_rows)
    wanted = _blocks_with_positives(relevance, g_src)

    groups = [[chunks[i] for i in group] for group in
              pack_in_order([int(counts[c.lo:c.hi].sum()) for c in chunks], _THRESHOLDS_PER_GROUP)]

    for group in groups:
        found: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

        def keep_scores(chunk: QueryChunk, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
            found[chunk.lo] = parts

        tile_reduce(positive_scores_tile, q_src, g_src, init=lambda c: [], merge=lambda acc, part: acc + [part],
                    on_chunk=keep_scores, chunk_rows=chunk_rows, chunk_arg=lambda c: relevance.chunk_arg(c.lo, c.hi),
                    wanted=wanted, block_args=placed_block_args, chunks=group, runner=runner)
        thresholds = {c.lo: _Thresholds.build(c.hi - c.lo, found.pop(c.lo), best_only) for c in group}

        def keep_ranks(chunk: QueryChunk, state: tuple[np.ndarray, np.ndarray]) -> None:
            thr = thresholds.pop(chunk.lo)
            got = thr.ranks(*state)
            if not np.array_equal(thr.lengths, lengths[chunk.lo:chunk.hi]):
                raise RuntimeError("rank tiles disagree with the relevance counts (a gallery block changed?)")
            ranks[indptr[chunk.lo]:indptr[chunk.hi]] = got

        def count_arg(c: QueryChunk) -> tuple[Any, ...]:
            ex = None if relevance.exclude is None else relevance.exclude[c.lo:c.hi]
            return thresholds[c.lo], ex

        tile_reduce(rank_count_tile, q_src, g_src,
                    init=lambda c: (np.zeros(c.hi - c.lo, np.int64), np.zeros(thresholds[c.lo].n_bins, np.int64)),
                    merge=lambda a, b: (a[0] + b[0], a[1] + b[1]), on_chunk=keep_ranks, chunk_rows=chunk_rows,
                    chunk_arg=count_arg, params={"tile_dtype": tile_dtype, "tile_columns": tile_columns},
                    chunks=group, runner=runner)
    return RankLists(indptr=indptr, ranks=ranks)


def _blocks_with_positives(relevance: Relevance, gallery: BlockSource) -> Any:
    """Per chunk, only the gallery blocks that hold one of its positives take part in the scoring pass (the
    counting pass needs every block). For codes (a caption's item key, a label): the distinct (code, block)
    pairs of the gallery, O(Ng) once; a chunk's blocks are those of its codes' pairs."""
    if relevance.indptr is not None:
        assert relevance.indices is not None

        def wanted(chunk: QueryChunk) -> list[int]:
            cols = relevance.indices[relevance.indptr[chunk.lo]:relevance.indptr[chunk.hi]]
            return sorted(set((np.searchsorted(gallery.offsets, cols, side="right") - 1).tolist()))

        return wanted
    assert relevance.q_codes is not None and relevance.g_codes is not None
    n_blocks = gallery.n_blocks
    block_of = np.repeat(np.arange(n_blocks, dtype=np.int64), np.diff(gallery.offsets))
    matchable = relevance.g_codes >= 0  # negative codes match nothing
    pairs = np.unique(relevance.g_codes[matchable].astype(np.int64) * n_blocks + block_of[matchable])
    pair_codes, pair_blocks = pairs // n_blocks, pairs % n_blocks

    def wanted_by_code(chunk: QueryChunk) -> list[int]:
        codes = np.unique(relevance.q_codes[chunk.lo:chunk.hi])
        lo = np.searchsorted(pair_codes, codes, side="left")
        hi = np.searchsorted(pair_codes, codes, side="right")
        return np.unique(pair_blocks[_ranges(lo, hi)]).tolist()

    return wanted_by_code


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``lo[0]..hi[0]-1, lo[1]..hi[1]-1, ...`` concatenated (int64), without a Python loop."""
    lo = np.asarray(lo, dtype=np.int64)
    lengths = np.asarray(hi, dtype=np.int64) - lo
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.repeat(lo - starts, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def positive_scores_tile(q: np.ndarray, q_lo: int, g: np.ndarray, g_lo: int, arg: tuple[Any, ...],
                         g_codes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile kernel, pass 1: (query row in chunk, global gallery index, canonical score) of every
    positive of the chunk's queries inside this gallery block (the excluded item left out)."""
    kind, rel, exclude = arg
    w = g.shape[0]
    if kind == "codes":
        return _positive_scores_by_code(q, g, g_lo, rel, g_codes, exclude)
    rows_all, cols_all = rel
    a, z = np.searchsorted(cols_all, [g_lo, g_lo + w])
    rows, cols = rows_all[a:z], cols_all[a:z] - g_lo
    if exclude is not None and rows.size:
        keep = cols + g_lo != exclude[rows]
        rows, cols = rows[keep], cols[keep]
    scores = canonical_scores(q, g, rows, cols)
    return rows, cols + g_lo, scores


# Elements (queries x positives x d) of one float64 product batch in ``_positive_scores_by_code``: 2 MiB,
# so the products are summed while they are still in cache (a 32 MiB batch took twice as long).
_GROUP_ELEMENTS = 1 << 18
# Below this many queries per code on average, positives are scored pair by pair rather than per code.
_FLAT_BELOW_QUERIES_PER_CODE = 4


def _positive_scores_by_code(q: np.ndarray, g: np.ndarray, g_lo: int, q_codes: np.ndarray, g_codes: np.ndarray,
                             exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical scores of every (query, same-code gallery row) pair of a tile, grouped by code.

    Queries of one code share their positives, so each positive row is converted to float64 once per
    code and every pair is one contiguous float64 dot (``exact._row_dots``): the same bits as
    ``canonical_scores`` pair by pair, without gathering a row per pair.
    """
    out_rows, out_cols, out_scores = [], [], []
    present = np.flatnonzero(np.isin(q_codes, g_codes) & (q_codes >= 0))
    if present.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    order = present[np.argsort(q_codes[present], kind="stable")]
    codes = q_codes[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], codes.size]
    d = q.shape[1]
    if starts.size * _FLAT_BELOW_QUERIES_PER_CODE > order.size:
        # Codes shared by few queries (item keys: captions): pair by pair is cheaper than a loop per code.
        g_order = np.argsort(g_codes, kind="stable")
        g_sorted = g_codes[g_order]
        lo = np.searchsorted(g_sorted, q_codes[order], side="left")
        hi = np.searchsorted(g_sorted, q_codes[order], side="right")
        counts = hi - lo
        rows = np.repeat(order, counts)
        cols = g_order[_ranges(lo, hi)].astype(np.int64)
        if exclude is not None:
            keep = cols + g_lo != exclude[rows]
            rows, cols = rows[keep], cols[keep]
        return rows, cols + g_lo, canonical_scores(q, g, rows, cols)
    for s0, s1 in zip(starts, ends):
        rows = order[s0:s1]
        cols = np.flatnonzero(g_codes == codes[s0]).astype(np.int64)
        # (positives, d), never the product's (queries, positives, d) shape, so ``_row_dots`` does not
        # write its products over it: it is reused by every batch of this code's queries.
        gp = np.asarray(g[cols], dtype=np.float64)
        step = max(1, _GROUP_ELEMENTS // max(1, cols.size * d))
        for c in range(0, rows.size, step):
            rr = rows[c:c + step]
            scores = _row_dots(np.asarray(q[rr], dtype=np.float64)[:, None, :], gp)
            out_rows.append(np.repeat(rr, cols.size))
            out_cols.append(np.tile(cols, rr.size))
            out_scores.append(scores.ravel())
    rows = np.concatenate(out_rows)
    cols = np.concatenate(out_cols)
    scores = np.concatenate(out_scores)
    if exclude is not None:
        keep = cols + g_lo != exclude[rows]
        rows, cols, scores = rows[keep], cols[keep], scores[keep]
    return rows, cols + g_lo, scores


def rank_count_tile(q: np.ndarray, q_lo: int, g: np.ndarray, g_lo: int, arg: tuple[Any, ...], _: Any, *,
                    tile_dtype: str, tile_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile kernel, pass 2: per query, how many items of this block are ordered before all of its
    thresholds (``above_all``) and, per threshold bin, how many beat exactly that many (``hist``)."""
    thr, exclude = arg
    b = q.shape[0]
    w = g.shape[0]
    dtype = np.dtype(tile_dtype)
    qd = np.asarray(q, dtype=dtype)
    eps = gemm_error_bound(q.shape[1], dtype) * row_norms(qd) * max_row_norm(g)
    low, high = thr.bounds()
    lo = low - eps
    hi = high + eps
    above_all = np.zeros(b, dtype=np.int64)
    hist = np.zeros(thr.n_bins, dtype=np.int64)
    if exclude is not None:
        ex_rows = np.flatnonzero((exclude >= g_lo) & (exclude < g_lo + w))
        ex_cols = exclude[ex_rows] - g_lo
    else:
        ex_rows = ex_cols = np.zeros(0, np.int64)
    binned = int(thr.lengths.max()) >= _BINNED_COUNT_FROM_POSITIVES if thr.lengths.size else False
    if binned:
        _count_binned_block(thr, qd, g, g_lo, eps, hist, q, ex_rows, ex_cols)
        return above_all, hist
    for c0 in range(0, w, tile_columns):
        c1 = min(w, c0 + tile_columns)
        tile = matmul_t(qd, np.asarray(g[c0:c1], dtype=dtype))
        inside = (ex_cols >= c0) & (ex_cols < c1)
        tile[ex_rows[inside], ex_cols[inside] - c0] = -np.inf
        above_all += np.count_nonzero(tile > hi[:, None], axis=1)
        mid = (tile >= lo[:, None]) & (tile <= hi[:, None])
        flat = np.flatnonzero(mid)
        if flat.size:
            rows = flat // (c1 - c0)
            _count_mid(thr, hist, eps, rows, flat - rows * (c1 - c0) + c0, tile.ravel()[flat].astype(np.float64),
                       q, g, g_lo)
    return above_all, hist


# Elements of one row slab of the binned counting (slab rows x the whole gallery block): 32 MiB of float64.
_SLAB_ELEMENTS = 1 << 22
# Bins of a query row's table per column of the gallery block: building the table costs O(bins) per row and
# block, the counting O(columns) per row; fewer bins leave more items in bins that hold a threshold.
_BINS_PER_COLUMN = 0.5
_MIN_BINS = 64
# Largest bin scale and shift: far inside float32's range, so ``v * scale + shift`` is never NaN.
_MAX_SCALE = 2.0 ** 60
# Windows of one bin an item is compared with one by one; items of more crowded bins are decided exactly.
_WINDOWS_COMPARED = 8
# Rows of the slab counted per pass: their part of the tile and of the table stay in cache between passes.
_COUNT_ROWS = 8


def _count_binned_block(thr: "_Thresholds", qd: np.ndarray, g: np.ndarray, g_lo: int, eps: np.ndarray,
                        hist: np.ndarray, q: np.ndarray, ex_rows: np.ndarray, ex_cols: np.ndarray) -> None:
    """The counting of ``rank_count_tile`` for queries with many positives, over the whole gallery block.

    Each query row gets a table of ``bins`` equal-width bins over [lowest threshold - eps, highest + eps];
    an item's bin is ``trunc(clip(v * scale + shift, -1, bins))``, computed with the same floating-point
    operations for items and for the thresholds' error windows [t - eps, t + eps]. That function is monotone,
    so an item in a bin that no window touches lies outside every window and beats exactly the thresholds
    whose windows end in lower bins: the table gives its histogram bin, a handful of vectorised passes per
    element instead of a sort or a search per row. Items in a bin that windows touch are compared with those
    windows (``_BinTable.resolve``). Memory: the block in the tile dtype (w x d), a slab of
    ``_SLAB_ELEMENTS`` and its rows' tables (slab rows x bins).
    """
    b, w = qd.shape[0], g.shape[0]
    gd = np.asarray(g, dtype=qd.dtype)
    bins = max(2, _MIN_BINS, int(w * _BINS_PER_COLUMN))
    slab = max(1, _SLAB_ELEMENTS // max(1, w))
    for r0 in range(0, b, slab):
        rows = r0 + np.flatnonzero(thr.lengths[r0:min(b, r0 + slab)])
        if not rows.size:
            continue
        whole = rows.size == rows[-1] - rows[0] + 1
        tile = matmul_t(qd[rows[0]:rows[-1] + 1] if whole else qd[rows], gd)
        if ex_rows.size:
            at = np.searchsorted(rows, ex_rows)
            hit = (at < rows.size) & (rows[np.minimum(at, rows.size - 1)] == ex_rows)
            tile[at[hit], ex_cols[hit]] = -np.inf
        table = _BinTable.build(thr, rows, eps, bins, tile.dtype)
        for s0 in range(0, rows.size, _COUNT_ROWS):
            s1 = min(rows.size, s0 + _COUNT_ROWS)
            part = tile[s0:s1]
            pos = table.positions(part, s0, s1)
            found = table.bin_of.take(pos)
            # histogram bins relative to the first of these rows (a slice of ``hist``; the sentinel after it)
            lo = thr.bin_offset[rows[s0]]
            hi = thr.bin_offset[rows[s1 - 1]] + thr.lengths[rows[s1 - 1]] + 1
            view = hist[lo:hi]
            view += np.bincount(found.ravel(), minlength=table.sentinel + 1)[:hi - lo]
            dirty = np.flatnonzero(found == table.sentinel)
            if dirty.size:
                local = s0 + dirty // w
                table.resolve(thr, view, lo, eps, local, dirty % w, pos.ravel()[dirty], part.ravel()[dirty],
                              q, g, g_lo)


@dataclass(frozen=True)
class _BinTable:
    """Per query row of a slab, its bins (see ``_count_binned_block``): the histogram bin of every bin that
    no threshold window touches (``sentinel`` for the others) and which windows touch each bin.

    Rows are the slab's rows with thresholds, counted ``_COUNT_ROWS`` at a time; histogram bins are relative
    to the first row of those (``rel_bins``). Positions are ``row * width + bin + 1`` (bin -1: below all).
    Windows are the slab's thresholds in order (``index`` maps them to ``thr``'s); a row's windows open and
    close in that order (their bounds ascend), so the windows touching a bin are consecutive: from
    ``row start + below`` to ``row start + opened - 1``.
    """

    rows: np.ndarray  # (n,) chunk rows
    rel_bins: np.ndarray  # (n,) first histogram bin of each row, relative to its group of _COUNT_ROWS rows
    sentinel: int  # above every group's bins
    scale: np.ndarray  # (n, 1) tile dtype
    shift: np.ndarray  # (n, 1) tile dtype
    bins: int
    width: int  # positions per row: bins -1 .. bins, and one spare
    bin_of: np.ndarray  # (n * width,) intp: relative histogram bin, or the sentinel
    below: np.ndarray  # (n * width,) windows of the row that end in a lower bin
    opened: np.ndarray  # (n * width,) windows of the row that start in this bin or a lower one
    row_start: np.ndarray  # (n,) first window of each row
    index: np.ndarray  # (windows,) index of each window's threshold in ``thr``
    low: np.ndarray  # (windows,) window bounds in the tile dtype
    high: np.ndarray
    apart: np.ndarray  # (windows,) bool: alone in value and in one uncrowded bin (see ``build``)

    @staticmethod
    def build(thr: "_Thresholds", rows: np.ndarray, eps: np.ndarray, bins: int, dtype: np.dtype) -> "_BinTable":
        n = rows.size
        width = bins + 3
        lengths = thr.lengths[rows]
        first = thr.offset[rows]
        row_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.intp)
        row_of = np.repeat(np.arange(n), lengths)
        index = _ranges(first, first + lengths)
        group_first = thr.bin_offset[rows[::_COUNT_ROWS]]
        rel_bins = thr.bin_offset[rows] - np.repeat(group_first, _COUNT_ROWS)[:n]
        sentinel = int((rel_bins + lengths + 1).max())
        e = eps[rows]
        lowest = thr.scores[first] - e
        highest = thr.scores[first + lengths - 1] + e
        span = highest - lowest
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            scale64 = (bins - 1) / span
            shift64 = -lowest * scale64
        # A degenerate span (zero, or so small the scale overflows) falls back to unit bins: still monotone
        # (so still exact), with every item in a window's bin. Scale > 0 and a finite shift keep NaN out.
        usable = (span > 0) & (scale64 <= _MAX_SCALE) & (np.abs(shift64) <= _MAX_SCALE)
        scale = np.where(usable, scale64, 1.0).astype(dtype)[:, None]
        shift = np.where(usable, shift64, 0.0).astype(dtype)[:, None]
        t = thr.scores[index]
        low = _round_toward(t - e[row_of], dtype, -np.inf)
        high = _round_toward(t + e[row_of], dtype, np.inf)
        base = row_of * width + 1
        a = base + _bin_index(low, scale[row_of, 0], shift[row_of, 0], bins)
        z = base + _bin_index(high, scale[row_of, 0], shift[row_of, 0], bins)
        size = n * width
        opened = np.bincount(a, minlength=size).reshape(n, width).cumsum(axis=1, dtype=np.int32)
        below = np.bincount(z + 1, minlength=size).reshape(n, width).cumsum(axis=1, dtype=np.int32)
        bin_of = below + rel_bins[:, None]
        bin_of[opened != below] = sentinel
        # "apart": no other window overlaps it, and it lies in one bin that is compared window by window,
        # so every item inside it is seen by ``resolve`` (an item in a crowded bin goes to the exact path
        # uncounted, and could be the window's positive)
        apart = (a == z) & ((opened - below).ravel()[a] <= _WINDOWS_COMPARED)
        overlap = (row_of[1:] == row_of[:-1]) & (low[1:] <= high[:-1])
        apart[1:] &= ~overlap
        apart[:-1] &= ~overlap
        return _BinTable(rows, rel_bins, sentinel, scale, shift, bins, width, bin_of.ravel(), below.ravel(),
                         opened.ravel(), row_start, index, low, high, apart)

    def positions(self, part: np.ndarray, s0: int, s1: int) -> np.ndarray:
        """(s1 - s0, w) intp: the table position of every value of slab rows s0:s1."""
        pos = _bin_index(part, self.scale[s0:s1], self.shift[s0:s1], self.bins)
        pos += (np.arange(s0, s1, dtype=np.intp) * self.width + 1)[:, None]
        return pos

    def resolve(self, thr: "_Thresholds", view: np.ndarray, view_lo: int, eps: np.ndarray, local: np.ndarray,
                cols: np.ndarray, pos: np.ndarray, values: np.ndarray, q: np.ndarray, g: np.ndarray,
                g_lo: int) -> None:
        """Add items of bins that windows touch to ``view`` (``hist[view_lo:]`` for one group of rows;
        ``local``: the items' rows in the slab, ``cols`` their columns in the block).

        An item outside the windows of its bin beats the windows below the bin and those of its bin that
        it is above; an item inside exactly one window that holds no other item, while that window's
        positive lies in this block, is that positive. The rest (inside several windows, a crowded window,
        or a bin of more than ``_WINDOWS_COMPARED`` windows) are decided exactly by ``_count_mid``.
        """
        below = self.below[pos]
        first = self.row_start[local] + below
        touching = self.opened[pos] - below
        above = self.rel_bins[local] + below
        # the common case first: one window in the bin, the item outside it
        j = first
        v = values
        above += v > self.high[j]
        inside = ((v >= self.low[j]) & (v <= self.high[j])).astype(np.intp)
        which = np.where(inside > 0, j, -1)
        for k in range(1, min(int(touching.max()), _WINDOWS_COMPARED)):
            live = np.flatnonzero(touching > k)
            j = first[live] + k
            v = values[live]
            above[live] += v > self.high[j]
            hit = (v >= self.low[j]) & (v <= self.high[j])
            inside[live] += hit
            which[live[hit]] = j[hit]
        crowded = touching > _WINDOWS_COMPARED
        sure = (inside == 0) & ~crowded
        one = np.flatnonzero(inside == 1)
        if one.size:
            m = which[one]
            per_window = np.bincount(m, minlength=self.index.size)
            idx = thr.index[self.index[m]]
            own = one[self.apart[m] & (per_window[m] == 1) & (idx >= g_lo) & (idx < g_lo + g.shape[0])
                      & ~crowded[one]]
            # the positive beats exactly the windows before its own (they lie below it: the window is apart)
            above[own] = self.rel_bins[local[own]] + which[own] - self.row_start[local[own]]
            sure[own] = True
        view += np.bincount(above[sure], minlength=view.size)[:view.size]
        rest = np.flatnonzero(~sure)
        if rest.size:
            rows = self.rows[local[rest]]
            _count_mid(thr, view, eps, rows, cols[rest], values[rest].astype(np.float64), q, g, g_lo,
                       hist_lo=view_lo)


def _bin_index(values: np.ndarray, scale: np.ndarray, shift: np.ndarray, bins: int) -> np.ndarray:
    """trunc(clip(values * scale + shift, -1, bins)) as intp: a monotone function of ``values`` (each step
    rounds monotonically), the same operations for items and for window bounds."""
    y = values * scale
    y += shift
    np.clip(y, -1, bins, out=y)
    return y.astype(np.intp)


def _round_toward(x: np.ndarray, dtype: np.dtype, direction: float) -> np.ndarray:
    """``x`` (float64) in ``dtype``, rounded toward ``direction`` (-inf or +inf) so a window only widens."""
    y = x.astype(dtype)
    if np.dtype(dtype) == np.float64:
        return y
    off = (y < x) if direction > 0 else (y > x)
    y[off] = np.nextafter(y[off], np.array(direction, dtype=dtype))
    return y


def _count_mid(thr: "_Thresholds", hist: np.ndarray, eps: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               values: np.ndarray, q: np.ndarray, g: np.ndarray, g_lo: int, hist_lo: int = 0) -> None:
    """Add to ``hist`` how many thresholds each candidate (row, column of block ``g``, GEMM value) beats
    (``hist`` holds histogram bins from ``hist_lo`` on).

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
        bins.append(_resolve_exactly(thr, rows[unsure], cols[unsure], q, g, g_lo))
    hist += np.bincount(np.concatenate(bins) - hist_lo, minlength=hist.size)


def _resolve_exactly(thr: "_Thresholds", rows: np.ndarray, cols: np.ndarray, q: np.ndarray, g: np.ndarray,
                     g_lo: int) -> np.ndarray:
    """Histogram bins of candidates a GEMM value could not place: compare canonical scores, then, on an
    exact tie, gallery indices (the item beats tied positives with a higher index)."""
    exact = canonical_scores(q, g, rows, cols)
    cols = cols + g_lo
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
    def build(b: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], best_only: bool) -> "_Thresholds":
        """From pass-1 tiles' (row, gallery index, canonical score) of a chunk of ``b`` queries."""
        if parts:
            rows = np.concatenate([p[0] for p in parts]).astype(np.int64)
            pos = np.concatenate([p[1] for p in parts]).astype(np.int64)
            scores = np.concatenate([p[2] for p in parts]).astype(np.float64)
        else:
            rows = pos = np.zeros(0, np.int64)
            scores = np.zeros(0)
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

    @property
    def n_bins(self) -> int:
        return int(self.scores.size + self.lengths.size)

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
