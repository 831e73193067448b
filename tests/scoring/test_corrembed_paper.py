"""CorrEmbed ``paper-code``: against a plain pandas re-implementation of the released notebooks' steps, and
its controls against brute-force numpy (and near 0 where the model is clearly above 0)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from embedeval.engine.group_corr import uniform_rows
from embedeval.scoring.bootstrap import derive_seed
from embedeval.scoring.corrembed import choose_anchors, score_corrembed
from embedeval.scoring.corrembed_paper import CONTROLS
from embedeval.scoring.tags import build_tag_vectors

from .conftest import make_context, make_embeddings
from .synthetic import CATEGORIES, COLOURS, SHAPES

WEIGHTS = {"colour": 0.7, "shape": 0.3}


def outfit_catalogue(n_groups: int, rng: np.random.Generator, d: int = 12, strength: float = 2.5
                     ) -> tuple[pa.Table, np.ndarray, list[str]]:
    """(manifest in a shuffled catalogue order, embeddings aligned with it, ids). Groups hold 1-4 pictures
    whose vectors share the group's colour; every 7th group has no tags; tags are on every row."""
    ids, groups, tags, colour = [], [], [], []
    for g in range(n_groups):
        c, s = rng.integers(len(COLOURS)), rng.integers(len(SHAPES))
        gtags = [] if g % 7 == 3 else [COLOURS[c], SHAPES[s]]
        for p in range(int(rng.integers(1, 5))):
            ids.append(f"g{g:03d}p{p}")
            groups.append(f"outfit{g:03d}")
            tags.append(gtags)
            colour.append(c)
    order = rng.permutation(len(ids))          # catalogue order differs from id order
    X = rng.normal(size=(len(ids), d))
    X[np.arange(len(ids)), np.asarray(colour)] += strength
    table = pa.table({"id": [ids[i] for i in order], "group": [groups[i] for i in order],
                      "tags": [tags[i] for i in order]})
    return table, X[order], [ids[i] for i in order]


def pandas_notebook(table: pa.Table, X: np.ndarray, anchor_ids: list[str], float16: bool) -> float:
    """The notebook's steps in pandas: representatives = first picture per group in catalogue order, for each
    anchor merge the per-group similarities on the representative and ``Series.corr``; mean, NaN skipped."""
    pics = table.to_pandas()
    vecs = X / np.linalg.norm(X, axis=1, keepdims=True)
    vecs = vecs.astype(np.float32).astype(np.float16 if float16 else np.float32).astype(np.float64)
    pics["row"] = np.arange(len(pics))
    reps = pics.groupby("group", sort=False).first().reset_index()
    vocab = COLOURS + SHAPES
    weight = {t: WEIGHTS[CATEGORIES[t]] for t in vocab}
    tag_frame = pd.DataFrame([[weight[t] if t in tags else 0.0 for t in vocab] for tags in reps["tags"]],
                             index=reps["group"], columns=vocab)
    norms = np.sqrt((tag_frame ** 2).sum(axis=1))
    tag_unit = tag_frame.div(norms.where(norms > 0, 1.0), axis=0)
    rep_vecs = vecs[reps["row"].to_numpy()]
    by_id = pics.set_index("id")
    out = []
    for a in anchor_ids:
        ea = vecs[by_id.loc[a, "row"]]
        s_emb = pd.Series(rep_vecs @ ea / (np.linalg.norm(rep_vecs, axis=1) * np.linalg.norm(ea)),
                          index=reps["group"], name="s_emb")
        if float16:
            s_emb = s_emb.round(4)
        s_tag = pd.Series(tag_unit.to_numpy() @ tag_unit.loc[by_id.loc[a, "group"]].to_numpy(),
                          index=tag_unit.index, name="s_tag")
        merged = pd.merge(s_emb.reset_index(), s_tag.reset_index(), on="group")
        out.append(merged["s_emb"].corr(merged["s_tag"]))
    return float(pd.Series(out).mean())


def _paper_rows(ctx, emb, tvs) -> dict[tuple[str, str], object]:  # noqa: ANN001
    return {(r.target, r.metric): r for r in score_corrembed(ctx, emb, tvs) if r.protocol == "paper-code"}


def _setup(rng: np.random.Generator, n_groups: int = 60, float16: bool = False, anchors: int | str = "all",
           controls: bool = False, **kw: object):  # noqa: ANN202
    table, X, ids = outfit_catalogue(n_groups, rng, **kw)
    ctx = make_context(table, corr_anchors=anchors, bootstrap_resamples=20,
                       options={"corrembed": {"protocols": ["paper-code"], "paper_float16": float16,
                                              "controls": controls}})
    emb = make_embeddings(ctx, "image", ids, X)
    tvs = build_tag_vectors(table.column("tags").to_pylist(), CATEGORIES, category_weights=WEIGHTS)
    return table, X, ids, ctx, emb, tvs


@pytest.mark.parametrize("float16", [False, True])
def test_paper_code_matches_pandas_notebook(rng: np.random.Generator, float16: bool) -> None:
    table, X, ids, ctx, emb, tvs = _setup(rng, float16=float16)
    rows = _paper_rows(ctx, emb, tvs)
    expected = pandas_notebook(table, X, sorted(ids), float16)
    got = rows[("all", "corrembed")]
    assert got.value == pytest.approx(expected, abs=1e-9)
    assert got.params["anchors"] == "all" and got.params["groups"] == 60 and got.params["float16"] is float16
    assert "without all tags" in got.note           # the tag-less groups are in, with tag similarity 0
    assert got.ci_low <= got.value <= got.ci_high


def test_paper_code_seeded_anchor_sample_and_per_anchor_differs(rng: np.random.Generator) -> None:
    table, X, ids, ctx, emb, tvs = _setup(rng, anchors=40)
    got = _paper_rows(ctx, emb, tvs)[("all", "corrembed")]
    # the anchor sample is over pictures in (id) order, seeded as every corrembed sample
    anchors = choose_anchors(len(ids), 40, derive_seed(0, "corrembed", "anchors"))
    expected = pandas_notebook(table, X, [sorted(ids)[i] for i in anchors], False)
    assert got.value == pytest.approx(expected, abs=1e-9) and got.params["anchors"] == 40
    both = make_context(table, corr_anchors=40, bootstrap_resamples=0, corr_ks=[5])
    rows = score_corrembed(both, emb, tvs)      # default options: both protocols, side by side
    by = {(r.metric, r.protocol) for r in rows if r.target == "all"}
    assert ("corrembed", "per-anchor") in by and ("corrembed", "paper-code") in by
    per_anchor = next(r for r in rows if r.target == "all" and r.metric == "corrembed" and r.protocol == "per-anchor")
    assert per_anchor.value != pytest.approx(got.value, abs=1e-6)


def test_without_group_every_item_is_its_own_group(rng: np.random.Generator) -> None:
    table, X, ids = outfit_catalogue(40, rng)
    table = table.drop_columns(["group"])
    ctx = make_context(table, corr_anchors="all", bootstrap_resamples=0,
                       options={"corrembed": {"protocols": ["paper-code"], "controls": False}})
    emb = make_embeddings(ctx, "image", ids, X)
    tvs = build_tag_vectors(table.column("tags").to_pylist(), CATEGORIES, category_weights=WEIGHTS)
    got = _paper_rows(ctx, emb, tvs)[("all", "corrembed")]
    solo = table.append_column("group", pa.array(ids))
    assert got.params["groups"] == len(ids)
    assert got.value == pytest.approx(pandas_notebook(solo, X, sorted(ids), False), abs=1e-9)


def _brute(Ea: np.ndarray, Eg: np.ndarray, Ta: np.ndarray, Tg: np.ndarray) -> float:
    """Mean over anchors of np.corrcoef of (cos to every representative, tag cosine to every group)."""
    Ea = Ea / np.linalg.norm(Ea, axis=1, keepdims=True)
    Eg = Eg / np.linalg.norm(Eg, axis=1, keepdims=True)
    rs = []
    for i in range(Ea.shape[0]):
        x, y = Eg @ Ea[i], Tg @ Ta[i]
        rs.append(np.corrcoef(x, y)[0, 1] if x.std() > 0 and y.std() > 0 else np.nan)
    return float(np.nanmean(rs))


def test_controls_match_brute_force_and_sit_near_zero(rng: np.random.Generator) -> None:
    table, X, ids, ctx, emb, tvs = _setup(rng, n_groups=100, controls=True, strength=4.0)
    rows = _paper_rows(ctx, emb, tvs)
    assert {m for (t, m) in rows if t == "all"} == {"corrembed", *CONTROLS}
    assert not any(m in CONTROLS for (t, m) in rows if t != "all")

    # brute force from the definitions: embedding rows in (id) order, reps = first in catalogue order
    E = emb.unit.astype(np.float64)
    sorted_ids = sorted(ids)
    pics = table.to_pandas()
    pics["row"] = [sorted_ids.index(i) for i in pics["id"]]
    reps = pics.groupby("group", sort=False).first().reset_index().sort_values("row")
    rep_rows = reps["row"].to_numpy()
    group_pos = {g: k for k, g in enumerate(reps["group"])}
    anchor_groups = pics.set_index("row").loc[np.arange(len(ids)), "group"]
    a_pos = np.array([group_pos[g] for g in anchor_groups])
    tv = tvs[0]
    manifest_row = {i: k for k, i in enumerate(pics["id"])}

    def unit(M: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(M, axis=1, keepdims=True)
        return M / np.where(n > 0, n, 1.0)

    Tg = unit(tv.matrix[[manifest_row[sorted_ids[r]] for r in rep_rows]].toarray())
    Bg = unit(tv.presence[[manifest_row[sorted_ids[r]] for r in rep_rows]].toarray())
    A = np.arange(len(ids))
    seed = {m: derive_seed(0, "corrembed", "paper-code", m) for m in CONTROLS}
    R = uniform_rows(seed["control_random_vectors"], E.shape[1], A)
    perm = np.random.default_rng(seed["control_shuffled_embeddings"]).permutation(len(ids))
    group_codes = np.array(sorted(reps["group"])).searchsorted(reps["group"].to_numpy())
    RT = unit(uniform_rows(seed["control_random_tags"], len(tv.tags), group_codes))
    shuffle = np.random.default_rng(seed["control_shuffled_tags"]).permutation(len(rep_rows))
    expected = {
        "corrembed": _brute(E, E[rep_rows], Tg[a_pos], Tg),
        "control_random_vectors": _brute(R, R[rep_rows], Tg[a_pos], Tg),
        "control_shuffled_embeddings": _brute(E[perm], E[perm[rep_rows]], Tg[a_pos], Tg),
        "control_binary_tags": _brute(E, E[rep_rows], Bg[a_pos], Bg),
        "control_random_tags": _brute(E, E[rep_rows], RT[a_pos], RT),
        "control_shuffled_tags": _brute(E, E[rep_rows], Tg[shuffle][a_pos], Tg[shuffle]),
    }
    for metric, value in expected.items():
        assert rows[("all", metric)].value == pytest.approx(value, abs=1e-9), metric
        assert metric == "corrembed" or rows[("all", metric)].params["seed"] == 0
    assert rows[("all", "corrembed")].value > 0.3
    for metric in ("control_random_vectors", "control_shuffled_embeddings", "control_random_tags",
                   "control_shuffled_tags"):
        assert abs(rows[("all", metric)].value) < 0.06, metric
    assert rows[("all", "control_binary_tags")].value > 0.3   # a weighting change, not a floor
