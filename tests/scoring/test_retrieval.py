"""Retrieval against brute-force ranks and sklearn's AP; planted matches give R@1 = 1."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from embedeval.scoring.context import ScoringError
from embedeval.scoring.retrieval import matches_by_id, score_caption_retrieval, score_label_retrieval

from . import reference as ref
from .conftest import make_context, make_embeddings, unit_rows


def _caption_setup(rng: np.random.Generator, n: int = 40, caps: int = 3, noise: float = 0.05, d: int = 24):
    ids = [f"i{j:03d}" for j in range(n)]
    table = pa.table({"id": ids})
    base = rng.normal(size=(n, d))
    text_ids = [i for i in ids for _ in range(caps)]
    subs = [c for _ in ids for c in range(caps)]
    texts = np.repeat(base, caps, axis=0) + noise * rng.normal(size=(n * caps, d))
    return table, ids, base, text_ids, subs, texts


def _by(rows, **kw):  # noqa: ANN001, ANN202
    return {(r.target, r.metric, r.split): r for r in rows if all(getattr(r, k) == v for k, v in kw.items())}


def test_planted_matches_give_perfect_recall(rng: np.random.Generator) -> None:
    table, ids, base, text_ids, subs, texts = _caption_setup(rng)
    ctx = make_context(table)
    rows = _by(score_caption_retrieval(ctx, make_embeddings(ctx, "image", ids, base),
                                       make_embeddings(ctx, "text", text_ids, texts, subs)))
    for direction in ("image->text", "text->image"):
        assert rows[(direction, "R@1", "all")].value == 1.0
        assert rows[(direction, "median_rank", "all")].value == 1.0
    assert rows[("image->text", "R@1", "all")].n == 40 and rows[("text->image", "R@1", "all")].n == 120
    assert rows[("image<->text", "rsum", "all")].value == pytest.approx(600.0)


def test_ranks_match_brute_force(rng: np.random.Generator) -> None:
    table, ids, base, text_ids, subs, texts = _caption_setup(rng, noise=1.5)
    ctx = make_context(table, recall_ks=[1, 5, 10], bootstrap_resamples=30)
    rows = _by(score_caption_retrieval(ctx, make_embeddings(ctx, "image", ids, base),
                                       make_embeddings(ctx, "text", text_ids, texts, subs)))
    I, T = unit_rows(base), unit_rows(texts)
    i2t = ref.best_ranks(I, T, [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(40)])
    t2i = ref.best_ranks(T, I, [[j // 3] for j in range(120)])
    rsum = 0.0
    for direction, ranks in (("image->text", i2t), ("text->image", t2i)):
        for k in (1, 5, 10):
            row = rows[(direction, f"R@{k}", "all")]
            assert row.value == pytest.approx(np.mean(ranks <= k)) and row.k == k
            rsum += 100 * np.mean(ranks <= k)
        assert rows[(direction, "median_rank", "all")].value == pytest.approx(np.median(ranks))
        assert rows[(direction, "mean_rank", "all")].value == pytest.approx(np.mean(ranks))
    assert 0 < rows[("image->text", "R@1", "all")].value < 1
    rs = rows[("image<->text", "rsum", "all")]
    assert rs.value == pytest.approx(rsum) and rs.ci_low <= rs.value <= rs.ci_high


def test_queries_without_match_are_counted(rng: np.random.Generator) -> None:
    table, ids, base, text_ids, subs, texts = _caption_setup(rng, n=10)
    keep = [j for j, t in enumerate(text_ids) if t not in ("i000", "i001")]   # two images lose their captions
    ctx = make_context(table)
    rows = _by(score_caption_retrieval(ctx, make_embeddings(ctx, "image", ids, base),
                                       make_embeddings(ctx, "text", [text_ids[j] for j in keep], texts[keep],
                                                       [subs[j] for j in keep])))
    r = rows[("image->text", "R@1", "all")]
    assert r.n == 8 and "2 image queries without a true match skipped" in r.note
    assert rows[("text->image", "R@1", "all")].n == 24


def test_dimension_mismatch_is_a_clear_error(rng: np.random.Generator) -> None:
    table = pa.table({"id": ["a", "b"]})
    ctx = make_context(table)
    with pytest.raises(ScoringError, match="dim 4 but text vectors dim 3"):
        score_caption_retrieval(ctx, make_embeddings(ctx, "image", ["a", "b"], rng.normal(size=(2, 4))),
                                make_embeddings(ctx, "text", ["a", "b"], rng.normal(size=(2, 3))))


def test_matches_by_id() -> None:
    indptr, indices = matches_by_id(np.array(["b", "a", "z"], dtype=object), np.array(["a", "a", "b"], dtype=object))
    assert indptr.tolist() == [0, 1, 3, 3] and indices.tolist() == [2, 0, 1]


def _sketch_setup(rng: np.random.Generator, n_img: int = 60, n_sk: int = 30, n_cls: int = 6):
    centres = rng.normal(size=(n_cls, 16))
    img_cls = rng.integers(0, n_cls, n_img)
    sk_cls = rng.integers(0, n_cls, n_sk)
    images = centres[img_cls] + 1.2 * rng.normal(size=(n_img, 16))
    sketches = centres[sk_cls] + 1.2 * rng.normal(size=(n_sk, 16))
    img_ids = [f"img{j:03d}" for j in range(n_img)]
    sk_ids = [f"sk{j:03d}" for j in range(n_sk)]
    labels = [f"c{c}" for c in np.r_[img_cls, sk_cls]]
    class_split = ["unseen" if int(lab[1:]) >= 4 else "seen" for lab in labels]
    table = pa.table({"id": img_ids + sk_ids, "label": labels, "class_split": class_split})
    return table, img_ids, sk_ids, images, sketches, img_cls, sk_cls


def test_label_retrieval_matches_sklearn_ap(rng: np.random.Generator) -> None:
    table, img_ids, sk_ids, images, sketches, img_cls, sk_cls = _sketch_setup(rng)
    ctx = make_context(table, map_cutoffs=[10], precision_ks=[5, 10], bootstrap_resamples=30)
    rows = _by(score_label_retrieval(ctx, make_embeddings(ctx, "sketch", sk_ids, sketches),
                                     make_embeddings(ctx, "image", img_ids, images)))
    Q, G = unit_rows(sketches), unit_rows(images)
    ql, gl = sk_cls.astype(str), img_cls.astype(str)
    has = np.isin(ql, gl)
    ap = ref.label_ap(Q[has], G, ql[has], gl)
    row = rows[("sketch->image", "mAP@all", "all")]
    assert row.value == pytest.approx(ap.mean(), abs=1e-9) and row.protocol == "standard" and row.params is None
    assert row.ci_low <= row.value <= row.ci_high
    for k in (5, 10):
        p = ref.precision_at(Q[has], G, ql[has], gl, k)
        assert rows[("sketch->image", f"P@{k}", "all")].value == pytest.approx(p.mean())
    # seen/unseen: queries and gallery restricted to the split's classes
    unseen_q, unseen_g = sk_cls >= 4, img_cls >= 4
    ap_u = ref.label_ap(Q[unseen_q], G[unseen_g], ql[unseen_q], gl[unseen_g])
    ok = np.isin(ql[unseen_q], gl[unseen_g])
    assert rows[("sketch->image", "mAP@all", "unseen")].value == pytest.approx(ap_u[ok].mean(), abs=1e-9)
    assert rows[("sketch->image", "mAP@all", "unseen")].n == int(ok.sum())
    assert "gallery=" in rows[("sketch->image", "mAP@all", "unseen")].note


def test_label_retrieval_skips_queries_without_relevant_items(rng: np.random.Generator) -> None:
    table, img_ids, sk_ids, images, sketches, img_cls, sk_cls = _sketch_setup(rng)
    labels = table.column("label").to_pylist()
    labels[len(img_ids)] = "nowhere"          # first sketch's class has no image
    labels[len(img_ids) + 1] = None           # second sketch is unlabelled
    table = table.set_column(1, "label", pa.array(labels))
    ctx = make_context(table, map_cutoffs=[10], precision_ks=[5])
    rows = _by(score_label_retrieval(ctx, make_embeddings(ctx, "sketch", sk_ids, sketches),
                                     make_embeddings(ctx, "image", img_ids, images)))
    row = rows[("sketch->image", "mAP@all", "all")]
    assert row.n == 28
    assert "1 queries without a relevant item skipped" in row.note and "1 unlabelled queries skipped" in row.note


def test_same_modality_excludes_self(rng: np.random.Generator) -> None:
    table, img_ids, _, images, _, img_cls, _ = _sketch_setup(rng)
    ctx = make_context(table, map_cutoffs=[10], precision_ks=[5], bootstrap_resamples=0)
    rows = _by(score_label_retrieval(ctx, make_embeddings(ctx, "image", img_ids, images),
                                     make_embeddings(ctx, "image", img_ids, images)), split="all")
    G = unit_rows(images)
    gl = img_cls.astype(str)
    aps = []
    for i in range(len(img_ids)):
        others = np.arange(len(img_ids)) != i
        if (gl[others] == gl[i]).any():
            aps.append(ref.label_ap(G[i:i + 1], G[others], gl[i:i + 1], gl[others])[0])
    assert rows[("image->image", "mAP@all", "all")].value == pytest.approx(np.mean(aps), abs=1e-9)



def test_label_max_queries_scores_a_seeded_exact_sample(rng: np.random.Generator) -> None:
    """With a query cap, the score is the exact mean AP over a seeded sample of queries, and says so."""
    table, img_ids, sk_ids, images, sketches, img_cls, sk_cls = _sketch_setup(rng)
    ctx = make_context(table, map_cutoffs=[10], precision_ks=[5], bootstrap_resamples=0, label_max_queries=7)
    rows = _by(score_label_retrieval(ctx, make_embeddings(ctx, "sketch", sk_ids, sketches),
                                     make_embeddings(ctx, "image", img_ids, images)))
    row = rows[("sketch->image", "mAP@all", "all")]
    Q, G = unit_rows(sketches), unit_rows(images)
    ql, gl = sk_cls.astype(str), img_cls.astype(str)
    has = np.flatnonzero(np.isin(ql, gl))
    per_query = ref.label_ap(Q[has], G, ql[has], gl)
    assert row.n == 7 and "7 of" in row.note and "sampled" in row.note
    # the score is the exact mean AP of the sampled queries (the sample is drawn from the task's seed)
    from embedeval.scoring.bootstrap import derive_seed

    pick = np.sort(np.random.default_rng(derive_seed(0, "retrieval", "sketch->image", "all", "queries"))
                   .choice(len(has), size=7, replace=False))
    assert row.value == pytest.approx(per_query[pick].mean(), abs=1e-9)
    again = _by(score_label_retrieval(ctx, make_embeddings(ctx, "sketch", sk_ids, sketches),
                                      make_embeddings(ctx, "image", img_ids, images)))
    assert again[("sketch->image", "mAP@all", "all")].value == row.value   # seeded: the same sample

