"""Distributed k-means: scikit-learn's Lloyd from the same start, the same bits for any block size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from embedeval.engine.kmeans import assign_block, kmeans
from embedeval.engine.runner import LocalRunner, TileRunner

BLOCK_SIZES = [10, 32, 97, 200]


@pytest.fixture
def blobs() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=97, centers=4, n_features=6, cluster_std=0.6, random_state=3)
    return X.astype(np.float32), y


def test_matches_sklearn_lloyd_from_the_same_start(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = blobs
    rng = np.random.default_rng(0)
    init = X[rng.choice(97, 4, replace=False)].astype(np.float64)
    ours = kmeans(X, 4, init=init, iters=100, tol=0.0, block_size=10, runner=LocalRunner())
    ref = KMeans(4, init=init, n_init=1, max_iter=100, tol=0.0, algorithm="lloyd").fit(X.astype(np.float64))
    assert np.array_equal(ours.labels, ref.labels_)
    assert np.allclose(ours.centroids, ref.cluster_centers_, atol=1e-6)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-6)


@pytest.mark.parametrize("init", ["k-means++", "k-means||"])
def test_same_bits_for_every_block_size(blobs: tuple[np.ndarray, np.ndarray], init: str) -> None:
    X, y = blobs
    results = [kmeans(X, 4, init=init, seed=5, block_size=b, runner=LocalRunner()) for b in BLOCK_SIZES]
    for r in results[1:]:
        assert np.array_equal(r.labels, results[0].labels)
        assert np.array_equal(r.centroids, results[0].centroids)
        assert r.n_iter == results[0].n_iter
    assert adjusted_rand_score(y, results[0].labels) == pytest.approx(1.0)
    other_seed = kmeans(X, 4, init=init, seed=6, block_size=32, runner=LocalRunner())
    assert adjusted_rand_score(results[0].labels, other_seed.labels) == pytest.approx(1.0)


def test_ray_and_numpy_give_identical_results(blobs: tuple[np.ndarray, np.ndarray], runner: TileRunner) -> None:
    X, _ = blobs
    for init in ("k-means++", "k-means||"):
        a = kmeans(X, 4, init=init, seed=1, block_size=13, runner=runner)
        b = kmeans(X, 4, init=init, seed=1, block_size=50, runner=LocalRunner())
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centroids, b.centroids)
        assert a.inertia == b.inertia


def test_empty_cluster_is_reseeded_at_the_farthest_point(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = blobs
    init = np.vstack([X[:3].astype(np.float64), np.full((1, 6), 1e6)])  # the last centroid attracts nobody
    res = kmeans(X, 4, init=init, block_size=32, runner=LocalRunner())
    assert res.n_reseeded >= 1
    assert np.all(np.bincount(res.labels, minlength=4) > 0)
    assert np.all(np.abs(res.centroids) < 1e3)


def test_duplicate_points_and_k_equal_n() -> None:
    X = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct points, 4 copies each
    res = kmeans(X, 3, seed=0, runner=LocalRunner())
    assert res.inertia == pytest.approx(0.0, abs=1e-12)
    assert adjusted_rand_score(np.repeat(np.arange(3), 4), res.labels) == 1.0
    assert kmeans(X, 12, runner=LocalRunner()).inertia == pytest.approx(0.0, abs=1e-12)


def test_bad_inputs_raise(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = blobs
    with pytest.raises(ValueError, match="k must be between 1 and the number of points"):
        kmeans(X, 98, runner=LocalRunner())
    with pytest.raises(ValueError, match="init"):
        kmeans(X, 3, init="random", runner=LocalRunner())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        kmeans(X, 3, init=np.zeros((2, 6)), runner=LocalRunner())
    bad = X.copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match=r"X has 1 row\(s\) with NaN"):
        kmeans(bad, 3, runner=LocalRunner())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=5), st.integers(0, 2**31 - 1))
def test_cluster_sum_states_merge_exactly_in_any_order(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    X = (rng.standard_normal((n, 5)) * 10.0 ** rng.integers(-6, 3, (n, 1))).astype(np.float32)
    C = rng.standard_normal((3, 5))
    edges = np.concatenate([[0], np.cumsum(sizes)])
    parts = [assign_block(X[int(a):int(b)], int(a), None, C=C, with_sums=True, scale_exp=30, tile_columns=2)
             for a, b in zip(edges[:-1], edges[1:])]
    whole = assign_block(X, 0, None, C=C, with_sums=True, scale_exp=30, tile_columns=2)
    for order in (range(len(parts)), rng.permutation(len(parts))):
        sums = sum(parts[i].sums for i in order)
        counts = sum(parts[i].counts for i in order)
        assert np.array_equal(sums, whole.sums) and np.array_equal(counts, whole.counts)


def test_a_fit_on_a_selection_is_the_fit_on_those_rows_and_every_row_is_then_assigned_exactly(
        blobs: tuple[np.ndarray, np.ndarray]) -> None:
    from embedeval.engine.kmeans import assign_to_centroids
    from embedeval.engine.sources import ArrayBlocks

    X, _ = blobs
    rows = np.sort(np.random.default_rng(3).choice(len(X), 40, replace=False))
    on_selection = kmeans(ArrayBlocks(X, 17).select(rows), 4, seed=2, block_size=17, runner=LocalRunner())
    on_rows = kmeans(X[rows], 4, seed=2, block_size=50, runner=LocalRunner())
    assert np.array_equal(on_selection.centroids, on_rows.centroids)
    labels, sqdist = assign_to_centroids(X, on_selection.centroids, block_size=23, runner=LocalRunner())
    brute = ((X.astype(np.float64)[:, None, :] - on_selection.centroids[None]) ** 2).sum(axis=2)
    assert np.array_equal(labels, brute.argmin(axis=1))
    np.testing.assert_allclose(sqdist, brute.min(axis=1), rtol=1e-12, atol=1e-12)
    # the rows the fit saw get the labels the fit itself gave them
    assert np.array_equal(labels[rows], on_selection.labels)
    with pytest.raises(ValueError, match="centroids must have shape"):
        assign_to_centroids(X, on_selection.centroids[:, :3], runner=LocalRunner())


@pytest.mark.parametrize("init", ["k-means++", "given"])
def test_incremental_sums_give_the_bits_of_summing_every_row(rng: np.random.Generator, init: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # After the first pass a block task returns only the rows that moved; with re-seeded empty clusters
    # (few distinct points, far-off initial centroids) too, the result is the same bits as recomputing
    # every cluster sum on every pass.
    from embedeval.engine import kmeans as km

    base = rng.standard_normal((25, 4)).astype(np.float32)
    X = base[rng.integers(0, 25, 600)] + 5 * (rng.random((600, 4)) < 0.02).astype(np.float32)
    start = rng.standard_normal((20, 4)) * 10 if init == "given" else init

    def fit() -> km.KMeansResult:
        return km.kmeans(X, 20, iters=40, seed=3, init=start, block_size=64, runner=LocalRunner())

    incremental = fit()

    class EveryRow(km._Assigner):
        def __call__(self, centroids: np.ndarray, with_sums: bool) -> km._Assignment:
            self._last = None
            return super().__call__(centroids, with_sums)

    monkeypatch.setattr(km, "_Assigner", EveryRow)
    full = fit()
    assert incremental.centroids.tobytes() == full.centroids.tobytes()
    assert np.array_equal(incremental.labels, full.labels) and incremental.inertia == full.inertia
    assert (incremental.n_iter, incremental.n_reseeded) == (full.n_iter, full.n_reseeded)
    if init == "given":
        assert full.n_reseeded > 0 and full.n_iter > 2
