"""Rankability against sklearn Ridge and scipy's Spearman, on data where one direction encodes size."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge

from embedeval.scoring.bootstrap import percentile_interval, resample_indices
from embedeval.scoring.rankability import fit_ridge_axis, mean_spearman_interval, score_rankability, spearman_rows

from .conftest import make_context, make_embeddings, unit_rows


@pytest.mark.parametrize("n,d", [(80, 8), (12, 30)])
def test_ridge_axis_matches_sklearn(rng: np.random.Generator, n: int, d: int) -> None:
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.normal(size=n)
    ours = fit_ridge_axis(X, y, alpha=0.7, block_size=16)
    ref = Ridge(alpha=0.7).fit(X.astype(np.float64), y).coef_
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


def test_spearman_rows_matches_scipy_with_ties(rng: np.random.Generator) -> None:
    a = rng.integers(0, 5, size=(4, 30)).astype(float)
    b = rng.integers(0, 4, size=(4, 30)).astype(float)
    ours = spearman_rows(a, b)
    for i in range(4):
        assert ours[i] == pytest.approx(spearmanr(a[i], b[i]).statistic)
    assert np.isnan(spearman_rows(np.ones((1, 5)), np.arange(5.0)[None]))[0]


def _size_corpus(rng: np.random.Generator, n: int = 200, d: int = 16) -> tuple[pa.Table, np.ndarray]:
    size = rng.uniform(0, 1, n)
    X = rng.normal(size=(n, d)) * 0.3
    X[:, 0] += 3 * size              # one direction encodes size
    X[:, 1] += 2.0                   # keep vectors away from the origin so normalising keeps the order
    ids = [f"i{j:04d}" for j in range(n)]
    table = pa.table({"id": ids, "attr_size": size, "attr_flat": np.full(n, 2.0),
                      "split": ["train" if j % 2 else "test" for j in range(n)]})
    return table, X


def test_size_axis_orders_items(rng: np.random.Generator) -> None:
    table, X = _size_corpus(rng)
    ctx = make_context(table, fewshot_ns=[2, 10], fewshot_repeats=4, bootstrap_resamples=30)
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), X)
    rows = {(r.target, r.protocol, r.k): r for r in score_rankability(ctx, emb)}
    reg = rows[("size", "regression", None)]
    assert reg.value > 0.9 and reg.n == 100 and reg.split == "test"
    assert reg.ci_low <= reg.value <= reg.ci_high
    assert rows[("size", "fewshot", 10)].value > 0.8
    assert rows[("size", "extremes", None)].value > 0.5

    # regression value == scipy spearman of the sklearn-ridge projection on test items
    unit = unit_rows(X)
    split = np.array(table.column("split").to_pylist())
    size = table.column("attr_size").to_numpy()
    coef = Ridge(alpha=1.0).fit(unit[split == "train"], size[split == "train"]).coef_
    ref = spearmanr(unit[split == "test"] @ coef, size[split == "test"]).statistic
    assert reg.value == pytest.approx(ref, abs=1e-9)

    # a constant attribute is a counted skip, not a number
    flat = [r for (t, _, _), r in rows.items() if t == "flat"]
    assert flat and all(r.value is None and "single value" in r.note for r in flat)


def test_nan_attributes_are_excluded_and_counted(rng: np.random.Generator) -> None:
    table, X = _size_corpus(rng, n=60)
    size = table.column("attr_size").to_numpy().copy()
    size[:7] = np.nan
    table = table.set_column(table.schema.get_field_index("attr_size"), "attr_size", pa.array(size))
    ctx = make_context(table, fewshot_ns=[2], fewshot_repeats=2, bootstrap_resamples=0)
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), X)
    reg = next(r for r in score_rankability(ctx, emb) if r.target == "size" and r.protocol == "regression")
    assert "7 items with NaN size excluded" in reg.note
    assert reg.n == int(np.isfinite(size[0::2]).sum())   # even rows are the test split
    assert reg.ci_low is None


def test_no_split_column_is_a_counted_skip(rng: np.random.Generator) -> None:
    table, X = _size_corpus(rng, n=20)
    table = table.drop(["split"])
    ctx = make_context(table, fewshot_ns=[2])
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), X)
    rows = score_rankability(ctx, emb)
    assert rows and all(r.value is None and "no 'split' column" in r.note for r in rows)


def test_batched_interval_equals_one_resample_at_a_time(rng: np.random.Generator) -> None:
    proj = rng.normal(size=(3, 40))
    y = proj[0] + rng.normal(size=40)
    got = mean_spearman_interval(proj, y, 60, seed=5, confidence=0.9)
    stats = [np.mean([spearmanr(proj[f, idx], y[idx]).statistic for f in range(3)])
             for chunk in resample_indices(40, 60, 5) for idx in chunk]
    want = percentile_interval(np.asarray(stats), 0.9)
    assert got.low == pytest.approx(want.low) and got.high == pytest.approx(want.high)
