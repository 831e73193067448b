"""Distributed, deterministic k-means (Lloyd) with k-means++ or k-means|| seeding.

Each Lloyd iteration is one pass of block tasks: a task assigns its rows to the nearest centroid
(a float32 GEMM ranks the centroids; rows within its error bound of a tie are decided by the exact float64
distance) and returns its labels, per-cluster counts and per-cluster coordinate sums; the exact distances
are computed only by the passes that need them (the final one, and after a pass that left a cluster empty). The sums are fixed-point integers (the
coordinates scaled by one power of two chosen from N and max |x|, then rounded: resolution below 2^-40 of
max |x| for N up to 10^6), so merging them is exact integer addition: the centroids do not depend on how
the rows were cut into blocks or in which order tasks finished. Memory per task O(B x W + B x d + k x d).

Empty clusters: after an assignment, each empty cluster is re-seeded at a point farthest from its
assigned centroid (largest distance, ties by lower index; distinct points), and ``n_reseeded`` counts it.
Convergence: stop when the summed squared centroid shift is at most ``tol`` times the mean per-dimension
variance of X (scikit-learn's convention) or after ``iters`` iterations. The returned labels and inertia
come from a final assignment against the returned centroids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from embedeval.engine.exact import gemm_error_bound
from embedeval.engine.kernels import matmul_t
from embedeval.engine.knn import DEFAULT_BLOCK_SIZE, TILE_COLUMNS
from embedeval.engine.runner import TileRunner, default_runner
from embedeval.engine.sources import ArrayBlocks, BlockSource
from embedeval.engine.tiles import gather_rows, map_blocks_of, reduce_blocks
from embedeval.engine.validate import as_matrix, check_block_size

_CHUNK_ROWS = 65536
# k-means++ seeds from at most this many rows of a block source (a seeded sample beyond).
INIT_SAMPLE = 65536
# rows per step of an assignment pass: keeps its float64 and fixed-point temporaries cache-sized
ASSIGN_CHUNK_ROWS = 2048


@dataclass(frozen=True)
class KMeansResult:
    centroids: np.ndarray  # (k, d) float64
    labels: np.ndarray  # (N,) int64, nearest centroid (ties: lower centroid index)
    inertia: float  # sum of squared euclidean distances of points to their centroid
    n_iter: int  # Lloyd iterations run
    n_reseeded: int = 0  # empty clusters re-seeded at a farthest point, over all iterations


@dataclass(frozen=True)
class _Assignment:
    labels: np.ndarray
    min_sqdist: np.ndarray | None  # None when the pass was asked for sums only
    counts: np.ndarray | None  # (k,) int64
    sums: np.ndarray | None  # (k, d) int64 fixed point


def kmeans(X: "np.ndarray | BlockSource", k: int, *, iters: int = 50, tol: float = 1e-6, seed: int = 0,
           init: Literal["k-means++", "k-means||"] | np.ndarray = "k-means++", block_size: int = DEFAULT_BLOCK_SIZE,
           runner: TileRunner | None = None, oversampling: float | None = None, rounds: int = 5,
           init_sample: int = INIT_SAMPLE) -> KMeansResult:
    """Cluster the rows of X (N, d) into k clusters; deterministic for a seed whatever the block size.

    ``init``: "k-means++" (greedy D^2 sampling, sequential on the driver: O(N k d log k), fine up to
    N k ~ 1e9) or
    "k-means||" (Bahmani et al. 2012: ``rounds`` passes each sampling about ``oversampling`` (default
    2k) points with probability proportional to D^2, as block tasks; the candidates are weighted by how
    many points are nearest to them and reduced to k by weighted k-means++), or a (k, d) array of
    initial centroids. X is used as float32 (distances and centroids in float64). Returns float64
    centroids, int64 labels. Raises ``ValueError`` on NaN/Inf rows, k outside [1, N] or a bad ``init``.

    X may be a ``BlockSource`` (the score stage's case): every pass is then one task per block, read
    where the block is, and the driver holds O(N) labels and distances plus O(k d) state. k-means++
    then seeds from a seeded sample of ``init_sample`` rows (all rows when N is at most that), the
    only rows the driver gathers.
    """
    if isinstance(X, BlockSource):
        source, X_arr = X, None
    else:
        X_arr = as_matrix("X", X)
        source = ArrayBlocks(X_arr, check_block_size(block_size))
    n, d = source.n, source.dim
    if not 1 <= int(k) <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}); got {k}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1; got {iters}")
    k = int(k)
    block_size = check_block_size(block_size)
    runner = runner or default_runner()
    rng = np.random.default_rng(seed)
    source = runner.place(source)
    scale_exp = _fixed_point_exponent(n, reduce_blocks(_max_abs_block, source, max, 0.0, runner=runner))
    assign = _Assigner(runner, source, n, block_size, scale_exp)

    def rows(idx: np.ndarray) -> np.ndarray:
        return X_arr[idx] if X_arr is not None else gather_rows(source, idx, runner)

    if isinstance(init, np.ndarray):
        centroids = as_matrix("init", init, dtype=np.float64)
        if centroids.shape != (k, d):
            raise ValueError(f"init centroids must have shape ({k}, {d}); got {centroids.shape}")
    elif init == "k-means++":
        if X_arr is not None or n <= init_sample:
            pool = X_arr if X_arr is not None else rows(np.arange(n))
        else:
            pool = rows(np.sort(rng.choice(n, size=init_sample, replace=False)))
        centroids = pool[_kmeans_pp_indices(pool, k, rng)].astype(np.float64)
    elif init == "k-means||":
        centroids = _kmeans_parallel_init(n, rows, k, rng, assign, oversampling or 2.0 * k, rounds)
    else:
        raise ValueError(f"init must be 'k-means++', 'k-means||' or a (k, d) array; got {init!r}")

    tol_abs = tol * float(np.mean(_column_variance(source, runner)))
    n_reseeded = 0
    n_iter = 0
    for n_iter in range(1, iters + 1):
        # the distances are needed only to re-seed an empty cluster: a sums pass skips them, and the rare
        # pass that leaves a cluster empty is followed by one distance pass against the same centroids
        a = assign(centroids, with_sums=True)
        assert a.counts is not None and a.sums is not None
        new = centroids.copy()
        filled = a.counts > 0
        new[filled] = a.sums[filled] / a.counts[filled, None] / 2.0 ** scale_exp
        empty = np.flatnonzero(~filled)
        if empty.size:
            min_sqdist = assign(centroids, with_sums=False).min_sqdist
            assert min_sqdist is not None
            farthest = np.lexsort((np.arange(n), -min_sqdist))[:empty.size]
            new[empty] = rows(farthest)
            n_reseeded += empty.size
        shift = float(np.sum((new - centroids) ** 2))
        centroids = new
        if shift <= tol_abs and not empty.size:
            break
    final = assign(centroids, with_sums=False)
    assert final.min_sqdist is not None
    return KMeansResult(centroids=centroids, labels=final.labels, inertia=float(np.sum(final.min_sqdist)),
                        n_iter=n_iter, n_reseeded=n_reseeded)


def assign_to_centroids(X: "np.ndarray | BlockSource", centroids: np.ndarray, *,
                        block_size: int = DEFAULT_BLOCK_SIZE, runner: TileRunner | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, squared distances) of every row of X to the nearest of ``centroids``, exactly: one pass of
    block tasks, the same kernel and bits as :func:`kmeans`' own final assignment (ties: lower centroid
    index). For centroids fitted on a sample of X. Memory: driver O(N) labels and distances, O(k d)
    centroids; task O(chunk x (d + k))."""
    source = X if isinstance(X, BlockSource) else ArrayBlocks(as_matrix("X", X), check_block_size(block_size))
    centroids = as_matrix("centroids", centroids, dtype=np.float64)
    if centroids.ndim != 2 or centroids.shape[1] != source.dim:
        raise ValueError(f"centroids must have shape (k, {source.dim}); got {centroids.shape}")
    runner = runner or default_runner()
    source = runner.place(source)
    result = _Assigner(runner, source, source.n, check_block_size(block_size), 0)(centroids, with_sums=False)
    assert result.min_sqdist is not None
    return result.labels, result.min_sqdist


class _Assigner:
    """Runs one assignment pass of block tasks and assembles the result in row order.

    Sums passes after the first are incremental: each block task gets its rows' labels of the previous sums
    pass and returns only the changes (the fixed-point rows that moved, added to their new cluster and taken
    from their old one), which the driver adds to the previous counts and sums. Integer arithmetic, so the
    same counts and sums as summing every row again; after the first passes few rows move, and the
    fixed-point conversion and segment sums of every row were more than half of a pass.
    """

    def __init__(self, runner: TileRunner, source: BlockSource, n: int, block_size: int, scale_exp: int) -> None:
        self.runner = runner
        self.source = source
        self.n = n
        self.block_size = block_size
        self.scale_exp = scale_exp
        self._last: _Assignment | None = None  # the last sums pass: its labels, counts and sums

    def __call__(self, centroids: np.ndarray, with_sums: bool) -> _Assignment:
        k, d = centroids.shape
        labels = np.empty(self.n, dtype=np.int64)
        min_sqdist = None if with_sums else np.empty(self.n, dtype=np.float64)
        counts = sums = last = None
        if with_sums:
            last = self._last if self._last is not None and self._last.counts.size == k else None
            counts = np.zeros(k, dtype=np.int64) if last is None else last.counts.copy()
            sums = np.zeros((k, d), dtype=np.int64) if last is None else last.sums.copy()
        params = {"with_sums": with_sums, "scale_exp": self.scale_exp,
                  "tile_columns": min(self.block_size, TILE_COLUMNS)}
        params["C"] = np.ascontiguousarray(centroids, dtype=np.float64)
        previous = None if last is None else [last.labels[lo:hi] for lo, hi in
                                              zip(self.source.offsets[:-1], self.source.offsets[1:])]
        for lo, hi, part in map_blocks_of(assign_block, self.source, params=params, per_block=previous,
                                          runner=self.runner):
            labels[lo:hi] = part.labels
            if min_sqdist is not None:
                min_sqdist[lo:hi] = part.min_sqdist
            if with_sums:
                counts += part.counts  # integer addition (of sums, or of changes): exact in any order
                sums += part.sums
        result = _Assignment(labels, min_sqdist, counts, sums)
        if with_sums:
            self._last = result
        return result


def assign_block(block: np.ndarray, lo: int, previous: np.ndarray | None, *, C: np.ndarray, with_sums: bool,
                 scale_exp: int, tile_columns: int) -> _Assignment:
    """Block kernel: nearest centroid of the block's rows and either their squared distances or
    (``with_sums``) the clusters' counts and fixed-point coordinate sums; given ``previous`` (the rows'
    labels of the last sums pass), only the changes of counts and sums: rows that moved are added to their
    new cluster and subtracted from their old one.

    The rows go through in chunks of ``ASSIGN_CHUNK_ROWS`` so every temporary (the chunk's float64
    differences, its fixed-point copy, its (rows x k) ranking) stays cache-sized: a pass over a block is
    then bound by its GEMM, not by allocating and converting B x d float64 copies. Every value is per row
    or an integer sum, so the result is the same bits whatever the chunk or block size. Memory
    O(chunk x (d + k)) beyond the block.
    """
    k, d = C.shape
    b = block.shape[0]
    labels = np.empty(b, dtype=np.int64)
    min_sqdist = None if with_sums else np.empty(b, dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64) if with_sums else None
    sums = np.zeros((k, d), dtype=np.int64) if with_sums else None
    ranking = _CentroidRanking(C, tile_columns)
    scale = np.float32(2.0 ** scale_exp)
    for r0 in range(0, b, ASSIGN_CHUNK_ROWS):
        r1 = min(b, r0 + ASSIGN_CHUNK_ROWS)
        x32 = np.ascontiguousarray(block[r0:r1], dtype=np.float32)
        lab, dist = ranking.nearest(x32, distances=not with_sums)
        labels[r0:r1] = lab
        if min_sqdist is not None:
            min_sqdist[r0:r1] = dist
            continue
        assert counts is not None and sums is not None
        if previous is None:
            _add_fixed_point_sums(x32, lab, scale, counts, sums)
            continue
        moved = np.flatnonzero(lab != previous[r0:r1])
        if moved.size:
            _add_fixed_point_sums(x32[moved], lab[moved], scale, counts, sums)
            _add_fixed_point_sums(x32[moved], previous[r0:r1][moved], scale, counts, sums, sign=-1)
    return _Assignment(labels, min_sqdist, counts, sums)


def _add_fixed_point_sums(x32: np.ndarray, labels: np.ndarray, scale: np.float32, counts: np.ndarray,
                          sums: np.ndarray, sign: int = 1) -> None:
    """Add (``sign`` -1: subtract) the rows' fixed-point coordinates to their clusters' integer sums, in place.

    ``x * 2^e`` is exact in float32 (a power-of-two scale that stays in range) and rounding it to an
    integer is exact too, so this is the same integer as the float64 route, at half the memory traffic.
    """
    order = np.argsort(labels, kind="stable")
    fixed = x32[order]
    fixed *= scale
    np.rint(fixed, out=fixed)
    fixed = fixed.astype(np.int64)
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    present = sorted_labels[starts]
    sums[present] += sign * np.add.reduceat(fixed, starts, axis=0)
    counts[present] += sign * np.diff(np.r_[starts, sorted_labels.size])


class _CentroidRanking:
    """The centroids prepared once per block task: float32 copies and squared norms."""

    def __init__(self, C: np.ndarray, tile_columns: int) -> None:
        self.C = np.ascontiguousarray(C, dtype=np.float64)
        self.C32 = self.C.astype(np.float32)
        self.cc = np.einsum("ij,ij->i", self.C, self.C)
        self.cc_max_sqrt = float(np.sqrt(self.cc.max()))
        self.tile_columns = tile_columns

    def nearest(self, x32: np.ndarray, distances: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels, squared distances or None) of the float32 rows x32; see :func:`nearest_centroids`."""
        b, d = x32.shape
        k = self.C.shape[0]
        approx = np.empty((b, k))
        for c0 in range(0, k, self.tile_columns):
            c1 = min(k, c0 + self.tile_columns)
            dots = matmul_t(x32, self.C32[c0:c1])
            np.multiply(dots, -2.0, out=approx[:, c0:c1])
            approx[:, c0:c1] += self.cc[None, c0:c1]
        labels = np.argmin(approx, axis=1)
        best = approx[np.arange(b), labels]
        x_norm = np.sqrt(np.einsum("ij,ij->i", x32, x32, dtype=np.float64))
        eps = 2.0 * gemm_error_bound(d, np.float32) * x_norm * self.cc_max_sqrt
        near = approx <= (best + 2.0 * eps + 1e-300)[:, None]
        unsure = np.flatnonzero(np.count_nonzero(near, axis=1) > 1)
        if unsure.size:
            rows, cols = np.nonzero(near[unsure])
            exact = _direct_sqdist(x32[unsure[rows]], self.C[cols])
            order = np.lexsort((cols, exact, rows))
            first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
            labels[unsure[rows[first]]] = cols[first]
        labels = labels.astype(np.int64)
        return labels, (_direct_sqdist(x32, self.C[labels]) if distances else None)


def nearest_centroids(x: np.ndarray, C: np.ndarray, tile_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, squared distances) of rows x to centroids C (float64), exactly.

    A float32 GEMM ranks the centroids (|c|^2 - 2 x.c, in column tiles); a centroid within the GEMM's
    rigorous error bound of the best is a candidate, and candidates are decided by the direct distance
    sum((x - c)^2) (``_direct_sqdist``; ties: lower centroid index). Distances returned are those direct
    values, so labels and distances are the same bits whatever block a row came in. Memory
    O(b x k + b x d).
    """
    labels, sqdist = _CentroidRanking(C, tile_columns).nearest(np.ascontiguousarray(x, dtype=np.float32))
    assert sqdist is not None
    return labels, sqdist


def _direct_sqdist(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Row-wise sum((a - c)^2): differences in float64, one contiguous pairwise float64 sum per row, so
    the same bits in any batch."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(c, dtype=np.float64)
    np.square(diff, out=diff)
    return diff.sum(axis=1)


def _fixed_point_exponent(n: int, max_abs: float) -> int:
    """The largest power-of-two scale that keeps the sum of n scaled coordinates inside int64."""
    head = 62 - math.ceil(math.log2(max(n, 2))) - 1
    if max_abs > 0:
        head -= math.ceil(math.log2(max_abs))
    return int(head)


def _max_abs_block(block: np.ndarray, lo: int, _: None) -> float:
    return float(np.abs(block).max()) if block.size else 0.0


def _sum_block(block: np.ndarray, lo: int, _: None) -> np.ndarray:
    return np.asarray(block, dtype=np.float64).sum(axis=0)


def _sq_dev_block(block: np.ndarray, lo: int, _: None, *, mean: np.ndarray) -> np.ndarray:
    return ((np.asarray(block, dtype=np.float64) - mean) ** 2).sum(axis=0)


def _column_variance(source: BlockSource, runner: TileRunner) -> np.ndarray:
    """Per-dimension variance in two passes over the blocks (mean, then squared deviations)."""
    zero = np.zeros(source.dim)
    mean = reduce_blocks(_sum_block, source, np.add, zero, runner=runner) / source.n
    return reduce_blocks(_sq_dev_block, source, np.add, zero, params={"mean": mean}, runner=runner) / source.n


def _sqdist_many(X: np.ndarray, xx: np.ndarray, C: np.ndarray) -> np.ndarray:
    """(n, m) squared distances of the rows of X to the points C by the expansion (float32 GEMM, float64
    sums, clamped at 0): accurate enough to sample by, one GEMM per batch of candidates."""
    c = np.asarray(C, dtype=np.float32)
    cc = np.einsum("ij,ij->i", c.astype(np.float64), c.astype(np.float64))
    out = np.empty((X.shape[0], c.shape[0]))
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        dots = np.asarray(X[start:start + _CHUNK_ROWS], dtype=np.float32) @ c.T
        out[start:start + _CHUNK_ROWS] = xx[start:start + _CHUNK_ROWS, None] + cc[None, :] - 2.0 * dots
    return np.maximum(out, 0.0)


def _kmeans_pp_indices(X: np.ndarray, k: int, rng: np.random.Generator, weights: np.ndarray | None = None,
                       initial: np.ndarray | None = None) -> np.ndarray:
    """k row indices of X by greedy (weighted) D^2 sampling, continuing from ``initial`` if given.

    Arthur & Vassilvitskii's k-means++ with scikit-learn's greedy refinement: each step draws
    2 + ln(k) candidates with probability proportional to weight x D^2 and keeps the one that lowers
    the weighted potential most (the candidates' distances in one GEMM). O(n k d log k) time, O(n log k)
    memory. When every remaining point coincides with a chosen one (all D^2 = 0), the next is drawn
    uniformly among the points not chosen yet.
    """
    n = X.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    trials = 2 + int(np.log(k))
    X32 = np.asarray(X, dtype=np.float32)
    xx = np.einsum("ij,ij->i", X32.astype(np.float64), X32.astype(np.float64)) if n else np.zeros(0)
    if initial is not None and len(initial):
        chosen = [int(i) for i in initial]
    elif weights is None:
        chosen = [int(rng.integers(n))]
    else:
        chosen = [int(rng.choice(n, p=w / w.sum()))]
    d2 = _sqdist_many(X32, xx, X32[chosen]).min(axis=1)
    while len(chosen) < k:
        mass = np.cumsum(w * d2)
        if mass[-1] <= 0:
            free = np.setdiff1d(np.arange(n), chosen)
            nxt = int(free[rng.integers(free.size)])
            chosen.append(nxt)
            d2 = np.minimum(d2, _sqdist_many(X32, xx, X32[[nxt]])[:, 0])
            continue
        picks = np.minimum(np.searchsorted(mass, rng.random(trials) * mass[-1], side="right"), n - 1)
        cand = np.minimum(d2[:, None], _sqdist_many(X32, xx, X32[picks]))
        potentials = w @ cand
        best = int(np.argmin(potentials))  # first on ties
        chosen.append(int(picks[best]))
        d2 = cand[:, best]
    return np.asarray(chosen, dtype=np.int64)


def _kmeans_parallel_init(n: int, rows: Callable[[np.ndarray], np.ndarray], k: int, rng: np.random.Generator,
                          assign: _Assigner, oversampling: float, rounds: int) -> np.ndarray:
    """k-means|| seeding: oversample by D^2 in ``rounds`` distributed passes, then reduce to k.

    Only the candidates' rows are gathered (``rows``); the passes run where the blocks are."""
    chosen = np.array([int(rng.integers(n))], dtype=np.int64)
    d2 = assign(rows(chosen).astype(np.float64), with_sums=False).min_sqdist
    for _ in range(rounds):
        phi = float(np.sum(d2))
        if phi <= 0:
            break
        pick = np.flatnonzero(rng.random(n) < np.minimum(1.0, oversampling * d2 / phi))
        pick = pick[~np.isin(pick, chosen)]
        if pick.size == 0:
            continue
        chosen = np.concatenate([chosen, pick])
        d2 = np.minimum(d2, assign(rows(pick).astype(np.float64), with_sums=False).min_sqdist)
    if chosen.size <= k:  # too few distinct candidates: complete with D^2 sampling over all points
        X = rows(np.arange(n))
        return X[_kmeans_pp_indices(X, k, rng, initial=chosen)].astype(np.float64)
    candidates = rows(chosen).astype(np.float64)
    weights = np.bincount(assign(candidates, with_sums=False).labels, minlength=chosen.size).astype(np.float64)
    return candidates[_kmeans_pp_indices(candidates, k, rng, weights)]
