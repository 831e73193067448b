"""Canonical scores have the same bits in any batch; GEMM values stay within the stated bound."""

from __future__ import annotations

import numpy as np

from embedeval.engine.exact import canonical_scores, canonical_scores_grid, gemm_error_bound, max_row_norm


def test_canonical_scores_do_not_depend_on_the_batch() -> None:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((300, 77)).astype(np.float32)
    B = rng.standard_normal((200, 77)).astype(np.float32)
    a_rows = rng.integers(0, 300, 1000)
    b_rows = rng.integers(0, 200, 1000)
    whole = canonical_scores(A, B, a_rows, b_rows)
    pieces = np.concatenate([canonical_scores(A, B, a_rows[s:s + 37], b_rows[s:s + 37]) for s in range(0, 1000, 37)])
    assert np.array_equal(whole, pieces)
    grid = canonical_scores_grid(A[a_rows[:100]], B, b_rows[:500].reshape(100, 5))
    flat = canonical_scores(A, B, np.repeat(a_rows[:100], 5), b_rows[:500])
    assert np.array_equal(grid.ravel(), flat)
    assert np.allclose(whole, np.einsum("ij,ij->i", A[a_rows].astype(np.float64), B[b_rows].astype(np.float64)))


def test_gemm_error_bound_holds() -> None:
    rng = np.random.default_rng(1)
    d = 512
    Q = rng.standard_normal((64, d)).astype(np.float32)
    G = rng.standard_normal((300, d)).astype(np.float32)
    gemm = (Q @ G.T).astype(np.float64)
    qi, gi = np.meshgrid(np.arange(64), np.arange(300), indexing="ij")
    canon = canonical_scores(Q, G, qi.ravel(), gi.ravel()).reshape(64, 300)
    norms = np.linalg.norm(Q.astype(np.float64), axis=1)[:, None] * max_row_norm(G)
    assert np.all(np.abs(gemm - canon) <= gemm_error_bound(d, np.float32) * norms)


def test_max_row_norm_is_a_tight_upper_bound(rng: np.random.Generator) -> None:
    # float32 sums of squares, inflated by their error bound: never below the exact largest norm.
    for scale in (1.0, 1e-3, 37.0):
        X = (rng.standard_normal((20_000, 512)) * scale).astype(np.float32)
        X[123] *= 3.0
        exact = float(np.sqrt(np.max(np.sum(X.astype(np.float64) ** 2, axis=1))))
        bound = max_row_norm(X, chunk_rows=4096)
        assert exact <= bound <= exact * (1 + 1e-4)
        X64 = X.astype(np.float64)
        assert exact <= max_row_norm(X64) <= exact * (1 + 1e-12)
