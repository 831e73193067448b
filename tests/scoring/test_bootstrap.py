"""Bootstrap intervals: seeded, sensible coverage, and the sums path equals the mean path."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedeval.scoring.bootstrap import (bootstrap_gathered, bootstrap_mean, bootstrap_statistic, bootstrap_summed, derive_seed,
                                         resample_counts)


def test_mean_interval_is_seeded_and_covers_the_mean(rng: np.random.Generator) -> None:
    x = rng.normal(3.0, 1.0, size=400)
    a = bootstrap_mean(x, 300, seed=7)
    b = bootstrap_mean(x, 300, seed=7)
    assert a == b
    assert a.low < x.mean() < a.high
    # about +-1.96 standard errors
    se = x.std() / np.sqrt(x.size)
    assert a.high - a.low == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_summed_equals_statistic_on_indices(rng: np.random.Generator) -> None:
    x = rng.normal(size=50)
    by_sums = bootstrap_summed(np.c_[x, np.ones_like(x)], lambda s: s[:, 0] / s[:, 1], 100, seed=3)
    by_mean = bootstrap_mean(x, 100, seed=3)
    assert by_sums.low == pytest.approx(by_mean.low) and by_sums.high == pytest.approx(by_mean.high)


def test_counts_chunks_sum_to_n() -> None:
    chunks = list(resample_counts(10, 7, seed=0))
    counts = np.vstack(chunks)
    assert counts.shape == (7, 10) and np.all(counts.sum(axis=1) == 10)


def test_degenerate_inputs_give_no_interval() -> None:
    assert bootstrap_mean(np.array([1.0]), 100, 0).low is None
    assert bootstrap_mean(np.arange(5.0), 0, 0).low is None
    assert bootstrap_statistic(1, lambda idx: 0.0, 10, 0).high is None
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_mean(np.array([1.0, np.nan]), 10, 0)


def test_derive_seed_is_stable_and_distinct() -> None:
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", 1)
    assert derive_seed(0, "a", 1) != derive_seed(0, "a", 2)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=60), st.integers(0, 2**32 - 1))
def test_counts_and_indices_draw_the_same_resamples(values: list[float], seed: int) -> None:
    """The fast (counts) and general (indices) paths must see identical resamples for a seed."""
    x = np.asarray(values)
    by_counts = bootstrap_mean(x, 30, seed)
    by_indices = bootstrap_gathered(x, lambda a: a.mean(axis=1), 30, seed)
    assert by_counts.low == pytest.approx(by_indices.low, abs=1e-9)
    assert by_counts.high == pytest.approx(by_indices.high, abs=1e-9)


def test_half_sample_interval_contains_value_and_has_sampling_width() -> None:
    """For NMI of weakly related partitions: the interval holds the estimate and is about as wide as the
    spread of NMI over independent datasets of the same size (with-replacement bootstrap fails both)."""
    from embedeval.metrics.clustering import nmi
    from embedeval.scoring.bootstrap import half_sample_interval

    def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 8, n)
        clusters = np.where(rng.random(n) < 0.3, labels, rng.integers(0, 8, n))
        return labels, clusters

    rng = np.random.default_rng(0)
    n = 400
    spread = np.std([nmi(*draw(rng, n)) for _ in range(200)])
    labels, clusters = draw(rng, n)
    value = nmi(labels, clusters)
    ci = half_sample_interval(n, lambda idx: nmi(labels[idx], clusters[idx]), value, 200, seed=1,
                              bounds=(0.0, 1.0))
    assert ci.low <= value <= ci.high
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * spread, rel=0.4)
    replaced = bootstrap_statistic(n, lambda idx: nmi(labels[idx], clusters[idx]), 200, seed=1)
    # the reason half-samples are used: duplicates inflate NMI, so the with-replacement interval sits high
    assert (replaced.low + replaced.high) / 2 > value + 0.015
