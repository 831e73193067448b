"""CorrEmbed rows against the paper's definition computed the slow way, and a known direction."""

from __future__ import annotations

import numpy as np
import pytest

from embedeval.scoring.corrembed import choose_anchors, score_corrembed
from embedeval.scoring.tags import build_tag_vectors

from . import reference as ref
from .conftest import make_context, make_embeddings, unit_rows
from .synthetic import CATEGORIES, colour_embeddings, tagged_catalogue


def _rows(ctx, emb, tvs):  # noqa: ANN001, ANN202
    # the per-anchor protocol's rows (paper-code's have their own tests: test_corrembed_paper.py)
    return {(r.target, r.metric, r.k): r for r in score_corrembed(ctx, emb, tvs) if r.protocol != "paper-code"}


def test_matches_brute_force_definition(rng: np.random.Generator) -> None:
    table, colour, _ = tagged_catalogue(60, rng)
    X = colour_embeddings(colour, rng, strength=1.5)
    ids = table.column("id").to_pylist()
    ctx = make_context(table, corr_anchors="all", corr_ks=[5, 20], spearman_max_pairs=None, bootstrap_resamples=40)
    emb = make_embeddings(ctx, "image", ids, X)
    tvs = build_tag_vectors(table.column("tags").to_pylist(), CATEGORIES)
    rows = _rows(ctx, emb, tvs)
    E = emb.unit.astype(np.float64)      # the float32 unit vectors the task saw (ids are already sorted)
    for tv in tvs:
        T = tv.unit_rows(np.arange(60))
        anchors = np.arange(60)
        r = ref.per_anchor_pearson(E, T, anchors)
        got = rows[(tv.target, "corrembed", None)]
        assert got.value == pytest.approx(np.nanmean(r), abs=1e-9)
        assert got.n == int(np.isfinite(r).sum()) and got.protocol == "per-anchor" and got.params == {"anchors": "all"}
        assert got.ci_low <= got.value <= got.ci_high
        for k in (5, 20):
            rk = ref.knn_pearson(E, T, anchors, k)
            assert rows[(tv.target, "corr_knn", k)].value == pytest.approx(np.nanmean(rk), abs=1e-6)
        p, s = ref.all_pairs(E, T)
        assert rows[(tv.target, "pearson_all", None)].value == pytest.approx(p, abs=1e-9)
        pa_row = rows[(tv.target, "pearson_all", None)]
        assert pa_row.ci_low <= p <= pa_row.ci_high
        sp = rows[(tv.target, "spearman_all", None)]
        assert sp.protocol == "all-pairs" and sp.params == {"pairs": "all"} and sp.value == pytest.approx(s, abs=1e-9)
        assert rows[(tv.target, "corr_random", 5)].value is not None
        for k in (5, 20):
            nn = np.argsort(-(E @ E.T - 2 * np.eye(60)), axis=1, kind="stable")[:, :k]
            expected = np.mean([(T[i] @ T[nn[i]].T).mean() for i in range(60)])
            assert rows[(tv.target, "knn_tag_similarity", k)].value == pytest.approx(expected, abs=1e-9)


def test_seeded_random_anchors(rng: np.random.Generator) -> None:
    a1 = choose_anchors(500, 100, seed=3)
    a2 = choose_anchors(500, 100, seed=3)
    assert np.array_equal(a1, a2) and len(np.unique(a1)) == 100 and not np.array_equal(a1, choose_anchors(500, 100, 4))
    assert np.array_equal(choose_anchors(50, 1000, 0), np.arange(50))

    table, colour, _ = tagged_catalogue(80, rng)
    X = colour_embeddings(colour, rng)
    ctx = make_context(table, corr_anchors=30, corr_ks=[10], bootstrap_resamples=0)
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), X)
    tvs = build_tag_vectors(table.column("tags").to_pylist(), CATEGORIES)
    rows = _rows(ctx, emb, tvs)
    row = rows[("colour", "corrembed", None)]
    assert row.protocol == "per-anchor" and row.params == {"anchors": 30, "seed": 0} and row.n <= 30
    # the value equals the brute force over the same anchors
    from embedeval.scoring.bootstrap import derive_seed
    anchors = choose_anchors(80, 30, derive_seed(0, "corrembed", "anchors"))
    tv = next(t for t in tvs if t.target == "colour")
    r = ref.per_anchor_pearson(emb.unit.astype(np.float64), tv.unit_rows(np.arange(80)), anchors)
    assert row.value == pytest.approx(np.nanmean(r), abs=1e-9)


def test_colour_embeddings_beat_random_on_colour(rng: np.random.Generator) -> None:
    table, colour, _ = tagged_catalogue(150, rng)
    ids = table.column("id").to_pylist()
    tvs = build_tag_vectors(table.column("tags").to_pylist(), CATEGORIES)
    ctx = make_context(table, corr_ks=[10], bootstrap_resamples=50, spearman_max_pairs=2000)
    good = _rows(ctx, make_embeddings(ctx, "image", ids, colour_embeddings(colour, rng)), tvs)
    rand = _rows(ctx, make_embeddings(ctx, "image", ids, rng.normal(size=(150, 16))), tvs)
    for metric, k in (("corrembed", None), ("knn_tag_similarity", 10), ("pearson_all", None),
                      ("spearman_all", None)):
        assert good[("colour", metric, k)].value > rand[("colour", metric, k)].value + 0.2, metric
    # on colour, most good neighbourhoods are colour-pure: corr_knn is undefined there, dropped and counted
    assert "anchors with undefined correlation dropped" in good[("colour", "corr_knn", 10)].note
    assert good[("colour", "corrembed", None)].ci_low > rand[("colour", "corrembed", None)].ci_high
    assert abs(rand[("colour", "corrembed", None)].value) < 0.1
    # colour-encoding embeddings know nothing of shape
    assert abs(good[("shape", "corrembed", None)].value) < 0.15
    assert good[("colour", "spearman_all", None)].params == {"pairs": "sampled-items", "items": 63, "seed": 0}  # 63 * 62 / 2 <= 2000 pairs


def test_corr_knn_direction(rng: np.random.Generator) -> None:
    """With a weaker colour signal neighbourhoods mix colours, and corr_knn sees the colour signal."""
    table, colour, _ = tagged_catalogue(300, rng)
    ids = table.column("id").to_pylist()
    tvs = [tv for tv in build_tag_vectors(table.column("tags").to_pylist(), CATEGORIES) if tv.target == "colour"]
    ctx = make_context(table, corr_ks=[50], corr_random_control=True, bootstrap_resamples=100)
    good = _rows(ctx, make_embeddings(ctx, "image", ids, colour_embeddings(colour, rng, strength=1.5)), tvs)
    rand = _rows(ctx, make_embeddings(ctx, "image", ids, rng.normal(size=(300, 16))), tvs)
    assert good[("colour", "corr_knn", 50)].ci_low > rand[("colour", "corr_knn", 50)].ci_high
    # the control samples the same number of items at random: it estimates the all-items correlation
    assert good[("colour", "corr_random", 50)].value == pytest.approx(good[("colour", "corrembed", None)].value, abs=0.05)


def test_untagged_items_excluded_and_counted(rng: np.random.Generator) -> None:
    table, colour, _ = tagged_catalogue(40, rng, untagged=7)
    ctx = make_context(table, corr_ks=[5], bootstrap_resamples=0)
    emb = make_embeddings(ctx, "image", table.column("id").to_pylist(), colour_embeddings(colour, rng))
    rows = _rows(ctx, emb, build_tag_vectors(table.column("tags").to_pylist(), CATEGORIES))
    c = rows[("colour", "corrembed", None)]
    assert "7 items without colour tags excluded" in c.note and c.n == 33
    assert "excluded" not in (rows[("shape", "corrembed", None)].note or "")
    # k larger than the items left is a counted skip
    big = make_context(table, corr_ks=[5, 100], bootstrap_resamples=0)
    rows = _rows(big, emb, build_tag_vectors(table.column("tags").to_pylist(), CATEGORIES))
    assert rows[("colour", "corr_knn", 100)].value is None and "k=100" in rows[("colour", "corr_knn", 100)].note
