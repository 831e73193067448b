"""Exact blockwise k-nearest neighbours by inner product, and the per-anchor neighbourhood Pearson.

One task per block of query rows; it streams the gallery in column tiles (one float32 GEMM each) and
keeps a (rows x k) heap (``engine.topk``), then rescores its winners canonically (``engine.exact``).
Memory per task O(B x W + B x d + B x k), W = min(B, ``TILE_COLUMNS``) the tile width, whatever the
gallery size. Ordering is canonical score descending, then gallery index ascending, so results are
deterministic and the same bits on every runner, block size and thread count.
"""

from __future__ import annotations

import numpy as np

from embedeval.engine.exact import (canonical_scores, canonical_scores_grid, gemm_error_bound, max_row_norm,
                                   row_norms)
from embedeval.engine.kernels import matmul_t
from embedeval.engine.runner import TileRunner
from embedeval.engine.sources import ArrayBlocks, BlockSource
from embedeval.engine.sums import pearson_from_sums
from embedeval.engine.tiles import QueryChunk, tile_reduce
from embedeval.engine.topk import EMPTY, TopK, merge_topk, update_with_tile
from embedeval.engine.validate import as_query_gallery, as_row_indices, as_unit_pair, check_block_size

DEFAULT_BLOCK_SIZE = 4096
# Gallery columns per tile inside a task: with 2048-4096 query rows, a 1024-wide float32 tile runs the
# GEMM at full speed while the compare-and-select pass over it stays cache-friendly (measured on 2 cores:
# wider tiles were slower, narrower ones no faster).
TILE_COLUMNS = 1024
# Extra heap slots kept by GEMM value, then rescored canonically: room for near-ties at the k-th place.
TIE_MARGIN = 8
_GATHER_ELEMENTS = 1 << 22  # anchors x neighbours x d gathered at once (32 MiB of float64)


def exact_topk(Q: np.ndarray, G: np.ndarray, k: int, *, exclude_self: bool = False,
               block_size: int = DEFAULT_BLOCK_SIZE, runner: TileRunner | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """The k gallery rows with the largest inner product for every query row, exactly.

    Inputs: Q (nq, d), G (ng, d) float (used as float32; normalise rows yourself for cosine).
    ``exclude_self``: Q is G and row i may not be its own neighbour (Q and G must have equal shapes).
    k larger than the gallery (less the query itself) is clamped to it, so the output may have fewer
    than k columns. Outputs: scores (nq, k) float32 (canonical scores rounded to float32) and
    indices (nq, k) int64, best first.

    Order: canonical score (the float64 inner product of the input rows, ``engine.exact``) descending,
    equal scores by lower gallery index, so the result is the same bits for any block size, thread
    count or runner. Runs on the 2-D tile driver (``topk_search``). Raises ``ValueError`` on NaN/Inf
    rows, dimension mismatch or k < 1.
    """
    Q, G = as_query_gallery(Q, G)
    if exclude_self and Q.shape != G.shape:
        raise ValueError(f"exclude_self needs Q to be G; got shapes {Q.shape} and {G.shape}")
    block_size = check_block_size(block_size)
    exclude = np.arange(Q.shape[0], dtype=np.int64) if exclude_self else None
    q_src = ArrayBlocks(Q, gallery_block_rows(block_size))
    g_src = q_src if G is Q else ArrayBlocks(G, gallery_block_rows(block_size))
    top = topk_search(q_src, g_src, k, exclude=exclude, chunk_rows=block_size, runner=runner)
    return top.scores.astype(np.float32), top.indices


def gallery_block_rows(block_size: int) -> int:
    """Rows per gallery block when an in-memory matrix is cut for the tile driver."""
    return 4 * check_block_size(block_size)


def _clamp_k(k: int, n_gallery: int, excluding: bool) -> int:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    return min(int(k), n_gallery - (1 if excluding else 0))


def topk_search(queries: BlockSource, gallery: BlockSource, k: int, *, exclude: np.ndarray | None = None,
                chunk_rows: int = DEFAULT_BLOCK_SIZE, runner: TileRunner | None = None) -> TopK:
    """Exact top-k of every query row over the gallery, on (query chunk x gallery block) tiles.

    ``exclude[i]`` (>= 0) is a gallery row query i may not return (itself, in a self-search). Scores in
    the result are canonical float64 (``engine.exact``); order score descending, then gallery index.
    Each tile returns the exact top-k of its gallery block; per-chunk states merge exactly
    (``topk.merge_topk``), so the result does not depend on block sizes, tile order or runner.
    Memory: driver O(nq x k); task O(chunk x d + block x d + chunk x TILE_COLUMNS).
    """
    nq = queries.n
    if exclude is not None and np.asarray(exclude).shape != (nq,):
        raise ValueError(f"exclude must have one entry per query ({nq})")
    k_eff = _clamp_k(k, gallery.n, exclude is not None)
    out = TopK(np.full((nq, max(k_eff, 0)), -np.inf), np.full((nq, max(k_eff, 0)), EMPTY, dtype=np.int64))
    if k_eff <= 0 or nq == 0:
        return out
    ex = None if exclude is None else np.asarray(exclude, dtype=np.int64)

    def store(chunk: QueryChunk, state: TopK) -> None:
        out.scores[chunk.lo:chunk.hi] = state.scores
        out.indices[chunk.lo:chunk.hi] = state.indices

    tile_reduce(topk_tile, queries, gallery, init=lambda c: TopK.empty_exact(c.hi - c.lo, k_eff),
                merge=merge_topk, on_chunk=store, chunk_rows=chunk_rows,
                params={"k": k_eff, "tile_columns": min(chunk_rows, TILE_COLUMNS)},
                chunk_arg=None if ex is None else (lambda c: ex[c.lo:c.hi]), runner=runner)
    return out


def topk_tile(q: np.ndarray, q_lo: int, g: np.ndarray, g_lo: int, exclude: np.ndarray | None, _: None, *, k: int,
              tile_columns: int) -> TopK:
    """Tile kernel: the exact top-k (canonical float64 scores, global indices) of ``q`` over block ``g``."""
    b, w = q.shape[0], g.shape[0]
    local = np.full(b, -1, dtype=np.int64)
    if exclude is not None:
        inside = (exclude >= g_lo) & (exclude < g_lo + w)
        local[inside] = exclude[inside] - g_lo
    available = w - (local >= 0)
    if int(available.min()) <= k + TIE_MARGIN:
        # A small block: score every pair canonically (also where k exceeds what the block holds).
        grid = np.broadcast_to(np.arange(w, dtype=np.int64), (b, w))
        canon = canonical_scores_grid(q, g, grid)
        rows = np.flatnonzero(local >= 0)
        canon[rows, local[rows]] = -np.inf
        order = np.lexsort((grid, -canon), axis=1)[:, :k]
        scores = np.take_along_axis(canon, order, axis=1)
        idx = np.where(np.isfinite(scores), order + g_lo, EMPTY)
        if scores.shape[1] < k:
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=EMPTY)
        return TopK(scores, idx)
    top = topk_rows(q, g, k, local, tile_columns, max_row_norm(g))
    return TopK(top.scores, top.indices + g_lo)


def topk_rows(q: np.ndarray, G: np.ndarray, k: int, exclude: np.ndarray, tile_columns: int,
              g_norm_max: float) -> TopK:
    """Exact top-k (canonical order, float64 canonical scores) of the rows ``q`` over G.

    Memory O(b x tile_columns + b x d)."""
    available = G.shape[0] - (exclude >= 0)
    k_heap = int(min(k + TIE_MARGIN, available.min()))
    approx = _scan_topk(q, G, k_heap, exclude, tile_columns)
    eps = gemm_error_bound(q.shape[1], np.float32) * row_norms(q) * g_norm_max
    top_scores = np.empty((q.shape[0], k))
    top_idx = np.empty((q.shape[0], k), dtype=np.int64)
    # The top-k *set* by GEMM value is certain when the k-th GEMM value clears the next one by 2 eps
    # (or nothing is left out); only its order then needs canonical scores.
    if k_heap > k:
        clear = approx.scores[:, k - 1] - approx.scores[:, k] > 2.0 * eps
    else:
        clear = k_heap >= available
    for rows, width in ((np.flatnonzero(clear), k), (np.flatnonzero(~clear), k_heap)):
        if rows.size:
            idx = approx.indices[rows, :width]
            canon = canonical_scores_grid(q[rows], G, idx)
            order = np.lexsort((idx, -canon), axis=1)[:, :k]
            top_idx[rows] = np.take_along_axis(idx, order, axis=1)
            top_scores[rows] = np.take_along_axis(canon, order, axis=1)
    # Items left out of the heap score at most the heap's last GEMM value, hence at most that + eps
    # canonically: the canonical k-th best is certain when it clears that by more than eps.
    certain = clear | (k_heap >= available) | (top_scores[:, -1] - eps > approx.scores[:, -1])
    unsure = np.flatnonzero(~certain)
    if unsure.size:
        floor = top_scores[unsure, -1] - eps[unsure]
        top_scores[unsure], top_idx[unsure] = _rescan_exact(q[unsure], G, k, exclude[unsure], floor, tile_columns)
    return TopK(top_scores, top_idx)


def _scan_topk(q: np.ndarray, G: np.ndarray, k: int, exclude: np.ndarray, tile_columns: int) -> TopK:
    """Top-k of the rows ``q`` over G by float32 GEMM values (ties by lower index)."""
    b = q.shape[0]
    state = TopK.empty(b, k)
    tile_buf = np.empty((b, tile_columns), dtype=np.float32)
    mask_buf = np.empty((b, tile_columns), dtype=bool)
    for c0 in range(0, G.shape[0], tile_columns):
        c1 = min(G.shape[0], c0 + tile_columns)
        tile = tile_buf if c1 - c0 == tile_columns else np.empty((b, c1 - c0), dtype=np.float32)
        matmul_t(q, G[c0:c1], out=tile)
        _ban_excluded(tile, exclude, c0, c1)
        update_with_tile(state, tile, c0, mask_buf)
    return state


def _ban_excluded(tile: np.ndarray, exclude: np.ndarray, c0: int, c1: int) -> None:
    rows = np.flatnonzero((exclude >= c0) & (exclude < c1))
    tile[rows, exclude[rows] - c0] = -np.inf


def _rescan_exact(q: np.ndarray, G: np.ndarray, k: int, exclude: np.ndarray, floor: np.ndarray,
                  tile_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a few rows (near-ties around their k-th score): every item whose GEMM value is
    at least ``floor`` (a lower bound of the k-th canonical score, less eps) is rescored canonically."""
    rows_found: list[np.ndarray] = []
    cols_found: list[np.ndarray] = []
    for c0 in range(0, G.shape[0], tile_columns):
        c1 = min(G.shape[0], c0 + tile_columns)
        tile = matmul_t(q, G[c0:c1])
        _ban_excluded(tile, exclude, c0, c1)
        r, c = np.nonzero(tile >= floor[:, None])
        rows_found.append(r)
        cols_found.append(c + c0)
    rows = np.concatenate(rows_found)
    cols = np.concatenate(cols_found)
    canon = canonical_scores(q, G, rows, cols)
    order = np.lexsort((cols, -canon, rows))
    rows, cols, canon = rows[order], cols[order], canon[order]
    first = np.searchsorted(rows, np.arange(q.shape[0]))
    take = first[:, None] + np.arange(k)[None, :]
    return canon[take], cols[take]


def per_anchor_knn_pearson(E: np.ndarray, T: np.ndarray, ks: list[int], *, anchors: np.ndarray | None = None,
                           block_size: int = DEFAULT_BLOCK_SIZE, runner: TileRunner | None = None
                           ) -> dict[int, np.ndarray]:
    """Per anchor i: Pearson over its k nearest neighbours j (by e_i.e_j, j != i) between x_ij = e_i.e_j
    and y_ij = t_i.t_j, for every k in ``ks`` (design section 7, ``corr_knn``).

    One top-k pass with max(ks) serves all ks. E (N, dE), T (N, dT) with unit rows; ``anchors`` row
    indices (default all). k > N - 1 is clamped to N - 1 (the dict keeps the requested k as its key).
    x and y are canonical float64 inner products. Returns {k: (A,) float64}, NaN where r is undefined
    (x or y constant over the neighbourhood, e.g. no neighbour shares a tag). Memory per task
    O(B x min(B, TILE_COLUMNS) + B x d) plus a bounded gather buffer.
    """
    E, T = as_unit_pair(E, T, e_dtype=np.float32)
    anchor_idx = as_row_indices("anchors", anchors, E.shape[0])
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks must name at least one k")
    kmax = _clamp_k(max(ks), E.shape[0], excluding=True)
    k_eff = [min(_clamp_k(k, E.shape[0], excluding=True), kmax) for k in ks]
    result = np.full((anchor_idx.size, len(ks)), np.nan)
    if kmax >= 1 and anchor_idx.size:
        block_size = check_block_size(block_size)
        top = topk_search(ArrayBlocks(E[anchor_idx], block_size), ArrayBlocks(E, gallery_block_rows(block_size)),
                          kmax, exclude=anchor_idx, chunk_rows=block_size, runner=runner)
        y = np.empty(top.indices.shape)
        step = max(1, _GATHER_ELEMENTS // max(1, kmax * T.shape[1]))
        for s in range(0, anchor_idx.size, step):
            nbr = top.indices[s:s + step]
            y[s:s + step] = canonical_scores(T, T, np.repeat(anchor_idx[s:s + step], kmax),
                                             nbr.ravel()).reshape(nbr.shape)
        result = pearson_over_prefixes(top.scores, y, k_eff)
    return {k: result[:, j].copy() for j, k in enumerate(ks)}


def pearson_over_prefixes(x: np.ndarray, y: np.ndarray, ks: list[int]) -> np.ndarray:
    """(A, len(ks)): per row, Pearson of x[:, :k] and y[:, :k] for each k (float64).

    Values are shifted by the first column's before summing (Pearson is shift invariant), which keeps
    the one-pass sums well conditioned.
    """
    x = np.asarray(x, dtype=np.float64) - np.asarray(x, dtype=np.float64)[:, :1]
    y = np.asarray(y, dtype=np.float64) - np.asarray(y, dtype=np.float64)[:, :1]
    cums = [np.cumsum(v, axis=1) for v in (x, y, x * x, y * y, x * y)]
    out = np.empty((x.shape[0], len(ks)))
    for j, k in enumerate(ks):
        out[:, j] = pearson_from_sums(float(k), *(c[:, k - 1] for c in cums))
    return out


def per_anchor_random_pearson(E: np.ndarray, T: np.ndarray, k: int, seed: int, *,
                              anchors: np.ndarray | None = None) -> np.ndarray:
    """The control for ``per_anchor_knn_pearson``: per anchor, Pearson over k random other items.

    The k items are drawn uniformly without replacement from the N - 1 others with
    ``numpy.random.default_rng(seed)``, so a seed gives the same draw on every run. k > N - 1 is
    clamped. Returns (A,) float64, NaN where undefined. Memory O(A x k + gather buffer).
    """
    E, T = as_unit_pair(E, T, e_dtype=np.float32)
    anchor_idx = as_row_indices("anchors", anchors, E.shape[0])
    k_eff = _clamp_k(k, E.shape[0], excluding=True)
    if k_eff < 1 or anchor_idx.size == 0:
        return np.full(anchor_idx.size, np.nan)
    others = sample_others(E.shape[0], anchor_idx, k_eff, np.random.default_rng(seed))
    return neighbour_pearson(E, T, anchor_idx, others, [k_eff])[:, 0]


def sample_others(n: int, anchors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(A, k) int64: per anchor, k distinct row indices from range(n) other than the anchor itself."""
    draws = rng.integers(0, n - 1, size=(anchors.size, k))
    draws += draws >= anchors[:, None]  # skip the anchor: map [0, n-1) onto range(n) minus anchor
    srt = np.sort(draws, axis=1)
    repeated = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1)) if k > 1 else np.zeros(0, np.int64)
    for i in repeated:  # rare when k << n; redraw that anchor without replacement
        pick = rng.choice(n - 1, size=k, replace=False)
        draws[i] = pick + (pick >= anchors[i])
    return draws


def neighbour_pearson(E: np.ndarray, T: np.ndarray, anchors: np.ndarray, neighbours: np.ndarray,
                      ks: list[int]) -> np.ndarray:
    """(A, len(ks)): per anchor, Pearson of (e_a.e_j, t_a.t_j) over its first k ``neighbours`` columns.

    Values are shifted by the first neighbour's before summing (Pearson is shift invariant), which keeps
    the one-pass sums well conditioned. Gathers at most ``_GATHER_ELEMENTS`` values at a time.
    """
    a_count, m = neighbours.shape
    out = np.empty((a_count, len(ks)))
    step = max(1, _GATHER_ELEMENTS // max(1, m * max(E.shape[1], T.shape[1])))
    for start in range(0, a_count, step):
        anc = anchors[start:start + step]
        nbr = neighbours[start:start + step]
        a_rows = np.repeat(anc, m)
        x = canonical_scores(E, E, a_rows, nbr.ravel()).reshape(nbr.shape)
        y = canonical_scores(T, T, a_rows, nbr.ravel()).reshape(nbr.shape)
        out[start:start + step] = pearson_over_prefixes(x, y, ks)
    return out
