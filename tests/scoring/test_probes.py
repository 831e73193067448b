"""Probes against scikit-learn: LogisticRegression predictions, KNeighborsClassifier votes, f1_score."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from embedeval.scoring.probes import ProbeOptions, knn_vote, macro_f1, score_probes

from .conftest import make_context, make_embeddings

LABELS = ["ant", "bee", "cat", "dog"]


def _corpus(rng: np.random.Generator, n: int = 160, d: int = 12, n_labels: int = 4,
            unlabelled: int = 0) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    lab = rng.integers(0, n_labels, n)
    X = rng.normal(size=(n, d))
    X[np.arange(n), lab] += 1.5       # labels are linearly readable, not perfectly
    labels = [LABELS[c] if i >= unlabelled else None for i, c in enumerate(lab)]
    split = ["test" if i % 3 == 0 else "train" for i in range(n)]
    table = pa.table({"id": [f"it{i:04d}" for i in range(n)], "label": labels, "split": split})
    return table, X, lab


def _unit(emb) -> np.ndarray:
    return emb.unit.astype(np.float64)


def test_macro_f1_matches_sklearn(rng: np.random.Generator) -> None:
    for _ in range(5):
        t, p = rng.integers(0, 5, 40), rng.integers(0, 6, 40)
        assert macro_f1(t, p) == pytest.approx(f1_score(t, p, average="macro", zero_division=0), abs=1e-12)


def test_knn_vote_ties_go_to_the_smallest_label() -> None:
    labels = np.array([[2, 1, 1, 2], [3, 0, 0, 3], [1, 1, 0, 2]])
    np.testing.assert_array_equal(knn_vote(labels, 4, 4), [1, 0, 1])
    np.testing.assert_array_equal(knn_vote(labels, 1, 4), [2, 3, 1])


def test_probes_match_sklearn(rng: np.random.Generator) -> None:
    table, X, _ = _corpus(rng, unlabelled=5)
    opts = ProbeOptions(knn_ks=[1, 3, 5, 7], c_grid=[0.1, 1.0, 10.0])
    ctx = make_context(table, bootstrap_resamples=40, block_size=17)
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), X)
    result = score_probes(ctx, emb, opts)
    rows = {(r.metric, r.k): r for r in result.rows}

    unit = _unit(emb)
    labels = np.array([LABELS.index(v) if v else -1 for v in table.column("label").to_pylist()])[emb.rows]
    split = np.array(table.column("split").to_pylist())[emb.rows]
    tr, te = (labels >= 0) & (split == "train"), (labels >= 0) & (split == "test")
    acc = rows[("linear_probe", None)]
    assert acc.params["C"] in opts.c_grid and acc.n == te.sum() and acc.split == "test"
    ref = LogisticRegression(C=acc.params["C"], solver="lbfgs", max_iter=opts.max_iter).fit(unit[tr], labels[tr])
    pred = ref.predict(unit[te])
    assert acc.value == pytest.approx(np.mean(pred == labels[te]), abs=1e-12)
    assert acc.value > 0.5 and acc.ci_low <= acc.value <= acc.ci_high
    assert rows[("linear_probe_macro_f1", None)].value == pytest.approx(
        f1_score(labels[te], pred, average="macro", zero_division=0), abs=1e-12)
    assert "5 unlabelled items excluded" in acc.note

    for k in opts.knn_ks:
        knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(unit[tr], labels[tr])
        ref_acc = np.mean(knn.predict(unit[te]) == labels[te])
        assert rows[("knn_classify", k)].value == pytest.approx(ref_acc, abs=1e-12), k

    # per-test-item correctness: one line per test item, its mean is the score
    per = result.per_item.to_pandas()
    for (metric, k), row in rows.items():
        if metric == "linear_probe_macro_f1":
            assert not ((per.metric == metric)).any()
            continue
        mine = per[(per.metric == metric) & (per.k.fillna(-1) == (k if k is not None else -1))]
        assert len(mine) == row.n and mine.value.mean() == pytest.approx(row.value, abs=1e-12)


def test_predictions_match_sklearn_exactly(rng: np.random.Generator) -> None:
    """The blockwise predict gives sklearn's predictions (binary and multiclass), item by item."""
    from embedeval.engine.sources import ArrayBlocks
    from embedeval.engine.tiles import map_blocks_of
    from embedeval.scoring.probes import _predict_block

    for n_labels in (2, 4):
        X = rng.normal(size=(90, 6)).astype(np.float32).astype(np.float64)
        y = rng.integers(0, n_labels, 90)
        model = LogisticRegression(C=1.0, solver="lbfgs", max_iter=500).fit(X[:60], y[:60])
        out = np.empty(30, dtype=np.int64)
        for lo, hi, part in map_blocks_of(_predict_block, ArrayBlocks(X[60:].astype(np.float32), 7),
                                          params={"coef": model.coef_, "intercept": model.intercept_,
                                                  "classes": model.classes_}):
            out[lo:hi] = part
        np.testing.assert_array_equal(out, model.predict(X[60:]))


def test_max_train_samples_the_fit(rng: np.random.Generator) -> None:
    table, X, _ = _corpus(rng, n=120)
    ctx = make_context(table, bootstrap_resamples=0)
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), X)
    rows = {(r.metric, r.k): r for r in score_probes(ctx, emb, ProbeOptions(max_train=30, knn_ks=[3])).rows}
    acc = rows[("linear_probe", None)]
    assert acc.params["train"] == 30 and acc.params["seed"] == 0
    assert "logistic fit on 30 of 80 train items (seeded)" in acc.note
    assert rows[("knn_classify", 3)].params == {"train": 80}   # k-NN always searches every train item


def test_knn_max_test_votes_for_a_seeded_sample_of_test_items_among_every_train_item(
        rng: np.random.Generator) -> None:
    from embedeval.scoring.bootstrap import derive_seed

    table, X, _ = _corpus(rng, n=150)
    ctx = make_context(table, bootstrap_resamples=0, block_size=16)
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), X)
    result = score_probes(ctx, emb, ProbeOptions(knn_ks=[3], knn_max_test=20))
    row = next(r for r in result.rows if r.metric == "knn_classify")
    assert row.n == 20 and row.params == {"train": 100, "test": 20, "seed": 0}
    assert "k-NN vote for 20 of 50 test items (seeded), neighbours among all 100 train items" in row.note
    # the same sample by hand, voted by scikit-learn among every train item
    unit = _unit(emb)
    labels = np.array([LABELS.index(v) for v in table.column("label").to_pylist()])[emb.rows]
    split = np.array(table.column("split").to_pylist())[emb.rows]
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    sample = te[np.sort(np.random.default_rng(derive_seed(0, "probes", "image", "knn-test"))
                        .choice(te.size, size=20, replace=False))]
    knn = KNeighborsClassifier(n_neighbors=3, metric="cosine", algorithm="brute").fit(unit[tr], labels[tr])
    assert row.value == pytest.approx(np.mean(knn.predict(unit[sample]) == labels[sample]), abs=1e-12)
    per = result.per_item.to_pandas()
    mine = per[per.metric == "knn_classify"]
    ids = np.array(table.column("id").to_pylist())[emb.rows]
    assert sorted(mine.item) == sorted(ids[sample]) and mine.value.mean() == pytest.approx(row.value)
    # the linear probe still predicts every test item
    assert next(r for r in result.rows if r.metric == "linear_probe").n == 50


def test_missing_columns_are_counted_skips(rng: np.random.Generator) -> None:
    table, X, _ = _corpus(rng, n=30)
    no_split = table.drop(["split"])
    ctx = make_context(no_split)
    emb = make_embeddings(ctx, "image", no_split.column("id").to_pylist(), X)
    result = score_probes(ctx, emb, ProbeOptions())
    assert all(r.value is None and "no 'split' column" in r.note for r in result.rows)
    assert result.per_item is None
