"""All unordered pairs i < j of N items, tile by tile: the tiled Pearson, pair values, pair sampling.

``pearson_all_pairs_tiled`` is the brute-force-shaped twin of ``gram.pearson_all_pairs_cosine``: one task
per block of rows, each streaming the column tiles to its right (upper triangle only), float32 GEMMs,
float64 sums merged in block order. It needs no unit rows and serves as an independent check and a
throughput reference. Memory per task O(B x W + B x d).

Pairs are numbered row-major over the upper triangle: (0,1), (0,2), ..., (0,N-1), (1,2), ...
"""

from __future__ import annotations

import numpy as np

from embedeval.engine.exact import canonical_scores
from embedeval.engine.gram import PearsonResult
from embedeval.engine.knn import DEFAULT_BLOCK_SIZE, TILE_COLUMNS
from embedeval.engine.runner import TileRunner, default_runner, merge_in_block_order
from embedeval.engine.sources import ArrayBlocks, BlockSource
from embedeval.engine.tiles import QueryChunk, gather_rows, query_chunks, tile_reduce
from embedeval.engine.sums import PearsonSums
from embedeval.engine.validate import as_matrix, check_block_size, check_same_rows


def n_pairs(n: int) -> int:
    return n * (n - 1) // 2


def pearson_all_pairs_tiled(E: np.ndarray, T: np.ndarray, *, block_size: int = DEFAULT_BLOCK_SIZE,
                            runner: TileRunner | None = None) -> PearsonResult:
    """Pearson r over all pairs i < j between x_ij = e_i.e_j and y_ij = t_i.t_j, by tiles.

    E (N, dE), T (N, dT) float (used as float32 in the GEMMs; sums in float64). Same result as
    ``gram.pearson_all_pairs_cosine`` to float32 GEMM precision (~1e-6), at O(N^2 (dE + dT)) cost.
    """
    E = as_matrix("E", E)
    T = as_matrix("T", T)
    check_same_rows("E", E, "T", T)
    block_size = check_block_size(block_size)
    runner = runner or default_runner()
    params = {"tile_columns": min(block_size, TILE_COLUMNS)}
    results = runner.map_blocks(pair_sums_block_task, E.shape[0], block_size, [E, T], params)
    sums = merge_in_block_order(results, PearsonSums.merge, PearsonSums.zeros())
    return PearsonResult(r=float(sums.pearson()), n_pairs=n_pairs(E.shape[0]), sums=sums)


def pair_sums_block_task(start: int, stop: int, E: np.ndarray, T: np.ndarray, *, tile_columns: int) -> PearsonSums:
    """Block task: the six sums over pairs (i, j) with i in ``start:stop`` and j > i."""
    e = E[start:stop]
    t = T[start:stop]
    b = stop - start
    acc = np.zeros(5)
    count = 0
    for c0 in range(start, E.shape[0], tile_columns):
        c1 = min(E.shape[0], c0 + tile_columns)
        x = e @ E[c0:c1].T
        y = t @ T[c0:c1].T
        if c0 < stop:  # the tile reaches the diagonal: keep j > i only
            lower = np.arange(c0, c1)[None, :] <= np.arange(start, stop)[:, None]
            x[lower] = 0.0
            y[lower] = 0.0
            count += int(lower.size - np.count_nonzero(lower))
        else:
            count += b * (c1 - c0)
        acc += _tile_sums(x, y)
    return PearsonSums(float(count), *acc)


def _tile_sums(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sum x, sum y, sum x^2, sum y^2, sum xy of float32 tiles: per-row float32 reductions (one tile
    row is at most a tile wide), rows accumulated in float64."""
    def rows(v: np.ndarray) -> float:
        return float(v.sum(dtype=np.float64))

    return np.array([rows(x.sum(axis=1)), rows(y.sum(axis=1)), rows(np.einsum("ij,ij->i", x, x)),
                     rows(np.einsum("ij,ij->i", y, y)), rows(np.einsum("ij,ij->i", x, y))])


def pair_rows(p: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of row-major upper-triangle pair numbers ``p`` (0 <= p < N(N-1)/2) for N = ``n`` items."""
    p = np.asarray(p, dtype=np.int64)
    # Row i starts at pair number i (2n - i - 1) / 2; invert with a float sqrt, then fix off-by-one.
    b = 2 * n - 1
    i = np.floor((b - np.sqrt(float(b) * b - 8.0 * p)) / 2.0).astype(np.int64)
    i = np.clip(i, 0, n - 2)
    start = i * (2 * n - i - 1) // 2
    too_far = start > p
    i[too_far] -= 1
    nxt = (i + 1) * (2 * n - i - 2) // 2
    not_far = p >= nxt
    i[not_far] += 1
    start = i * (2 * n - i - 1) // 2
    j = p - start + i + 1
    return i, j


def sample_pairs(n: int, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """m distinct pairs i < j drawn uniformly without replacement, sorted by pair number."""
    total = n_pairs(n)
    if m > total:
        raise ValueError(f"cannot sample {m} distinct pairs from {total}")
    p = np.sort(rng.choice(total, size=m, replace=False))
    return pair_rows(p, n)


def pair_values(E: np.ndarray, T: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical float64 x = e_i.e_j and y = t_i.t_j for the given pairs. Memory O(pairs + chunk)."""
    return canonical_scores(E, E, i, j), canonical_scores(T, T, i, j)


def all_pair_values(E: np.ndarray, T: np.ndarray, block_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """x and y for every pair i < j (row-major order), float64 GEMM tiles. Memory O(N^2) by nature: the
    caller bounds N (``metrics.correlation.spearman_all_pairs`` only asks for up to ``max_pairs``)."""
    return upper_triangle_scores(E, block_size), upper_triangle_scores(T, block_size)


def upper_triangle_scores(X: np.ndarray, block_size: int = 2048) -> np.ndarray:
    """x_i . x_j for every pair i < j (row-major order), float64 GEMM tiles; memory O(N^2) by nature."""
    n = X.shape[0]
    x = np.empty(n_pairs(n))
    pos = 0
    for start in range(0, n, block_size):
        stop = min(n, start + block_size)
        xs = np.asarray(X[start:stop], dtype=np.float64) @ np.asarray(X[start:], dtype=np.float64).T
        for r in range(stop - start):
            length = n - (start + r) - 1
            x[pos:pos + length] = xs[r, r + 1:]
            pos += length
    return x


def canonical_pair_scores(source: BlockSource, i: np.ndarray, j: np.ndarray, *, runner: TileRunner | None = None
                          ) -> np.ndarray:
    """Canonical float64 inner products ``x[m] = s_i[m] . s_j[m]`` of rows of a block source.

    The same bits as ``exact.canonical_scores`` on the whole matrix. When the distinct first rows are
    few (anchors), they are gathered once and each block of second rows is one tile task; otherwise
    tasks run on (block of i, block of j) tiles that hold a pair. Memory: driver O(pairs + distinct
    first rows x d, at most ``_GATHER_FIRST_BYTES``), task O(2 blocks).
    """
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    out = np.empty(i.size, dtype=np.float64)
    if i.size == 0:
        return out
    rows_i, local_i = np.unique(i, return_inverse=True)
    if rows_i.size * source.dim * 4 <= _GATHER_FIRST_BYTES:
        # Few distinct first rows (anchors): gather them once, then one tile per block of second rows.
        queries: BlockSource = ArrayBlocks(gather_rows(source, rows_i, runner), block_rows=max(1, rows_i.size))
        first = local_i.astype(np.int64)
    else:
        queries, first = source, i
    order = np.lexsort((j, first))
    i_sorted, j_sorted = first[order], j[order]
    offsets = source.offsets
    chunk_rows = int(max(1, np.diff(queries.offsets).max()))
    q_blocks = set((np.searchsorted(queries.offsets, i_sorted, side="right") - 1).tolist())

    def chunk_pairs(chunk: QueryChunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, z = np.searchsorted(i_sorted, [chunk.lo, chunk.hi])
        return np.arange(a, z, dtype=np.int64), i_sorted[a:z] - chunk.lo, j_sorted[a:z]

    def wanted(chunk: QueryChunk) -> list[int]:
        _, _, jj = chunk_pairs(chunk)
        return sorted(set((np.searchsorted(offsets, jj, side="right") - 1).tolist()))

    def store(chunk: QueryChunk, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for at, values in parts:
            out[order[at]] = values

    chunks = [c for c in query_chunks(queries, chunk_rows) if c.block in q_blocks]
    tile_reduce(pair_scores_tile, queries, source, init=lambda c: [], merge=lambda acc, part: acc + [part],
                on_chunk=store, chunk_rows=chunk_rows, chunk_arg=chunk_pairs, wanted=wanted, chunks=chunks,
                runner=runner)
    return out


# Distinct first rows gathered up front (rather than read block by block) up to this many bytes.
_GATHER_FIRST_BYTES = 256 * 1024 * 1024


def pair_scores_tile(q: np.ndarray, q_lo: int, g: np.ndarray, g_lo: int,
                     arg: tuple[np.ndarray, np.ndarray, np.ndarray], _: None) -> tuple[np.ndarray, np.ndarray]:
    """Tile kernel: canonical scores of the chunk's pairs whose second row lies in this gallery block."""
    at, local_i, jj = arg
    inside = (jj >= g_lo) & (jj < g_lo + g.shape[0])
    return at[inside], canonical_scores(q, g, local_i[inside], jj[inside] - g_lo)
