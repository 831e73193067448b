"""Exact top-k against faiss and brute force; neighbourhood Pearson against scipy."""

from __future__ import annotations

from typing import Callable

import faiss
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from embedeval.engine.exact import canonical_scores
from embedeval.engine.knn import (exact_topk, per_anchor_knn_pearson, per_anchor_random_pearson,
                                  sample_others)
from embedeval.engine.runner import LocalRunner, TileRunner
from embedeval.engine.topk import TopK, merge_topk, update_with_tile

BLOCK_SIZES = [10, 32, 97, 200]


def canonical_matrix(Q: np.ndarray, G: np.ndarray) -> np.ndarray:
    qi, gi = np.meshgrid(np.arange(len(Q)), np.arange(len(G)), indexing="ij")
    return canonical_scores(Q, G, qi.ravel(), gi.ravel()).reshape(len(Q), len(G))


def brute_topk(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k per row: score descending, then lower index first."""
    idx = np.broadcast_to(np.arange(S.shape[1]), S.shape)
    order = np.lexsort((idx, -S), axis=1)[:, :k]
    return np.take_along_axis(S, order, axis=1), order


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_topk_matches_faiss(rng: np.random.Generator, unit: Callable[..., np.ndarray], block_size: int) -> None:
    Q, G = unit(rng, 41, 24), unit(rng, 97, 24)
    index = faiss.IndexFlatIP(24)
    index.add(G)
    want_s, want_i = index.search(Q, 7)
    got_s, got_i = exact_topk(Q, G, 7, block_size=block_size, runner=LocalRunner())
    assert got_s.dtype == np.float32 and got_i.dtype == np.int64
    assert np.array_equal(got_i, want_i)
    assert np.allclose(got_s, want_s, atol=1e-6)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_self_search_excludes_self(rng: np.random.Generator, unit: Callable[..., np.ndarray], block_size: int) -> None:
    X = unit(rng, 97, 16)
    index = faiss.IndexFlatIP(16)
    index.add(X)
    _, want = index.search(X, 6)
    assert np.array_equal(want[:, 0], np.arange(97))  # faiss finds self first: drop it
    got_s, got_i = exact_topk(X, X, 5, exclude_self=True, block_size=block_size, runner=LocalRunner())
    assert np.array_equal(got_i, want[:, 1:])
    assert not np.any(got_i == np.arange(97)[:, None])


def test_ray_and_numpy_paths_give_identical_bits(rng: np.random.Generator, unit: Callable[..., np.ndarray],
                                                 runner: TileRunner) -> None:
    X = unit(rng, 97, 32)
    base_s, base_i = exact_topk(X, X, 9, exclude_self=True, block_size=32, runner=LocalRunner())
    for block_size in BLOCK_SIZES:
        s, i = exact_topk(X, X, 9, exclude_self=True, block_size=block_size, runner=runner)
        assert np.array_equal(s, base_s) and np.array_equal(i, base_i)


def test_ties_go_to_the_lower_index(rng: np.random.Generator) -> None:
    base = rng.standard_normal((6, 8)).astype(np.float32)
    G = base[rng.integers(0, 6, 97)]  # many exact duplicates: scores tie exactly
    Q = rng.standard_normal((13, 8)).astype(np.float32)
    want_s, want_i = brute_topk(canonical_matrix(Q, G), 20)
    for block_size in BLOCK_SIZES:
        s, i = exact_topk(Q, G, 20, block_size=block_size, runner=LocalRunner())
        assert np.array_equal(i, want_i)
        assert np.array_equal(s, want_s.astype(np.float32))
    # Within a tied group the indices ascend.
    tied = s[:, 1:] == s[:, :-1]
    assert np.all(i[:, 1:][tied] > i[:, :-1][tied])


def test_near_ties_are_resolved_exactly() -> None:
    # Gallery items differing by one float32 ulp: GEMM rounding cannot be trusted to order them.
    rng = np.random.default_rng(5)
    g = rng.standard_normal(64).astype(np.float32)
    G = np.stack([np.nextafter(g, np.float32(np.inf) * (j % 2 * 2 - 1)) if j % 3 else g for j in range(60)])
    Q = rng.standard_normal((5, 64)).astype(np.float32)
    _, want = brute_topk(canonical_matrix(Q, G), 12)
    for block_size in (7, 60):
        assert np.array_equal(exact_topk(Q, G, 12, block_size=block_size, runner=LocalRunner())[1], want)


def test_k_larger_than_gallery_is_clamped(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    X = unit(rng, 7, 4)
    s, i = exact_topk(X, X, 50, runner=LocalRunner())
    assert s.shape == (7, 7)
    s, i = exact_topk(X, X, 50, exclude_self=True, runner=LocalRunner())
    assert i.shape == (7, 6) and np.all(np.sort(i, axis=1) == np.array([np.delete(np.arange(7), r) for r in range(7)]))
    s, i = exact_topk(X[:1], X[:1], 3, exclude_self=True, runner=LocalRunner())
    assert s.shape == (1, 0)


def test_bad_inputs_raise(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    Q, G = unit(rng, 5, 4), unit(rng, 9, 4)
    with pytest.raises(ValueError, match="Q has 4 columns but G has 3"):
        exact_topk(Q, G[:, :3], 2, runner=LocalRunner())
    bad = G.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"G has 1 row\(s\) with NaN or Inf"):
        exact_topk(Q, bad, 2, runner=LocalRunner())
    with pytest.raises(ValueError, match="k must be >= 1"):
        exact_topk(Q, G, 0, runner=LocalRunner())
    with pytest.raises(ValueError, match="exclude_self"):
        exact_topk(Q, G, 2, exclude_self=True, runner=LocalRunner())
    with pytest.raises(ValueError, match="2-D"):
        exact_topk(Q[0], G, 2, runner=LocalRunner())


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.lists(st.integers(1, 40), min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_topk_states_merge_in_any_order(k: int, sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    S = rng.integers(0, 5, (3, n)).astype(np.float32)  # small integers: plenty of ties
    edges = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for a, b in zip(edges[:-1], edges[1:]):
        part = TopK.empty(3, k)
        update_with_tile(part, S[:, a:b], int(a))
        parts.append(part)
    want_s, want_i = brute_topk(S, min(k, n))
    for order in (list(range(len(parts))), list(rng.permutation(len(parts)))):
        merged = TopK.empty(3, k)
        for j in order:
            merged = merge_topk(merged, parts[j])
        assert np.array_equal(merged.indices[:, :min(k, n)], want_i)
        assert np.array_equal(merged.scores[:, :min(k, n)], want_s)


def test_tile_update_survives_adversarial_column_order() -> None:
    S = np.tile(np.arange(5000, dtype=np.float32), (4, 1))  # every tile beats the whole heap
    state = TopK.empty(4, 3)
    for c0 in range(0, 5000, 1000):
        update_with_tile(state, S[:, c0:c0 + 1000], c0)
    assert np.array_equal(state.indices, np.tile([4999, 4998, 4997], (4, 1)))


def brute_knn_pearson(E: np.ndarray, T: np.ndarray, k: int, anchors: np.ndarray) -> np.ndarray:
    X = canonical_matrix(E, E)
    Y = canonical_matrix(T, T)
    np.fill_diagonal(X, -np.inf)
    _, nbrs = brute_topk(X, k)
    np.fill_diagonal(X, 1.0)
    return np.array([scipy.stats.pearsonr(X[a, nbrs[a]], Y[a, nbrs[a]])[0] for a in anchors])


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_knn_pearson_matches_scipy(rng: np.random.Generator, unit: Callable[..., np.ndarray], block_size: int) -> None:
    E, T = unit(rng, 97, 16), unit(rng, 97, 8, sparse=True)
    got = per_anchor_knn_pearson(E, T, [5, 20], block_size=block_size, runner=LocalRunner())
    for k in (5, 20):
        assert np.allclose(got[k], brute_knn_pearson(E, T, k, np.arange(97)), atol=1e-10)


def test_knn_pearson_runners_anchors_and_clamping(rng: np.random.Generator, unit: Callable[..., np.ndarray],
                                                  runner: TileRunner) -> None:
    E, T = unit(rng, 40, 8), unit(rng, 40, 6, sparse=True)
    anchors = np.array([3, 0, 39, 3])
    got = per_anchor_knn_pearson(E, T, [4, 500], anchors=anchors, block_size=3, runner=runner)
    local = per_anchor_knn_pearson(E, T, [4, 500], anchors=anchors, block_size=16, runner=LocalRunner())
    assert set(got) == {4, 500}
    for k in got:
        assert np.array_equal(got[k], local[k])
    assert np.allclose(got[4], brute_knn_pearson(E, T, 4, anchors), atol=1e-10)
    assert np.allclose(got[500], brute_knn_pearson(E, T, 39, anchors), atol=1e-10)  # clamped to N - 1


def test_knn_pearson_nan_when_neighbourhood_tags_are_constant(rng: np.random.Generator,
                                                              unit: Callable[..., np.ndarray]) -> None:
    E = unit(rng, 30, 8)
    T = np.tile(unit(rng, 1, 5), (30, 1))
    assert np.isnan(per_anchor_knn_pearson(E, T, [5], runner=LocalRunner())[5]).all()


def test_random_control_is_seeded_and_excludes_the_anchor(rng: np.random.Generator,
                                                          unit: Callable[..., np.ndarray]) -> None:
    E, T = unit(rng, 50, 8), unit(rng, 50, 6, sparse=True)
    a = per_anchor_random_pearson(E, T, 10, seed=7)
    assert np.array_equal(a, per_anchor_random_pearson(E, T, 10, seed=7))
    assert not np.array_equal(a, per_anchor_random_pearson(E, T, 10, seed=8))
    others = sample_others(50, np.arange(50), 10, np.random.default_rng(7))
    assert np.all(others != np.arange(50)[:, None])
    assert all(len(set(row)) == 10 for row in others)
    X, Y = canonical_matrix(E, E), canonical_matrix(T, T)
    want = [scipy.stats.pearsonr(X[i, others[i]], Y[i, others[i]])[0] for i in range(50)]
    assert np.allclose(a, want, atol=1e-10)
    full = per_anchor_random_pearson(E, T, 1000, seed=1)  # clamped to all 49 others
    assert np.allclose(full, [scipy.stats.pearsonr(np.delete(X[i], i), np.delete(Y[i], i))[0] for i in range(50)])


def test_sample_others_handles_k_close_to_n() -> None:
    others = sample_others(6, np.arange(6), 5, np.random.default_rng(0))
    assert all(sorted(row) == [j for j in range(6) if j != i] for i, row in enumerate(others))
