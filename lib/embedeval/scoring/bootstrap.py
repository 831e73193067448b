"""Seeded percentile-bootstrap intervals, shared by every task.

A score is a statistic over units (anchors, queries, test items). Resampling units with replacement and
recomputing the statistic gives its sampling spread; the 2.5% and 97.5% percentiles of those recomputed
values are the 95% interval. Everything here is driven by counts: a resample is a vector of how often each
unit was drawn, so a mean or a sum over a resample is one matrix product, and resamples are generated in
chunks so memory stays O(chunk * n) whatever the number of resamples.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

# Upper bound on chunk_rows * n_units held at once (8 bytes each -> ~2 MB).
_MAX_CELLS = 250_000


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval; both ends None when it is undefined (no resamples, or < 2 units)."""

    low: float | None
    high: float | None


NO_INTERVAL = Interval(None, None)


def percentile_interval(stats: np.ndarray, confidence: float = 0.95) -> Interval:
    """The central ``confidence`` percentile interval of bootstrap statistics; NaN resamples are ignored."""
    stats = np.asarray(stats, dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return NO_INTERVAL
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return Interval(float(lo), float(hi))


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of a (resamples, n) matrix of draw counts; each row sums to n. Deterministic in ``seed``."""
    for idx in resample_indices(n, resamples, seed):
        rows = idx.shape[0]
        # one bincount over all rows of the chunk (row r's indices offset by r * n): much faster than
        # multinomial draws, and the same resamples as resample_indices for the same seed
        flat = (idx + (np.arange(rows) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def resample_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of a (resamples, n) matrix of unit indices drawn with replacement (for rank statistics)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CELLS // max(n, 1))
    done = 0
    while done < resamples:
        rows = min(chunk, resamples - done)
        yield rng.integers(0, n, size=(rows, n))
        done += rows


def resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The mean of ``values`` in each of ``resamples`` seeded resamples (for statistics built from means)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or resamples <= 0:
        return np.zeros(0)
    return np.concatenate([counts @ values / values.size for counts in resample_counts(values.size, resamples, seed)])


def bootstrap_mean(values: np.ndarray, resamples: int, seed: int, confidence: float = 0.95) -> Interval:
    """Interval of the mean of per-unit values (per-anchor r, per-query hit, per-query AP...).

    NaN values are the caller's job to drop (and count) first: here they would poison every resample.
    """
    values = np.asarray(values, dtype=np.float64)
    if resamples <= 0 or values.size < 2:
        return NO_INTERVAL
    if not np.all(np.isfinite(values)):
        raise ValueError("bootstrap_mean got non-finite values; drop and count undefined units first")
    return percentile_interval(resampled_means(values, resamples, seed), confidence)


def bootstrap_gathered(values: np.ndarray, reduce: Callable[[np.ndarray], np.ndarray], resamples: int, seed: int,
                       confidence: float = 0.95) -> Interval:
    """Interval of a statistic that needs the resampled values themselves (a median, a rank statistic).

    ``reduce`` maps a (r, n) batch of resampled values to r statistics (e.g. ``np.median(a, axis=1)``).
    """
    values = np.asarray(values)
    if resamples <= 0 or values.shape[0] < 2:
        return NO_INTERVAL
    stats = np.concatenate([np.asarray(reduce(values[idx]), dtype=np.float64)
                            for idx in resample_indices(values.shape[0], resamples, seed)])
    return percentile_interval(stats, confidence)


def bootstrap_summed(unit_sums: np.ndarray, finalize: Callable[[np.ndarray], np.ndarray],
                     resamples: int, seed: int, confidence: float = 0.95) -> Interval:
    """Interval of a statistic computed from sums over units.

    ``unit_sums`` is (n_units, m): each unit's additive state (e.g. an anchor's six Pearson sums).
    A resample's state is the count-weighted sum of unit states; ``finalize`` maps a (r, m) batch of
    states to r statistics. This is how pearson_all gets an interval: resample anchors' per-anchor sums.
    """
    unit_sums = np.asarray(unit_sums, dtype=np.float64)
    n = unit_sums.shape[0]
    if resamples <= 0 or n < 2:
        return NO_INTERVAL
    stats = np.concatenate([np.asarray(finalize(counts @ unit_sums), dtype=np.float64)
                            for counts in resample_counts(n, resamples, seed)])
    return percentile_interval(stats, confidence)


def bootstrap_statistic(n: int, statistic: Callable[[np.ndarray], float], resamples: int, seed: int,
                        confidence: float = 0.95) -> Interval:
    """Interval of any statistic of a resample, given as an index array into the n units (slow path)."""
    if resamples <= 0 or n < 2:
        return NO_INTERVAL
    stats = [statistic(idx) for chunk in resample_indices(n, resamples, seed) for idx in chunk]
    return percentile_interval(np.asarray(stats, dtype=np.float64), confidence)


def half_sample_interval(n: int, statistic: Callable[[np.ndarray], float], value: float, resamples: int,
                         seed: int, confidence: float = 0.95,
                         bounds: tuple[float, float] = (-np.inf, np.inf)) -> Interval:
    """Interval for statistics that duplicated units bias, such as NMI, ARI and purity.

    Resampling *with* replacement puts duplicate items in the same class and cluster, which inflates
    agreement-between-partitions scores so much that the percentile interval can miss the observed
    value entirely (seen on the demo corpus: NMI 0.032, percentile interval [0.052, 0.097]). Instead:
    draw half-samples of n // 2 distinct units without replacement (for a mean, their variance equals
    the full sample's: the half-sampling identity), and centre the spread of those values on the
    observed value: [value + q_lo, value + q_hi] with q the percentiles of (stat - median(stat)),
    clipped to ``bounds``. Deterministic in ``seed``.
    """
    m = n // 2
    if resamples <= 0 or m < 2:
        return NO_INTERVAL
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(np.sort(rng.choice(n, size=m, replace=False))) for _ in range(resamples)],
                     dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return NO_INTERVAL
    spread = percentile_interval(stats - np.median(stats), confidence)
    assert spread.low is not None and spread.high is not None
    return Interval(float(np.clip(value + spread.low, *bounds)), float(np.clip(value + spread.high, *bounds)))


def seeded_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted distinct int64 indices of a seeded sample of ``size`` of range(n): the query, anchor and item
    samples a score says it ran on (the same indices for the same seed, whatever else the run does)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(size), replace=False)).astype(np.int64)


def derive_seed(seed: int, *parts: object) -> int:
    """A stable per-(task, target, metric) seed, so adding a task does not shift another task's draws."""
    h = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


# Cumulative Poisson(1) probabilities for k = 0..19 (the tail beyond is below 1e-17).
_POISSON1_CDF = np.cumsum([np.exp(-1.0) / float(np.prod(np.arange(1, k + 1))) for k in range(20)])


def poisson_weights(keys: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, len(keys)) Poisson(1) bootstrap weights, a pure function of (key, resample, seed).

    The Poisson bootstrap (Hanley & MacGibbon 2006) gives every unit an independent Poisson(1) count
    per resample instead of a multinomial draw over all units. Derived from a hash of the unit's key
    (e.g. its manifest row), the weights need no coordination: a block task computes exactly the
    weights of its own units, and the same item gets the same weight in every modality's blocks.
    Memory O(resamples x len(keys)).
    """
    keys = np.asarray(keys, dtype=np.uint64)
    r = np.arange(resamples, dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        z = keys[None, :] * np.uint64(0x9E3779B97F4A7C15) + r * np.uint64(0xD1B54A32D192ED03) \
            + np.uint64(seed & 0xFFFF_FFFF_FFFF_FFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return np.searchsorted(_POISSON1_CDF, u, side="right").astype(np.float64)
