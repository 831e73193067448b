"""Canonical float64 inner products and the error bound of a float32/float64 GEMM against them.

Ranks and ties are defined on *canonical scores*: the float64 inner product of the (float32 or float64)
input rows, computed here row by row, so a pair's score has the same bits whatever batch, tile or runner
computed it. Tiles use fast GEMMs whose error against the canonical score is below ``gemm_error_bound``;
anything a GEMM value cannot decide within that band is recomputed here. This is what makes ranks
independent of the block size and of Ray vs numpy.
"""

from __future__ import annotations

import numpy as np

from embedeval.engine.kernels import unit_roundoff

_CHUNK_ELEMENTS = 1 << 18  # rows x d per chunk: 2 MiB of float64, so products are summed while in cache


def canonical_scores(A: np.ndarray, B: np.ndarray, a_rows: np.ndarray, b_rows: np.ndarray) -> np.ndarray:
    """float64 inner products ``A[a_rows[m]] . B[b_rows[m]]`` for each m (same bits in any batch).

    Memory O(chunk x d); ``a_rows`` and ``b_rows`` are equal-length integer arrays.
    """
    a_rows = np.asarray(a_rows, dtype=np.int64)
    b_rows = np.asarray(b_rows, dtype=np.int64)
    out = np.empty(a_rows.size, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(1, A.shape[1]))
    for start in range(0, a_rows.size, step):
        part = slice(start, start + step)
        out[part] = _row_dots(np.asarray(A[a_rows[part]], dtype=np.float64),
                              np.asarray(B[b_rows[part]], dtype=np.float64))
    return out


def canonical_scores_grid(a: np.ndarray, B: np.ndarray, b_rows: np.ndarray) -> np.ndarray:
    """(n, m) float64: ``a[i] . B[b_rows[i, j]]``, the same bits as ``canonical_scores`` for each pair.

    ``a`` (n, d) holds the query rows themselves (not indices). Memory O(chunk x d).
    """
    n, m = b_rows.shape
    out = np.empty((n, m), dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(1, m * a.shape[1]))
    for start in range(0, n, step):
        part = slice(start, start + step)
        rows = np.asarray(a[part], dtype=np.float64)[:, None, :]
        out[part] = _row_dots(rows, np.asarray(B[b_rows[part]], dtype=np.float64))
    return out


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum over the last axis of a * b (float64, b overwritten when shapes match). Each output is one
    contiguous length-d pairwise sum, whatever the leading shape: this is what fixes the bits."""
    prod = np.multiply(a, b, out=b) if b.shape == np.broadcast_shapes(a.shape, b.shape) else a * b
    return prod.sum(axis=-1)


def gemm_error_bound(d: int, dtype: np.dtype | type) -> float:
    """A rigorous bound, per unit of |a| |b|, on |GEMM score - canonical score| for dimension ``d``.

    Standard dot-product bound gamma_d = d u / (1 - d u) for the GEMM (u = 2^-24 in float32, 2^-53 in
    float64, any summation order) plus the same for the canonical float64 sum, with a 2x margin.
    """
    u = unit_roundoff(dtype)  # float32, float64, or TF32 when the CUDA backend allows it
    u64 = 2.0 ** -53
    m = d + 2

    def gamma(unit: float) -> float:
        return m * unit / (1.0 - m * unit)

    return 2.0 * (gamma(u) + gamma(u64))


def max_row_norm(X: np.ndarray, chunk_rows: int = 8192) -> float:
    """An upper bound on the largest L2 row norm of X, within a relative ``2 gamma_d`` of it.

    Only error bounds use it (``eps = gemm_error_bound * |a| * max |b|``), so it needs to be an upper
    bound, not exact: the squared norms are summed in float32 (a pass over the block where it lies,
    instead of a float64 copy of it), and every term being positive, the float32 sum is at most
    ``gamma_d`` below the exact one; the bound inflates it by twice that. Streams over row chunks.
    """
    dtype = np.float64 if X.dtype == np.float64 else np.float32  # float32 rows are summed as they are
    best = 0.0
    for start in range(0, X.shape[0], chunk_rows):
        x = np.asarray(X[start:start + chunk_rows], dtype=dtype)
        if x.size:
            best = max(best, float(np.einsum("ij,ij->i", x, x).max()))
    m = X.shape[1] + 2
    u = 2.0 ** -24 if dtype == np.float32 else 2.0 ** -53
    gamma = m * u / (1.0 - m * u)
    return float(np.sqrt(best * (1.0 + 2.0 * gamma)))


def row_norms(X: np.ndarray) -> np.ndarray:
    """float64 L2 norms of the rows of X."""
    x = np.asarray(X, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", x, x))
