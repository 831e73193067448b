"""Rankability against sklearn Ridge, scipy's Spearman and brute-force pair counts, on data where one direction
encodes size."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import kendalltau, spearmanr
from sklearn.linear_model import Ridge

from embedeval.io.prompts import prompt_means
from embedeval.scoring.bootstrap import percentile_interval, resample_indices
from embedeval.scoring.rankability import (fit_ridge_axis, kendall_intervals, kendall_rows, mean_spearman_interval,
                                           score_rankability, spearman_rows)

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
    rows = {(r.target, r.protocol, r.k): r for r in score_rankability(ctx, emb) if r.metric == "spearman"}
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
    reg = next(r for r in score_rankability(ctx, emb) if r.target == "size" and r.protocol == "regression"
               and r.metric == "spearman")
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


def _brute_tau_b_and_accuracy(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """O(n^2) pair counts: tau-b = (C - D) / sqrt((n0 - n_x)(n0 - n_y)); accuracy over pairs with y distinct."""
    i, j = np.triu_indices(x.size, 1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    c, d = np.sum(sx * sy > 0), np.sum(sx * sy < 0)
    n0 = i.size
    tau = (c - d) / np.sqrt((n0 - np.sum(sx == 0)) * (n0 - np.sum(sy == 0)))
    distinct = sy != 0
    acc = (np.sum(sx[distinct] == sy[distinct]) + 0.5 * np.sum(sx[distinct] == 0)) / distinct.sum()
    return float(tau), float(acc)


def test_kendall_rows_match_brute_force_and_scipy_with_ties(rng: np.random.Generator) -> None:
    a = rng.integers(0, 6, size=(4, 45)).astype(float)
    a[3] = rng.normal(size=45)
    y = rng.integers(0, 5, size=45).astype(float)
    tau, acc = kendall_rows(a, y)
    for r in range(4):
        want_tau, want_acc = _brute_tau_b_and_accuracy(a[r], y)
        assert abs(tau[r] - want_tau) < 1e-9 and abs(acc[r] - want_acc) < 1e-9
        assert abs(tau[r] - kendalltau(a[r], y, variant="b").statistic) < 1e-12
    const_tau, const_acc = kendall_rows(np.ones((1, 45)), y)
    assert np.isnan(const_tau[0]) and const_acc[0] == 0.5            # every pair a projection tie: 1/2
    assert np.isnan(kendall_rows(a, np.ones(45))[1]).all()            # no pair with distinct attributes


def test_kendall_rows_pair_count_path_gives_scipy_s_bits(rng: np.random.Generator,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Small n counts pairs directly (no scipy call per row); the values are scipy's to the bit, ties and
    constant rows included, the same as the per-row scipy path that large n takes."""
    import embedeval.scoring.rankability as rankability

    a = rng.integers(0, 4, size=(6, 60)).astype(float)
    a[1], a[2] = rng.normal(size=60), 3.0                                # no ties; a constant row
    y = rng.integers(0, 5, size=60).astype(float)
    tau, acc = kendall_rows(a, y)
    assert np.isnan(tau[2]) and acc[2] == 0.5
    for r in (0, 1, 3, 4, 5):
        assert tau[r] == kendalltau(a[r], y, variant="b").statistic
    monkeypatch.setattr(rankability, "_PAIRWISE_MAX_N", 0)             # the per-row scipy path
    scipy_tau, scipy_acc = kendall_rows(a, y)
    np.testing.assert_array_equal(tau, scipy_tau)
    np.testing.assert_array_equal(acc, scipy_acc)


def test_kendall_interval_equals_brute_force_resamples(rng: np.random.Generator) -> None:
    proj = rng.normal(size=(2, 30))
    y = proj[0] + rng.normal(size=30)
    ci_tau, ci_acc = kendall_intervals(proj, y, 25, seed=3, confidence=0.9)
    draws = np.random.default_rng(3)
    stats = []
    for _ in range(25):
        idx = draws.integers(0, 30, size=30)
        pairs = [_brute_tau_b_and_accuracy(proj[f, idx], y[idx]) for f in range(2)]
        stats.append(np.mean(pairs, axis=0))
    stats = np.asarray(stats)
    for j, got in enumerate((ci_tau, ci_acc)):
        want = percentile_interval(stats[:, j], 0.9)
        assert abs(got.low - want.low) < 1e-9 and abs(got.high - want.high) < 1e-9


@pytest.mark.parametrize("m", [None, 25])
def test_kendall_interval_from_pair_signs_is_the_per_resample_loop_to_the_bit(
        rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, m: int | None) -> None:
    # ties in the fits and in y, a constant fit, and resamples small enough that some have y constant
    proj = rng.integers(0, 3, size=(4, 40)).astype(float)
    proj[1], proj[3] = rng.normal(size=40), 2.0
    y = rng.integers(0, 2, size=40).astype(float)
    y[:30] = 0.0
    fast = kendall_intervals(proj, y, 60, seed=5, confidence=0.9, max_units=m)
    monkeypatch.setattr("embedeval.scoring.rankability._PAIRWISE_MAX_N", 0)  # one kendall_rows (scipy) per resample
    loop = kendall_intervals(proj, y, 60, seed=5, confidence=0.9, max_units=m)
    assert fast == loop and fast[0].low is not None


def test_m_out_of_n_kendall_interval_is_the_same_with_the_callers_full_sample_rows(
        rng: np.random.Generator) -> None:
    proj = rng.normal(size=(3, 60))
    y = proj[0] + rng.normal(size=60)
    own = kendall_intervals(proj, y, 20, seed=4, confidence=0.9, max_units=20)
    given = kendall_intervals(proj, y, 20, seed=4, confidence=0.9, max_units=20, full_rows=kendall_rows(proj, y))
    assert own == given and own[0].low is not None and own[0].low < own[0].high
    # and the rows given are the ones used: the interval is full + sqrt(m/n) (resampled - full), so a full
    # value 0.1 higher moves it by 0.1 (1 - sqrt(m/n))
    tau, acc = kendall_rows(proj, y)
    shifted = kendall_intervals(proj, y, 20, seed=4, confidence=0.9, max_units=20, full_rows=(tau + 0.1, acc))
    assert shifted[0].low == pytest.approx(own[0].low + 0.1 * (1 - np.sqrt(20 / 60))) and shifted[1] == own[1]


def test_every_fit_reports_tau_and_pairwise_accuracy(rng: np.random.Generator) -> None:
    table, X = _size_corpus(rng, n=80)
    ctx = make_context(table, fewshot_ns=[5], fewshot_repeats=3, bootstrap_resamples=10)
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), X)
    rows = [r for r in score_rankability(ctx, emb) if r.target == "size"]
    fits = {(r.protocol, r.k) for r in rows}
    assert fits == {("regression", None), ("extremes", None), ("fewshot", 5)}
    by = {(r.protocol, r.k, r.metric): r for r in rows}
    assert len(by) == 9
    unit = unit_rows(X)
    split = np.array(table.column("split").to_pylist())
    size = table.column("attr_size").to_numpy()
    tr, te = split == "train", split == "test"
    ends = unit[tr][[np.argmax(size[tr]), np.argmin(size[tr])]]
    proj = unit[te] @ (ends[0] - ends[1])
    want_tau, want_acc = _brute_tau_b_and_accuracy(proj, size[te])
    assert abs(by[("extremes", None, "kendall_tau_b")].value - want_tau) < 1e-9
    assert abs(by[("extremes", None, "pairwise_accuracy")].value - want_acc) < 1e-9
    for (fit, k, metric), r in by.items():
        assert r.value is not None and r.ci_low <= r.value <= r.ci_high, (fit, metric)


def test_prompt_axis_is_text_high_minus_low(rng: np.random.Generator) -> None:
    table, X = _size_corpus(rng, n=80)
    d = X.shape[1]
    low, high = rng.normal(size=(3, d)), rng.normal(size=(3, d))
    high[:, 0] += 4.0                                        # the "large" prompts point along the size direction
    ids = ["attr:size:low"] * 3 + ["attr:size:high"] * 3 + ["cat"]
    prompts = prompt_means(ids, np.vstack([low, high, rng.normal(size=(1, d))]))
    ctx = replace(make_context(table, fewshot_ns=[5], fewshot_repeats=2, bootstrap_resamples=10,
                               options={"rankability": {"prompt_axes": {"flat": ["a small {}", "a big {}"]}}}),
                  prompts=prompts)
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), X)
    rows = {(r.target, r.protocol, r.metric): r for r in score_rankability(ctx, emb)}

    # the reference axis: per end, unit rows averaged and renormalised; high minus low
    mean = lambda V: (lambda m: m / np.linalg.norm(m))(unit_rows(V).mean(axis=0))  # noqa: E731
    axis = mean(high) - mean(low)
    unit = unit_rows(X)
    test = np.array(table.column("split").to_pylist()) == "test"
    size = table.column("attr_size").to_numpy()[test]
    proj = unit[test] @ axis
    want_tau, want_acc = _brute_tau_b_and_accuracy(proj, size)
    assert abs(rows[("size", "prompt-axis", "spearman")].value - spearmanr(proj, size).statistic) < 1e-9
    assert abs(rows[("size", "prompt-axis", "kendall_tau_b")].value - want_tau) < 1e-9
    assert abs(rows[("size", "prompt-axis", "pairwise_accuracy")].value - want_acc) < 1e-9
    assert rows[("size", "prompt-axis", "spearman")].value > 0.5
    # configured but not supplied: a counted skip (the attribute is constant anyway; every fit says so)
    assert rows[("flat", "prompt-axis", "kendall_tau_b")].value is None
    # an attribute without prompts and not configured gets no prompt-axis row
    table2 = table.append_column("attr_age", pa.array(size.repeat(2)[:80]))
    ctx2 = replace(make_context(table2, fewshot_ns=[5], fewshot_repeats=2, bootstrap_resamples=0), prompts=prompts)
    rows2 = score_rankability(ctx2, make_embeddings(ctx2, "image", table2.column("id").to_pylist(), X))
    assert not [r for r in rows2 if r.target == "age" and r.protocol == "prompt-axis"]


def test_configured_prompt_axis_without_vectors_is_skipped(rng: np.random.Generator) -> None:
    table, X = _size_corpus(rng, n=40)
    ctx = make_context(table, fewshot_ns=[5], fewshot_repeats=2, bootstrap_resamples=0,
                       options={"rankability": {"prompt_axes": {"size": ["a photo of a small {}",
                                                                         "a photo of a large {}"]}}})
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), X)
    rows = [r for r in score_rankability(ctx, emb) if r.protocol == "prompt-axis" and r.target == "size"]
    assert {r.metric for r in rows} == {"spearman", "kendall_tau_b", "pairwise_accuracy"}
    assert all(r.value is None and "no prompt vectors attr:size:low" in r.note for r in rows)
