"""Gram-shortcut Pearson: equal to scipy on every pair / every anchor's row of a full matrix."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import scipy.stats

from embedeval.engine.gram import pearson_all_pairs_cosine, pearson_from_sums, per_anchor_sums_cosine


def brute(E: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    E64 = E.astype(np.float64)
    T64 = T.astype(np.float64)
    return E64 @ E64.T, T64 @ T64.T


@pytest.mark.parametrize("n", [2, 3, 97])
def test_all_pairs_matches_scipy(rng: np.random.Generator, unit: Callable[..., np.ndarray], n: int) -> None:
    E, T = unit(rng, n, 16), unit(rng, n, 8, sparse=True)
    X, Y = brute(E, T)
    iu = np.triu_indices(n, 1)
    res = pearson_all_pairs_cosine(E, T)
    assert res.n_pairs == n * (n - 1) // 2
    if n == 2:
        assert np.isnan(res.r)  # one pair: r undefined
    else:
        assert res.r == pytest.approx(scipy.stats.pearsonr(X[iu], Y[iu])[0], abs=1e-10)
        assert res.sums.sxy == pytest.approx(np.sum(X[iu] * Y[iu]), rel=1e-12)


def test_identical_similarities_give_r_one(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    E = unit(rng, 50, 12)
    assert pearson_all_pairs_cosine(E, E).r == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(per_anchor_sums_cosine(E, E).pearson(), 1.0, atol=1e-10)


def test_constant_tag_similarity_is_nan(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    E = unit(rng, 20, 6)
    T = np.tile(unit(rng, 1, 4), (20, 1))  # every item has the same tags: y constant
    assert np.isnan(pearson_all_pairs_cosine(E, T).r)
    assert np.isnan(per_anchor_sums_cosine(E, T).pearson()).all()


def test_per_anchor_matches_scipy_rows(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    E, T = unit(rng, 97, 16), unit(rng, 97, 8, sparse=True)
    X, Y = brute(E, T)
    sums = per_anchor_sums_cosine(E, T)
    want = [scipy.stats.pearsonr(np.delete(X[i], i), np.delete(Y[i], i))[0] for i in range(97)]
    assert np.allclose(sums.pearson(), want, atol=1e-10)
    assert np.all(sums.n == 96)
    assert np.allclose(sums.sx, X.sum(axis=1) - np.diag(X), atol=1e-10)


def test_anchor_subset_and_bootstrap_totals(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    E, T = unit(rng, 60, 10), unit(rng, 60, 5, sparse=True)
    full = per_anchor_sums_cosine(E, T)
    anchors = np.array([5, 5, 0, 59])
    sub = per_anchor_sums_cosine(E, T, anchors)
    assert np.allclose(sub.pearson(), full.pearson()[anchors], atol=1e-12)
    # Over all anchors each pair counts twice: the same r as the all-pairs Pearson.
    assert full.total().pearson() == pytest.approx(pearson_all_pairs_cosine(E, T).r, abs=1e-12)
    # An anchor bootstrap adds the sums of resampled anchors.
    select = np.random.default_rng(3).integers(0, 60, 60)
    manual = pearson_from_sums(*(np.sum(getattr(full, f)[select]) for f in ("n", "sx", "sy", "sxx", "syy", "sxy")))
    assert full.total(select).pearson() == pytest.approx(manual, abs=1e-12)


def test_bad_inputs_raise_clear_errors(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    E, T = unit(rng, 10, 4), unit(rng, 10, 3)
    bad = E.copy()
    bad[[2, 7], 0] = np.nan
    with pytest.raises(ValueError, match=r"E has 2 row\(s\) with NaN or Inf.*first at row 2"):
        pearson_all_pairs_cosine(bad, T)
    bad[2, 0] = np.inf
    with pytest.raises(ValueError, match="2 row"):
        per_anchor_sums_cosine(bad, T)
    with pytest.raises(ValueError, match="not unit length"):
        pearson_all_pairs_cosine(E * 2, T)
    zero = T.copy()
    zero[4] = 0.0
    with pytest.raises(ValueError, match="T has 1 row.*not unit length"):
        pearson_all_pairs_cosine(E, zero)
    with pytest.raises(ValueError, match="rows"):
        pearson_all_pairs_cosine(E, T[:9])
    with pytest.raises(ValueError, match="anchors"):
        per_anchor_sums_cosine(E, T, np.array([10]))
