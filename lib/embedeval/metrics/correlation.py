"""Correlation over all item pairs: Spearman, exact when it fits, else over a stated sample.

(The all-pairs and per-anchor Pearson are exact at any N via ``engine.gram``.) Spearman needs the ranks
of all N(N-1)/2 pair similarities, which cannot be merged from tiles; so it is exact up to ``max_pairs``
pairs (the pair values are held in memory: about 40 bytes per pair) and otherwise computed on a seeded
uniform sample of ``max_pairs`` distinct pairs. The result says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from embedeval.engine.pairs import all_pair_values, n_pairs, pair_values, sample_pairs
from embedeval.engine.sums import PearsonSums
from embedeval.engine.validate import as_unit_pair

DEFAULT_MAX_PAIRS = 10_000_000
# Pair similarities are snapped to this grid before ranking so that equal similarities (e.g. items with
# identical tag sets) stay tied despite float64 rounding in their computation.
TIE_DECIMALS = 12


@dataclass(frozen=True)
class SpearmanResult:
    rho: float  # NaN when undefined (a similarity constant over the pairs used)
    n_pairs: int  # pairs the value is computed over
    sampled: bool  # True: a seeded uniform sample of pairs; False: all pairs
    n_total_pairs: int  # N (N - 1) / 2


def spearman_all_pairs(E: np.ndarray, T: np.ndarray, *, max_pairs: int | None = None,
                       seed: int = 0) -> SpearmanResult:
    """Spearman rho between x_ij = e_i.e_j and y_ij = t_i.t_j over pairs i < j (ties: average ranks).

    E (N, dE) and T (N, dT) with unit rows (cosine). Exact over all pairs when N(N-1)/2 <= max_pairs
    (default ``DEFAULT_MAX_PAIRS``), else over ``max_pairs`` distinct pairs drawn uniformly without
    replacement with ``numpy.random.default_rng(seed)``. Memory O(min(N^2, max_pairs)).
    """
    E, T = as_unit_pair(E, T)
    limit = DEFAULT_MAX_PAIRS if max_pairs is None else int(max_pairs)
    if limit < 2:
        raise ValueError(f"max_pairs must be >= 2; got {max_pairs}")
    total = n_pairs(E.shape[0])
    sampled = total > limit
    if sampled:
        i, j = sample_pairs(E.shape[0], limit, np.random.default_rng(seed))
        x, y = pair_values(E, T, i, j)
    else:
        x, y = all_pair_values(E, T)
    rho = spearman(x, y)
    return SpearmanResult(rho=rho, n_pairs=int(x.size), sampled=sampled, n_total_pairs=total)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho of paired samples: Pearson of average ranks, after snapping to ``TIE_DECIMALS``."""
    rx = rankdata(np.round(x, TIE_DECIMALS))
    ry = rankdata(np.round(y, TIE_DECIMALS))
    return float(PearsonSums.from_values(rx - rx.mean(), ry - ry.mean()).pearson())
