"""CorrEmbed as the paper's released notebooks compute it (protocol ``paper-code``), and its controls.

Pictures belong to groups (outfits; the manifest's ``group`` column, else every picture its own group);
tags belong to the group. A group's representative is its first picture in catalogue (manifest) order
among the pictures with a usable embedding. Anchors are pictures (``corr_anchors``, seeded). For an anchor
a and **every** group o, its own included:

    s_emb(a, o) = cos(e_a, e_rep(o))        s_tag(a, o) = cos(v_group(a), v_o)   (0 for a tag-less group)

r_a is the Pearson correlation over all groups; the score is the mean of the defined r_a (no Fisher z).
With ``paper_float16`` the embeddings are stored as float16 and s_emb rounded to 4 decimals first, as in
the notebooks. Rows: metric ``corrembed``, protocol ``paper-code``, for every target; and, for target
``all`` (``controls``), the floors the paper reports beside each model, computed the same way:

- ``control_random_vectors``: seeded uniform [0, 1) vectors of the embedding's dimension per picture;
- ``control_shuffled_embeddings``: the model's embeddings permuted across pictures (seeded);
- ``control_binary_tags``: the model with every tag weight 1 (a sensitivity row, not a floor);
- ``control_random_tags``: seeded uniform [0, 1) tag vectors per group;
- ``control_shuffled_tags``: group tag vectors permuted across groups (seeded).

Cost: A x G x (d + tags) per row (anchors x groups, tiled by :mod:`embedeval.engine.group_corr`); the
driver holds O(N) integers and O(A x 6) sums. Seeds and counts are in ``params``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from embedeval.engine.group_corr import RandomTags, UniformRandomBlocks, group_anchor_sums
from embedeval.engine.sources import BlockSource
from embedeval.engine.sums import pearson_from_sums
from embedeval.engine.tiles import query_rows
from embedeval.scoring.bootstrap import bootstrap_mean, derive_seed
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.schema import ScoreRow
from embedeval.scoring.tags import ALL_TARGET, TagVectors

TASK = "corrembed"
PAPER_CODE = "paper-code"
PAPER_DECIMALS = 4
CONTROLS = ("control_random_vectors", "control_shuffled_embeddings", "control_binary_tags",
            "control_random_tags", "control_shuffled_tags")

# Float64 values one tile task holds per temporary (x, y, products): chunk x gallery block. The anchor
# chunk comes from this and the gallery block alone, not from score.block_size: a float64 GEMM's bits can
# depend on its shape, and the score must be the same bits whatever block_size a run uses.
_TILE_VALUES = 8 * 1024 * 1024
_MAX_CHUNK = 1024


class CorrembedOptions(BaseModel):
    """``score.options.corrembed``: which CorrEmbed protocols to compute, and paper-code's details."""

    protocols: list[Literal["per-anchor", "paper-code"]] = Field(
        default_factory=lambda: ["per-anchor", PAPER_CODE], min_length=1,
        description="per-anchor (self excluded, every item) and/or paper-code (the released notebooks: "
                    "groups, own group included)")
    paper_float16: bool = Field(False, description="paper-code: embeddings as float16, s_emb rounded to 4 decimals")
    controls: bool = Field(True, description="paper-code: the five control rows for target 'all'")


@dataclass(frozen=True)
class GroupLayout:
    """Anchors and group representatives as embedding rows, with group codes; O(N) integers."""

    anchors: np.ndarray        # sorted embedding rows
    reps: np.ndarray           # sorted embedding rows, one per group with an embedded picture
    rep_groups: np.ndarray     # group code of each rep
    anchor_rep: np.ndarray     # position in ``reps`` of each anchor's group


def group_layout(manifest_rows: np.ndarray, group_of: np.ndarray, anchors: np.ndarray) -> GroupLayout:
    """Representatives: per group, the embedding row with the smallest manifest row (catalogue order)."""
    codes = group_of[manifest_rows]
    order = np.lexsort((manifest_rows, codes))
    first = np.ones(order.size, dtype=bool)
    first[1:] = codes[order][1:] != codes[order][:-1]
    reps = np.sort(order[first])
    rep_groups = codes[reps]
    pos = np.full(int(codes.max()) + 1 if codes.size else 0, -1, dtype=np.int64)
    pos[rep_groups] = np.arange(reps.size)
    return GroupLayout(anchors, reps, rep_groups, pos[codes[anchors]])


def paper_code_r(E: BlockSource, layout: GroupLayout, gallery_tags: Any, anchor_tags: Any, *,
                 float16: bool, runner: Any, anchor_rows: np.ndarray | None = None,
                 gallery_rows: np.ndarray | None = None) -> np.ndarray:
    """(A,) per-anchor r of one paper-code row. ``anchor_rows`` / ``gallery_rows`` replace the embedding
    rows read for the anchors and representatives (the shuffled control); tag sides align with
    ``layout.reps`` and ``layout.anchors``."""
    a_rows = layout.anchors if anchor_rows is None else anchor_rows
    g_rows = layout.reps if gallery_rows is None else gallery_rows
    order = np.argsort(g_rows, kind="stable")
    gallery = E.select(g_rows[order])
    g_tags = gallery_tags[order]
    chunk = max(1, min(_MAX_CHUNK, _TILE_VALUES // max(1, int(np.diff(gallery.offsets).max(initial=1)))))
    sums = group_anchor_sums(query_rows(E, a_rows, runner), anchor_tags, gallery, g_tags,
                             float16=float16, decimals=PAPER_DECIMALS if float16 else None, chunk_rows=chunk,
                             runner=runner)
    return np.asarray(pearson_from_sums(*sums.T), dtype=np.float64)


def score_paper_code(ctx: TaskContext, emb: ModalityEmbeddings, tag_vectors: list[TagVectors],
                     options: CorrembedOptions) -> list[ScoreRow]:
    """The ``paper-code`` rows of every target, and the control rows of target ``all``."""
    from embedeval.scoring.corrembed import choose_anchors, mean_of_defined

    s = ctx.settings
    E = ctx.place(emb.source)
    n = E.n
    base = join_notes(emb.note(), f"modality={emb.modality}" if emb.modality != "image" else None)
    if n < 3:
        return [ctx.row(TASK, tv.target, "corrembed", None, n, 0.0, protocol=PAPER_CODE,
                        note=join_notes(f"skipped: {n} pictures", base)) for tv in tag_vectors]
    anchors = choose_anchors(n, s.corr_anchors, derive_seed(s.seed, TASK, "anchors"))
    layout = group_layout(emb.rows, ctx.catalogue.group_of, anchors)
    n_groups = int(layout.reps.size)
    params = ({"anchors": "all"} if anchors.size == n else {"anchors": int(anchors.size), "seed": s.seed})
    params = {**params, "groups": n_groups, "float16": options.paper_float16}
    run = dict(float16=options.paper_float16, runner=ctx.runner)
    rows: list[ScoreRow] = []

    def add(target: str, metric: str, r: np.ndarray, seconds: float, extra: str | None = None,
            seeds: dict[str, int] | None = None) -> None:
        value, ok, dropped = mean_of_defined(r)
        ci = bootstrap_mean(ok, s.bootstrap_resamples, derive_seed(s.seed, TASK, target, PAPER_CODE, metric),
                            s.confidence)
        note = join_notes(f"{dropped} anchors with undefined correlation dropped" if dropped else None, extra,
                          f"{n_groups} groups, own group included", base)
        rows.append(ctx.row(TASK, target, metric, value, ok.size, seconds, protocol=PAPER_CODE,
                            params={**params, **(seeds or {})}, ci_low=ci.low, ci_high=ci.high, note=note))

    for tv in tag_vectors:
        tagless = int((~tv.has_vector[emb.rows[layout.reps]]).sum())
        extra = f"{tagless} groups without {tv.target} tags (tag similarity 0)" if tagless else None
        g_tags = tv.unit_or_zero(emb.rows[layout.reps])
        with stopwatch() as t:
            r = paper_code_r(E, layout, g_tags, g_tags[layout.anchor_rep], **run)
        add(tv.target, "corrembed", r, t[0], extra)
        if options.controls and tv.target == ALL_TARGET:
            _controls(ctx, E, emb, tv, layout, g_tags, run, lambda m, r, sec: add(
                tv.target, m, r, sec, "control (seeded; see the corrembed docs)", {"seed": s.seed}))
    return rows


def _controls(ctx: TaskContext, E: BlockSource, emb: ModalityEmbeddings, tv: TagVectors, layout: GroupLayout,
              g_tags: Any, run: dict[str, Any], add: Any) -> None:
    """The five control rows (see the module docstring), each with its own derived seed."""
    s = ctx.settings
    seed = {m: derive_seed(s.seed, TASK, PAPER_CODE, m) for m in CONTROLS}
    anchor_tags = g_tags[layout.anchor_rep]

    with stopwatch() as t:
        rand = ctx.place(UniformRandomBlocks(E.n, E.dim, seed["control_random_vectors"], s.block_rows))
        r = paper_code_r(rand, layout, g_tags, anchor_tags, **run)
    add("control_random_vectors", r, t[0])

    with stopwatch() as t:
        perm = np.random.default_rng(seed["control_shuffled_embeddings"]).permutation(E.n)
        r = paper_code_r(E, layout, g_tags, anchor_tags, anchor_rows=perm[layout.anchors],
                         gallery_rows=perm[layout.reps], **run)
    add("control_shuffled_embeddings", r, t[0])

    with stopwatch() as t:
        b_tags = tv.binary().unit_or_zero(emb.rows[layout.reps])
        r = paper_code_r(E, layout, b_tags, b_tags[layout.anchor_rep], **run)
    add("control_binary_tags", r, t[0])

    if tv.tags:
        with stopwatch() as t:
            rt = RandomTags(seed["control_random_tags"], len(tv.tags), layout.rep_groups)
            r = paper_code_r(E, layout, rt, RandomTags(rt.seed, rt.dim, layout.rep_groups[layout.anchor_rep]), **run)
        add("control_random_tags", r, t[0])

    with stopwatch() as t:
        shuffle = np.random.default_rng(seed["control_shuffled_tags"]).permutation(layout.reps.size)
        s_tags = g_tags[shuffle]
        r = paper_code_r(E, layout, s_tags, s_tags[layout.anchor_rep], **run)
    add("control_shuffled_tags", r, t[0])
