"""Paired model comparison against a brute-force paired bootstrap written with plain numpy loops."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from embedeval.scoring.paired import compare_models, paired_bootstrap, paired_seed
from embedeval.scoring.per_item import PER_ITEM_SCHEMA
from embedeval.scoring.settings import ScoreSettings


def brute_force(values: np.ndarray, resamples: int, seed: int, confidence: float) -> dict[str, np.ndarray]:
    """One resample at a time: draw n indices, take every model's mean on them, compare."""
    m, n = values.shape
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, m))
    for r in range(resamples):
        idx = rng.integers(0, n, size=n)
        for i in range(m):
            means[r, i] = values[i, idx].mean()
    tail = (1 - confidence) / 2 * 100
    out = {"low": np.zeros((m, m)), "high": np.zeros((m, m)), "p": np.zeros((m, m)),
           "rank_low": np.zeros(m), "rank_high": np.zeros(m)}
    for a in range(m):
        for b in range(m):
            d = means[:, a] - means[:, b]
            out["low"][a, b], out["high"][a, b] = np.percentile(d, [tail, 100 - tail])
            out["p"][a, b] = np.mean(d > 0)
        ranks = np.array([1 + sum(means[r, j] > means[r, a] for j in range(m)) for r in range(resamples)])
        out["rank_low"][a] = np.percentile(ranks, tail, method="lower")
        out["rank_high"][a] = np.percentile(ranks, 100 - tail, method="higher")
    return out


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_paired_bootstrap_equals_brute_force(kind: str) -> None:
    rng = np.random.default_rng(7)
    n, m = 120, 4
    base = rng.normal(size=n)
    noise = rng.normal(size=(m, n))
    values = base + 0.3 * noise + np.array([0.0, 0.05, 0.3, 0.31])[:, None]
    if kind == "binary":
        values = (values > 0.2).astype(np.float64)
    res = paired_bootstrap(values, resamples=300, seed=99, confidence=0.9)
    ref = brute_force(values, 300, 99, 0.9)
    np.testing.assert_allclose(res.diff_low, ref["low"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.diff_high, ref["high"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(res.p_better, ref["p"])
    np.testing.assert_array_equal(res.rank_low, ref["rank_low"])
    np.testing.assert_array_equal(res.rank_high, ref["rank_high"])
    np.testing.assert_allclose(res.diff, values.mean(1)[:, None] - values.mean(1)[None, :], atol=1e-15)


def test_pairing_is_tighter_than_independent_intervals() -> None:
    """Two models with a shared hard/easy structure: the paired interval of their small difference
    excludes 0 while their own intervals overlap (the reason to pair)."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=200)
    values = np.vstack([base, base + 0.1 + 0.05 * rng.normal(size=200)])
    res = paired_bootstrap(values, 200, 1)
    assert res.diff_high[0, 1] < 0 and res.p_better[1, 0] == 1.0 and res.p_better[0, 1] == 0.0
    assert list(res.rank) == [2, 1]


def _per_item(model: str, items: list[str], values: np.ndarray, metric: str = "R@1") -> pa.Table:
    n = len(items)
    return pa.table({"model": [model] * n, "task": ["retrieval"] * n, "target": ["image->text"] * n,
                     "metric": [metric] * n, "k": [1] * n, "split": ["all"] * n, "protocol": ["standard"] * n,
                     "item": items, "sub": [0] * n, "value": values}, schema=PER_ITEM_SCHEMA)


def test_compare_models_uses_shared_items_and_the_identity_seed() -> None:
    rng = np.random.default_rng(5)
    items = [f"q{i:03d}" for i in range(60)]
    va, vb, vc = (rng.integers(0, 2, 60).astype(float) for _ in range(3))
    # model b lacks q000..q004 and lists its items in another order; c is of another score identity
    perm = rng.permutation(np.arange(5, 60))
    table = pa.concat_tables([_per_item("b", [items[i] for i in perm], vb[perm]), _per_item("a", items, va),
                              _per_item("c", items, vc, metric="R@5")])
    settings = ScoreSettings(bootstrap_resamples=150, seed=4, use_ray=False)
    out = compare_models(table, settings).to_pylist()
    assert {r["metric"] for r in out} == {"R@1"}          # one model alone is not compared
    pair = next(r for r in out if r["kind"] == "pair" and r["model_a"] == "a")
    assert pair["model_b"] == "b" and pair["n"] == 55
    shared = np.vstack([va[5:], vb[5:]])                  # items in sorted id order
    ref = brute_force(shared, 150, paired_seed(4, "retrieval", "image->text", "R@1", 1, "all", "standard"), 0.95)
    assert pair["diff"] == pytest.approx(va[5:].mean() - vb[5:].mean(), abs=1e-12)
    assert pair["diff_low"] == pytest.approx(ref["low"][0, 1], abs=1e-12)
    assert pair["diff_high"] == pytest.approx(ref["high"][0, 1], abs=1e-12)
    assert pair["p_a_better"] == ref["p"][0, 1]
    assert pair["separable"] == (ref["low"][0, 1] > 0 or ref["high"][0, 1] < 0)
    ranks = {r["model_a"]: r for r in out if r["kind"] == "rank"}
    assert set(ranks) == {"a", "b"} and ranks["a"]["model_b"] is None
    assert ranks["a"]["rank_low"] == ref["rank_low"][0] and ranks["b"]["rank_high"] == ref["rank_high"][1]


def test_no_resamples_gives_differences_without_intervals() -> None:
    items = [f"q{i}" for i in range(10)]
    table = pa.concat_tables([_per_item("a", items, np.ones(10)), _per_item("b", items, np.zeros(10))])
    out = compare_models(table, ScoreSettings(bootstrap_resamples=0, use_ray=False)).to_pylist()
    pair = next(r for r in out if r["kind"] == "pair" and r["model_a"] == "a")
    assert pair["diff"] == 1.0 and pair["diff_low"] is None and pair["separable"] is None
    assert compare_models(table.slice(0, 0), ScoreSettings(use_ray=False)).num_rows == 0
