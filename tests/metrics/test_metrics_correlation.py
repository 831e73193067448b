"""Spearman over all pairs: scipy on the full pair list; sampling is seeded and says so."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from embedeval.metrics.correlation import TIE_DECIMALS, spearman_all_pairs


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def pair_lists(E: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    iu = np.triu_indices(len(E), 1)
    return (E.astype(float) @ E.T.astype(float))[iu], (T.astype(float) @ T.T.astype(float))[iu]


def test_exact_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    E, T = unit(rng, 97, 16), unit(rng, 97, 8)
    T[:, 0] += E[:, 0]  # some signal
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    res = spearman_all_pairs(E, T)
    x, y = pair_lists(E, T)
    assert not res.sampled and res.n_pairs == res.n_total_pairs == 97 * 96 // 2
    assert res.rho == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-12)
    assert spearman_all_pairs(E, E).rho == pytest.approx(1.0)


def test_tied_tag_similarities_stay_tied() -> None:
    rng = np.random.default_rng(1)
    E = unit(rng, 60, 8)
    tags = rng.random((5, 12)) < 0.4
    tags[:, 0] = True
    T = tags[rng.integers(0, 5, 60)].astype(np.float32)  # only 5 distinct tag sets: massive ties in y
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    x, y = pair_lists(E, T)
    want = scipy.stats.spearmanr(np.round(x, TIE_DECIMALS), np.round(y, TIE_DECIMALS))[0]
    assert len(np.unique(np.round(y, TIE_DECIMALS))) <= 15
    assert spearman_all_pairs(E, T).rho == pytest.approx(want, abs=1e-12)


def test_sampled_when_over_the_limit() -> None:
    rng = np.random.default_rng(2)
    E, T = unit(rng, 97, 16), unit(rng, 97, 8)
    res = spearman_all_pairs(E, T, max_pairs=1000, seed=3)
    assert res.sampled and res.n_pairs == 1000 and res.n_total_pairs == 4656
    assert res == spearman_all_pairs(E, T, max_pairs=1000, seed=3)
    assert res.rho != spearman_all_pairs(E, T, max_pairs=1000, seed=4).rho
    assert abs(res.rho - spearman_all_pairs(E, T).rho) < 0.15  # a sample estimates the same quantity


def test_bad_inputs_raise() -> None:
    rng = np.random.default_rng(3)
    E, T = unit(rng, 10, 4), unit(rng, 10, 3)
    with pytest.raises(ValueError, match="max_pairs"):
        spearman_all_pairs(E, T, max_pairs=1)
    E[3] = np.nan
    with pytest.raises(ValueError, match=r"E has 1 row\(s\) with NaN"):
        spearman_all_pairs(E, T)
