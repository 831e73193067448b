"""Pair enumeration and sampling; the tiled all-pairs Pearson agrees with the Gram shortcut."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from embedeval.engine.gram import pearson_all_pairs_cosine
from embedeval.engine.pairs import all_pair_values, n_pairs, pair_rows, pearson_all_pairs_tiled, sample_pairs
from embedeval.engine.runner import LocalRunner, TileRunner


@pytest.mark.parametrize("n", [2, 3, 10, 97])
def test_pair_rows_enumerates_the_upper_triangle(n: int) -> None:
    i, j = pair_rows(np.arange(n_pairs(n)), n)
    want_i, want_j = np.triu_indices(n, 1)
    assert np.array_equal(i, want_i) and np.array_equal(j, want_j)


def test_pair_rows_at_catalogue_scale() -> None:
    n = 3_000_001
    p = np.random.default_rng(0).integers(0, n_pairs(n), 100_000)
    p = np.concatenate([p, [0, n_pairs(n) - 1, n - 2, n - 1]])
    i, j = pair_rows(p, n)
    assert np.all((0 <= i) & (i < j) & (j < n))
    assert np.array_equal(i * (2 * n - i - 1) // 2 + (j - i - 1), p)


def test_sample_pairs_is_seeded_distinct_and_uniform() -> None:
    i, j = sample_pairs(50, 1000, np.random.default_rng(1))
    i2, j2 = sample_pairs(50, 1000, np.random.default_rng(1))
    assert np.array_equal(i, i2) and np.array_equal(j, j2)
    assert len(set(zip(i.tolist(), j.tolist()))) == 1000 and np.all(i < j)
    # Uniform over pairs: row 0 owns 49 of the 1225 pairs.
    assert abs(np.mean(i == 0) - 49 / 1225) < 0.03
    with pytest.raises(ValueError):
        sample_pairs(5, 11, np.random.default_rng(0))


@pytest.mark.parametrize("block_size", [10, 32, 97, 200])
def test_tiled_pearson_matches_gram(rng: np.random.Generator, unit: Callable[..., np.ndarray], block_size: int) -> None:
    E, T = unit(rng, 97, 16), unit(rng, 97, 8, sparse=True)
    tiled = pearson_all_pairs_tiled(E, T, block_size=block_size, runner=LocalRunner())
    gram = pearson_all_pairs_cosine(E, T)
    assert tiled.n_pairs == gram.n_pairs and tiled.sums.n == gram.sums.n
    assert tiled.r == pytest.approx(gram.r, abs=1e-6)


def test_tiled_pearson_ray_equals_single_thread_numpy(rng: np.random.Generator, unit: Callable[..., np.ndarray],
                                                      runner: TileRunner) -> None:
    E, T = unit(rng, 97, 16), unit(rng, 97, 8, sparse=True)
    got = pearson_all_pairs_tiled(E, T, block_size=16, runner=runner)
    want = pearson_all_pairs_tiled(E, T, block_size=16, runner=LocalRunner(blas_threads=1))
    assert got.sums == want.sums  # same GEMM bits with one BLAS thread per task, merged in block order


def test_all_pair_values_order(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    E, T = unit(rng, 23, 5), unit(rng, 23, 4)
    x, y = all_pair_values(E, T, block_size=4)
    iu = np.triu_indices(23, 1)
    assert np.allclose(x, (E.astype(float) @ E.T.astype(float))[iu], atol=1e-12)
    assert np.allclose(y, (T.astype(float) @ T.T.astype(float))[iu], atol=1e-12)
