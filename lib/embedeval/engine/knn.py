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
from embedeval.engine.runner import TileRunner, default_runner
from embedeval.engine.sums import pearson_from_sums
from embedeval.engine.topk import TopK, update_with_tile
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
    count or runner. Tiles are float32 GEMMs; the k + ``TIE_MARGIN`` best by GEMM are rescored
    canonically, and a row whose k-th score is not separated from the rest by the GEMM error bound is
    rescanned exactly. Memory per task O(B x min(B, TILE_COLUMNS) + B x d); ``runner`` defaults to
    Ray when initialised, else in-process. Raises ``ValueError`` on NaN/Inf rows, dimension mismatch or
    k < 1.
    """
    Q, G = as_query_gallery(Q, G)
    if exclude_self and Q.shape != G.shape:
        raise ValueError(f"exclude_self needs Q to be G; got shapes {Q.shape} and {G.shape}")
    exclude = np.arange(Q.shape[0], dtype=np.int64) if exclude_self else None
    top = _run_topk(Q, G, k, exclude, block_size, runner)
    return top.scores, top.indices


def _clamp_k(k: int, n_gallery: int, excluding: bool) -> int:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    return min(int(k), n_gallery - (1 if excluding else 0))


def _run_topk(Q: np.ndarray, G: np.ndarray, k: int, exclude: np.ndarray | None, block_size: int,
              runner: TileRunner | None) -> TopK:
    block_size = check_block_size(block_size)
    k_eff = _clamp_k(k, G.shape[0], exclude is not None)
    nq = Q.shape[0]
    out = TopK.empty(nq, max(k_eff, 0))
    if k_eff <= 0 or nq == 0:
        return out
    runner = runner or default_runner()
    q_shared = runner.put(Q)
    g_shared = q_shared if G is Q else runner.put(G)
    ex = np.full(nq, -1, dtype=np.int64) if exclude is None else exclude
    params = {"k": k_eff, "tile_columns": min(block_size, TILE_COLUMNS), "g_norm_max": max_row_norm(G)}
    for res in runner.map_blocks(topk_block_task, nq, block_size, [q_shared, g_shared, ex], params):
        out.scores[res.start:res.stop] = res.value.scores
        out.indices[res.start:res.stop] = res.value.indices
    return out


def topk_block_task(start: int, stop: int, Q: np.ndarray, G: np.ndarray, exclude: np.ndarray, *, k: int,
                    tile_columns: int, g_norm_max: float) -> TopK:
    """Block task: the top-k of query rows ``start:stop`` over all of G (``exclude[i]`` >= 0 is banned)."""
    return topk_rows(Q[start:stop], G, k, exclude[start:stop], tile_columns, g_norm_max)


def topk_rows(q: np.ndarray, G: np.ndarray, k: int, exclude: np.ndarray, tile_columns: int,
              g_norm_max: float) -> TopK:
    """Exact top-k (canonical order) of the rows ``q`` over G; memory O(b x tile_columns + b x d)."""
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
    return TopK(top_scores.astype(np.float32), top_idx)


def _scan_topk(q: np.ndarray, G: np.ndarray, k: int, exclude: np.ndarray, tile_columns: int) -> TopK:
    """Top-k of the rows ``q`` over G by float32 GEMM values (ties by lower index)."""
    b = q.shape[0]
    state = TopK.empty(b, k)
    tile_buf = np.empty((b, tile_columns), dtype=np.float32)
    mask_buf = np.empty((b, tile_columns), dtype=bool)
    for c0 in range(0, G.shape[0], tile_columns):
        c1 = min(G.shape[0], c0 + tile_columns)
        tile = tile_buf if c1 - c0 == tile_columns else np.empty((b, c1 - c0), dtype=np.float32)
        np.matmul(q, G[c0:c1].T, out=tile)
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
        tile = q @ G[c0:c1].T
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
        runner = runner or default_runner()
        params = {"ks": k_eff, "kmax": kmax, "tile_columns": min(block_size, TILE_COLUMNS),
                  "g_norm_max": max_row_norm(E)}
        for res in runner.map_blocks(knn_pearson_block_task, anchor_idx.size, block_size,
                                     [E, T, anchor_idx], params):
            result[res.start:res.stop] = res.value
    return {k: result[:, j].copy() for j, k in enumerate(ks)}


def knn_pearson_block_task(start: int, stop: int, E: np.ndarray, T: np.ndarray, anchors: np.ndarray, *,
                           ks: list[int], kmax: int, tile_columns: int, g_norm_max: float) -> np.ndarray:
    """Block task: (b, len(ks)) neighbourhood Pearson of anchors ``anchors[start:stop]``."""
    rows = anchors[start:stop]
    top = topk_rows(E[rows], E, kmax, rows, tile_columns, g_norm_max)
    return neighbour_pearson(E, T, rows, top.indices, ks)


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
        x -= x[:, :1]
        y -= y[:, :1]
        cums = [np.cumsum(v, axis=1) for v in (x, y, x * x, y * y, x * y)]
        for j, k in enumerate(ks):
            out[start:start + step, j] = pearson_from_sums(float(k), *(c[:, k - 1] for c in cums))
    return out
