"""NMI, ARI and purity against scikit-learn, including the degenerate labelings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from embedeval.metrics.clustering import ari, nmi, purity


def sklearn_purity(a: np.ndarray, b: np.ndarray) -> float:
    c = contingency_matrix(a, b)
    return float(c.max(axis=0).sum() / c.sum())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6)), min_size=1, max_size=60))
def test_match_sklearn(pairs: list[tuple[int, int]]) -> None:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)
    assert ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    assert purity(a, b) == pytest.approx(sklearn_purity(a, b), abs=1e-12)


@pytest.mark.parametrize("a,b", [
    ([0, 0, 0], [1, 1, 1]),  # one class, one cluster
    ([0, 1, 2], [5, 6, 7]),  # all singletons, relabelled
    ([0, 0, 1, 1], [0, 1, 2, 3]),
    ([0], [0]),
    (["cat", "dog", "cat"], [2, 2, 1]),  # any label dtype
])
def test_degenerate_cases_follow_sklearn(a: list, b: list) -> None:
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)
    assert ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_large_labelings_do_not_overflow() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, 300_000)
    b = np.where(rng.random(300_000) < 0.9, a, rng.integers(0, 3, 300_000))
    assert ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-10)
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="equal length"):
        nmi([0, 1], [0])
