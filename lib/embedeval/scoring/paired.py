"""Paired model comparison: the same bootstrap resamples for every model, so differences get intervals.

Two models scored on the same queries are not independent samples: a hard query is hard for both. The
per-score intervals of the scores table ignore that, so overlapping intervals say little about whether
A beats B. Here every model's per-item values of a score (:mod:`embedeval.scoring.per_item`) are
restricted to the items all of them have, put in one (models x n) matrix in (item, sub) order, and one
set of seeded resample indices is applied to every row. Per resample: each model's mean, each pair's
difference, each model's rank. Output (:data:`embedeval.scoring.schema.COMPARISONS_SCHEMA`): per pair
the observed difference, its percentile interval, P(A > B) over resamples and whether the interval
excludes 0 (``separable``); per model its rank and rank interval.

The seed is ``derive_seed(score.seed, "paired", task, target, metric, k, split, protocol)``: the same for
every model, and for a given item set the same draws every night. Memory on the driver: O(models x n)
values plus O(resamples x models) resampled means per score, one score at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedeval.scoring.bootstrap import derive_seed, resample_counts
from embedeval.scoring.schema import COMPARISONS_SCHEMA, params_json
from embedeval.scoring.settings import ScoreSettings

__all__ = ["PairedResult", "compare_models", "paired_bootstrap", "paired_seed", "ranks_of"]

log = logging.getLogger(__name__)


class _RepeatedItems(Exception):
    """A model's per-item values of one score list an item twice."""


_IDENTITY = ("task", "target", "metric", "k", "split", "protocol")


@dataclass(frozen=True)
class PairedResult:
    """Paired bootstrap of m models' means; matrices are indexed [a, b] for the difference a - b."""

    means: np.ndarray        # (m,)
    diff: np.ndarray         # (m, m) observed mean_a - mean_b
    diff_low: np.ndarray     # (m, m) percentile interval of the resampled differences; NaN without resamples
    diff_high: np.ndarray
    p_better: np.ndarray     # (m, m) share of resamples with mean_a > mean_b; NaN without resamples
    rank: np.ndarray         # (m,) 1 = best
    rank_low: np.ndarray     # (m,) lower-percentile rank; -1 without resamples
    rank_high: np.ndarray


def ranks_of(means: np.ndarray) -> np.ndarray:
    """Competition ranks along the last axis: 1 + how many entries are strictly larger (1 = best)."""
    means = np.asarray(means, dtype=np.float64)
    return 1 + (means[..., None, :] > means[..., :, None]).sum(axis=-1)


def paired_bootstrap(values: np.ndarray, resamples: int, seed: int, confidence: float = 0.95) -> PairedResult:
    """Resample the n columns of ``values`` (models x n) with one set of seeded indices for every model.

    The indices are :func:`embedeval.scoring.bootstrap.resample_indices` (n, resamples, seed): the same
    draws a single score's bootstrap uses with that seed. Intervals are the central ``confidence``
    percentile (linear interpolation) of the resampled differences; rank intervals the lower / higher
    percentile of the resampled ranks.
    """
    values = np.asarray(values, dtype=np.float64)
    m, n = values.shape
    means = values.mean(axis=1)
    diff = means[:, None] - means[None, :]
    nan = np.full((m, m), np.nan)
    if resamples <= 0 or n < 2:
        return PairedResult(means, diff, nan, nan.copy(), nan.copy(), ranks_of(means), np.full(m, -1), np.full(m, -1))
    boot = np.concatenate([counts @ values.T / n for counts in resample_counts(n, resamples, seed)])  # (R, m)
    tail = (1.0 - confidence) / 2.0 * 100.0
    d = boot[:, :, None] - boot[:, None, :]                                                          # (R, m, m)
    low, high = np.percentile(d, [tail, 100.0 - tail], axis=0)
    p_better = (d > 0).mean(axis=0)
    ranks = ranks_of(boot)
    rank_low = np.percentile(ranks, tail, axis=0, method="lower").astype(np.int64)
    rank_high = np.percentile(ranks, 100.0 - tail, axis=0, method="higher").astype(np.int64)
    return PairedResult(means, diff, low, high, p_better, ranks_of(means), rank_low, rank_high)


def paired_seed(seed: int, task: str, target: str, metric: str, k: int | None, split: str, protocol: str) -> int:
    """The seed of a score's paired resamples: from the run seed and the identity, never the model."""
    return derive_seed(seed, "paired", task, target, metric, k, split, protocol)


def _shared_matrix(group: pa.Table) -> tuple[list[str], np.ndarray]:
    """Models (sorted) and their (models x n) values on the items every one of them has, in (item, sub) order."""
    group = group.sort_by([("item", "ascending"), ("sub", "ascending"), ("model", "ascending")])
    key = pc.binary_join_element_wise(group.column("item"), pc.cast(group.column("sub"), pa.string()), "\x1f")
    codes = np.asarray(pc.dictionary_encode(key).combine_chunks().indices, dtype=np.int64)  # sorted-key order
    model_col = np.asarray(group.column("model").to_numpy(zero_copy_only=False), dtype=object)
    values = group.column("value").to_numpy()
    models = sorted(set(model_col.tolist()))
    per_model = {}
    for model in models:
        at = np.flatnonzero(model_col == model)
        if np.unique(codes[at]).size != at.size:
            raise _RepeatedItems(model)
        per_model[model] = (codes[at], values[at])
    shared = per_model[models[0]][0]
    for model in models[1:]:
        shared = np.intersect1d(shared, per_model[model][0], assume_unique=True)
    matrix = np.empty((len(models), shared.size))
    for i, model in enumerate(models):
        c, v = per_model[model]
        matrix[i] = v[np.searchsorted(c, shared)]   # c is ascending: rows were sorted by key
    return models, matrix


def compare_models(per_item: pa.Table, settings: ScoreSettings) -> pa.Table:
    """The comparisons table of a run's per-item values: every score with at least two models (and two
    shared items) gets pair and rank rows. Uses ``score.seed``, ``bootstrap_resamples`` and ``confidence``."""
    records: list[dict[str, object]] = []
    if per_item.num_rows == 0:
        return COMPARISONS_SCHEMA.empty_table()
    ident = pc.binary_join_element_wise(
        *[pc.fill_null(pc.cast(per_item.column(c), pa.string()), "") for c in _IDENTITY], "\x1e")
    encoded = pc.dictionary_encode(ident).combine_chunks()
    group_of = np.asarray(encoded.indices, dtype=np.int64)
    order = np.argsort(group_of, kind="stable")
    bounds = np.searchsorted(group_of[order], np.arange(len(encoded.dictionary) + 1))
    groups = [per_item.take(pa.array(order[bounds[g]:bounds[g + 1]])) for g in range(len(encoded.dictionary))]
    groups.sort(key=lambda t: tuple("" if t.column(c)[0].as_py() is None else str(t.column(c)[0].as_py())
                                    for c in _IDENTITY))
    for group in groups:
        identity = {c: group.column(c)[0].as_py() for c in _IDENTITY}
        try:
            models, matrix = _shared_matrix(group)
        except _RepeatedItems as exc:
            # two units of one model gave one score identity (e.g. corrembed on two modalities): not comparable
            log.warning("paired comparison of %s skipped: model %s has repeated items", identity, exc)
            continue
        if len(models) < 2 or matrix.shape[1] < 2:
            continue
        seed = paired_seed(settings.seed, **identity)
        res = paired_bootstrap(matrix, settings.bootstrap_resamples, seed, settings.confidence)
        params = params_json({"resamples": settings.bootstrap_resamples, "seed": settings.seed,
                              "confidence": settings.confidence})
        n = int(matrix.shape[1])
        has_ci = settings.bootstrap_resamples > 0
        for a, model_a in enumerate(models):
            records.append({**identity, "kind": "rank", "model_a": model_a, "model_b": None, "n": n,
                            "mean_a": float(res.means[a]), "rank": int(res.rank[a]),
                            "rank_low": int(res.rank_low[a]) if has_ci else None,
                            "rank_high": int(res.rank_high[a]) if has_ci else None, "params": params})
            for b, model_b in enumerate(models):
                if a == b:
                    continue
                lo, hi = float(res.diff_low[a, b]), float(res.diff_high[a, b])
                records.append({**identity, "kind": "pair", "model_a": model_a, "model_b": model_b, "n": n,
                                "mean_a": float(res.means[a]), "mean_b": float(res.means[b]),
                                "diff": float(res.diff[a, b]),
                                "diff_low": lo if has_ci else None, "diff_high": hi if has_ci else None,
                                "p_a_better": float(res.p_better[a, b]) if has_ci else None,
                                "separable": bool(lo > 0 or hi < 0) if has_ci else None, "params": params})
    return pa.Table.from_pylist(records, schema=COMPARISONS_SCHEMA)
