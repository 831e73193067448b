"""Prototypes: metrics against sklearn on the clustering found, planted soft positives, the two tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from embedeval.scoring.prototypes import AMBIGUITY_SCHEMA, EXAMPLES_SCHEMA, score_prototypes

from .conftest import make_context, make_embeddings, unit_rows


def _clusters(rng: np.random.Generator, n_per: int = 20, n_cls: int = 4, d: int = 12, spread: float = 0.05):
    centres = np.eye(d)[:n_cls] * 5
    X = np.repeat(centres, n_per, axis=0) + spread * rng.normal(size=(n_cls * n_per, d))
    labels = [f"c{c}" for c in np.repeat(np.arange(n_cls), n_per)]
    ids = [f"x{j:03d}" for j in range(len(labels))]
    return ids, labels, X


def test_separated_clusters_are_recovered(rng: np.random.Generator) -> None:
    ids, labels, X = _clusters(rng)
    table = pa.table({"id": ids, "label": labels})
    ctx = make_context(table, bootstrap_resamples=20)
    out = score_prototypes(ctx, make_embeddings(ctx, "image", ids, X))
    rows = {r.metric: r for r in out.rows}
    for m in ("nmi", "ari", "purity"):
        assert rows[m].value == pytest.approx(1.0) and rows[m].k is None and rows[m].params["k"] == 4 and rows[m].n == 80
    assert rows["ambiguity_rate"].value == 0.0
    assert out.examples.schema == EXAMPLES_SCHEMA and out.ambiguity.schema == AMBIGUITY_SCHEMA
    ex = out.examples.to_pylist()
    assert {e["prototype"] for e in ex} == {0, 1, 2, 3}
    assert all(e["rank"] <= 6 for e in ex)
    # each prototype's examples share one label, and distances ascend with rank
    for p in range(4):
        mine = [e for e in ex if e["prototype"] == p]
        assert len({e["label"] for e in mine}) == 1
        assert [e["distance"] for e in mine] == sorted(e["distance"] for e in mine)


def test_metrics_equal_sklearn_and_soft_positives_found(rng: np.random.Generator) -> None:
    ids, labels, X = _clusters(rng, spread=0.6)
    # plant a soft positive: x000 (c0) gets an almost exact twin labelled c1 inside c0's cluster
    X = np.vstack([X, X[0] + 1e-3])
    ids = ids + ["twin"]
    labels = labels + ["c1"]
    table = pa.table({"id": ids, "label": labels})
    ctx = make_context(table, bootstrap_resamples=0, ambiguity_neighbours=5, ambiguity_top=5)
    out = score_prototypes(ctx, make_embeddings(ctx, "image", ids, X))
    rows = {r.metric: r for r in out.rows}
    amb = out.ambiguity.to_pylist()
    top_pair = next(a for a in amb if a["kind"] == "pair" and a["rank"] == 1)
    assert {top_pair["id_a"], top_pair["id_b"]} == {"x000", "twin"}
    assert top_pair["prototype"] is not None and top_pair["similarity"] > 0.99
    items = [a for a in amb if a["kind"] == "item"]
    assert items and all(a["id_b"] is None for a in items)
    assert rows["ambiguity_rate"].value >= 2 / 81       # x000 and twin are each other's nearest neighbour
    # the metric values are sklearn's on the (labels, prototypes) of the items
    # recompute the clustering the task ran (same seed, same item order) and score it with sklearn
    from embedeval.engine.kmeans import kmeans
    from embedeval.scoring.bootstrap import derive_seed

    res = kmeans(unit_rows(X).astype(np.float32)[np.argsort(ids, kind="stable")], 4, iters=50,
                 seed=derive_seed(0, "prototypes", "image"), init="k-means++", block_size=1024, runner=None)
    lab_sorted = np.asarray(labels, dtype=object)[np.argsort(ids, kind="stable")]
    codes = np.unique(lab_sorted.astype(str), return_inverse=True)[1]
    assert rows["nmi"].value == pytest.approx(normalized_mutual_info_score(codes, res.labels))
    assert rows["ari"].value == pytest.approx(adjusted_rand_score(codes, res.labels))


def test_single_label_is_a_counted_skip(rng: np.random.Generator) -> None:
    ids, _, X = _clusters(rng, n_cls=2)
    table = pa.table({"id": ids, "label": ["same"] * (len(ids) - 3) + [None] * 3})
    ctx = make_context(table)
    out = score_prototypes(ctx, make_embeddings(ctx, "image", ids, X))
    assert out.rows and all(r.value is None and "1 labels" in r.note for r in out.rows)
    assert "3 unlabelled items excluded" in out.rows[0].note
    assert out.ambiguity.num_rows == 0


def test_centroids_fitted_on_a_seeded_sample_then_every_item_assigned(rng: np.random.Generator) -> None:
    ids, labels, X = _clusters(rng, n_per=30, spread=0.6)
    table = pa.table({"id": ids, "label": labels})
    ctx = make_context(table, bootstrap_resamples=0, kmeans_fit_sample=50)
    out = score_prototypes(ctx, make_embeddings(ctx, "image", ids, X))
    rows = {r.metric: r for r in out.rows}
    assert rows["nmi"].params["fit_sample"] == 50 and rows["nmi"].n == 120
    assert "centroids fitted on 50 of 120 items (seeded)" in rows["nmi"].note
    # the same clustering by hand: k-means on the task's seeded sample, then every item's nearest centroid
    from embedeval.engine.kmeans import kmeans
    from embedeval.scoring.bootstrap import derive_seed

    order = np.argsort(ids, kind="stable")
    U = unit_rows(X).astype(np.float64)[order]
    sample = np.sort(np.random.default_rng(derive_seed(0, "prototypes", "image", "kmeans-fit"))
                     .choice(120, size=50, replace=False))
    fit = kmeans(U[sample].astype(np.float32), 4, iters=50, seed=derive_seed(0, "prototypes", "image"),
                 init="k-means++", runner=None)
    nearest = ((U.astype(np.float32).astype(np.float64)[:, None, :] - fit.centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    codes = np.unique(np.asarray(labels, dtype=str)[order], return_inverse=True)[1]
    assert rows["nmi"].value == pytest.approx(normalized_mutual_info_score(codes, nearest))
    assert rows["ari"].value == pytest.approx(adjusted_rand_score(codes, nearest))
    # a sample as large as the catalogue is the plain fit
    whole = score_prototypes(make_context(table, bootstrap_resamples=0, kmeans_fit_sample=120),
                             make_embeddings(ctx, "image", ids, X))
    assert "fit_sample" not in whole.rows[0].params
