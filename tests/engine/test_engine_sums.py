"""The Pearson state: equals scipy, and merges to the same r in any order or grouping."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from embedeval.engine.sums import PearsonSums, pearson_from_sums


def test_from_values_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(500)
    y = 0.3 * x + rng.standard_normal(500)
    assert PearsonSums.from_values(x, y).pearson() == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 200), st.lists(st.integers(0, 200), max_size=8), st.integers(0, 2**31 - 1))
def test_merge_any_order_and_grouping_gives_same_r(n: int, cuts: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) + rng.uniform(-5, 5)
    y = 0.5 * x + rng.standard_normal(n)
    edges = sorted({0, n, *[c % (n + 1) for c in cuts]})
    parts = [PearsonSums.from_values(x[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    rng.shuffle(parts)
    left = PearsonSums.zeros()
    for p in parts:  # left fold
        left = left.merge(p)
    while len(parts) > 1:  # pairwise tree in shuffled order
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    whole = PearsonSums.from_values(x, y)
    assert left.n == whole.n == parts[0].n == n
    assert left.pearson() == pytest.approx(whole.pearson(), abs=1e-10, nan_ok=True)
    assert parts[0].pearson() == pytest.approx(whole.pearson(), abs=1e-10, nan_ok=True)


def test_undefined_correlation_is_nan_not_a_number() -> None:
    x = np.full(10, 0.1)
    assert np.isnan(PearsonSums.from_values(x, np.arange(10.0)).pearson())  # constant x
    assert np.isnan(PearsonSums.from_values(np.array([1.0]), np.array([2.0])).pearson())  # n < 2
    assert np.isnan(pearson_from_sums(0, 0, 0, 0, 0, 0))


def test_array_states_are_per_anchor() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 30))
    y = x + rng.standard_normal((5, 30))
    s = PearsonSums.from_values(x, y, axis=1)
    want = [scipy.stats.pearsonr(x[i], y[i])[0] for i in range(5)]
    assert np.allclose(s.pearson(), want, atol=1e-12)
    assert s.take(np.array([0, 0])).total().n == 60
