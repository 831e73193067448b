"""CorrEmbed: how well embedding similarity matches tag similarity, per tag category and overall.

Rows per target (a tag category or ``all``), all from cosine similarities of L2-normalised embeddings
(one vector per item) and of weighted tag vectors (:mod:`embedeval.scoring.tags`):

- ``corrembed``: the paper's metric. For each anchor i, the Pearson correlation over all other items j of
  the two similarities; averaged over anchors. Anchors whose correlation is undefined (constant tag
  similarity, e.g. everyone shares the anchor's only tag) are dropped and counted. Protocol ``per-anchor``;
  ``params`` says which anchors: ``{"anchors": <n>, "seed": <s>}`` (seeded random, the paper's 1,000) or
  ``{"anchors": "all"}`` — the same score either way, so it stays comparable as a catalogue grows.
- ``corr_knn`` (k): the same per-anchor correlation over the k items nearest the anchor in embedding space
  only; ``corr_random`` (k): over k random items, the control that says how much of corr_knn is the
  neighbourhood rather than the sample size. Caveat: an anchor whose k neighbours all carry its tags
  has a constant tag similarity, so its correlation is undefined and it is dropped (counted in ``note``);
  that happens most for the *best* models, so read corr_knn with its n and with:
- ``knn_tag_similarity`` (k): the mean tag cosine between an anchor and its k nearest neighbours — what
  share of "what the recommender shows" humans call alike; always defined. Its note gives the mean tag
  cosine over all pairs, the value a random neighbourhood would get.
- ``pearson_all``: one Pearson over all N(N-1)/2 pairs (exact, from merged sums).
- ``spearman_all``: one Spearman over all pairs, or over all pairs of a seeded sample of items (at most
  ``spearman_max_pairs`` pairs); protocol ``all-pairs``, ``params`` says which (``{"pairs": "all"}`` or
  ``{"pairs": "sampled-items", "items": m, "seed": s}``).

Items without a tag vector in a target are excluded from it and counted in ``note``.
Intervals: bootstrap over anchors (per-anchor r; per-anchor sums for pearson_all).

Beside these, ``corrembed`` with protocol ``paper-code`` is the number as the paper's released notebooks
compute it (groups, own group included) with its controls: :mod:`embedeval.scoring.corrembed_paper`.
``score.options.corrembed.protocols`` picks ``per-anchor`` (every row above) and/or ``paper-code``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from embedeval.engine.gram import (GramStats, all_pairs_from_stats, anchor_sums_from_stats, gram_stats_blocks,
                                   pearson_from_sums)
from embedeval.engine.knn import pearson_over_prefixes, sample_others, topk_search
from embedeval.engine.pairs import canonical_pair_scores, upper_triangle_scores
from embedeval.engine.sources import BlockSource
from embedeval.engine.tiles import gather_rows, map_blocks_of, query_rows
from embedeval.metrics.correlation import spearman
from embedeval.scoring.bootstrap import (NO_INTERVAL, Interval, bootstrap_mean, bootstrap_summed, derive_seed,
                                        seeded_sample)
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.corrembed_paper import PAPER_CODE, CorrembedOptions, score_paper_code
from embedeval.scoring.parts import UnitResult
from embedeval.scoring.per_item import concat_per_item, ids_of, per_item_table
from embedeval.scoring.registry import PlanInputs, ScoreTask, ScoreUnit
from embedeval.scoring.schema import ScoreRow
from embedeval.scoring.tags import TagVectors, sparse_row_dots

TASK = "corrembed"


PER_ANCHOR = "per-anchor"      # mean over anchors of Pearson over every other item (self excluded)
ALL_PAIRS = "all-pairs"        # one correlation over all item pairs (or all pairs of a seeded item sample)


def choose_anchors(n: int, anchors: int | str, seed: int) -> np.ndarray:
    """Sorted anchor indices: every item when ``anchors`` is ``'all'`` or at least n, else a seeded sample."""
    if anchors == "all" or int(anchors) >= n:
        return np.arange(n, dtype=np.int64)
    return seeded_sample(n, int(anchors), seed)


def mean_of_defined(r: np.ndarray) -> tuple[float | None, np.ndarray, int]:
    """Mean of the finite per-anchor values, those values, and how many were undefined (dropped)."""
    r = np.asarray(r, dtype=np.float64)
    ok = np.isfinite(r)
    return (float(r[ok].mean()) if ok.any() else None), r[ok], int((~ok).sum())


def score_corrembed(ctx: TaskContext, emb: ModalityEmbeddings, tag_vectors: list[TagVectors],
                    per_item: list[pa.Table] | None = None) -> list[ScoreRow]:
    """Every corrembed row for every target, for one modality's embeddings, for each configured protocol.
    ``per_item``, when given, receives the per-anchor values of every per-anchor row
    (:mod:`embedeval.scoring.per_item`)."""
    emb = emb.first_per_item()
    options = ctx.settings.options_for(TASK) or CorrembedOptions()
    rows: list[ScoreRow] = []
    if PER_ANCHOR in options.protocols:
        for tv in tag_vectors:
            rows.extend(_score_target(ctx, emb, tv, per_item))
    if PAPER_CODE in options.protocols:
        rows.extend(score_paper_code(ctx, emb, tag_vectors, options))
    return rows


def _score_target(ctx: TaskContext, emb: ModalityEmbeddings, tv: TagVectors,
                  per_item: list[pa.Table] | None = None) -> list[ScoreRow]:
    s = ctx.settings
    target = tv.target
    has = tv.has_vector[emb.rows]
    base = join_notes(f"{int((~has).sum())} items without {target} tags excluded" if (~has).any() else None,
                      emb.note(),
                      f"modality={emb.modality}" if emb.modality != "image" else None)
    sub = emb.select(has)
    E = ctx.place(sub.source)
    T = tv.unit_sparse(sub.rows)  # (n, tags) CSR, aligned with E's rows
    n = E.n
    if n < 3:
        reason = (f"every {target} tag weighs 0 (carried by every tagged item, or weighted 0)"
                  if tv.weights.size and not np.any(tv.weights > 0) else f"{n} items with {target} tags")
        return [ctx.row(TASK, target, m, None, n, 0.0, protocol=protocol, note=join_notes(f"skipped: {reason}", base))
                for m, protocol in (("corrembed", PER_ANCHOR), ("pearson_all", ALL_PAIRS), ("spearman_all", ALL_PAIRS))]

    rows: list[ScoreRow] = []
    anchor_seed = derive_seed(s.seed, TASK, "anchors")
    anchors = choose_anchors(n, s.corr_anchors, anchor_seed)
    # the anchor sample is a parameter, not part of the score's identity: a catalogue crossing
    # corr_anchors items keeps comparing with itself night over night
    anchor_params = ({"anchors": "all"} if anchors.size == n else {"anchors": int(anchors.size), "seed": s.seed})

    def per_anchor_row(metric: str, r: np.ndarray, seconds: float, k: int | None = None, extra: str | None = None) -> None:
        value, ok, dropped = mean_of_defined(r)
        ci = bootstrap_mean(ok, s.bootstrap_resamples, derive_seed(s.seed, TASK, target, metric, k), s.confidence)
        note = join_notes(f"{dropped} anchors with undefined correlation dropped" if dropped else None, extra, base)
        rows.append(ctx.row(TASK, target, metric, value, ok.size, seconds, k=k, protocol=PER_ANCHOR,
                            params=anchor_params, ci_low=ci.low, ci_high=ci.high, note=note))
        if per_item is not None and ok.size:
            defined = anchors[np.isfinite(np.asarray(r, dtype=np.float64))]
            per_item.append(per_item_table(rows[-1], ids_of(ctx.catalogue.ids, sub.rows[defined]), ok))

    t_blocks = [T[lo:hi] for lo, hi in zip(E.offsets[:-1], E.offsets[1:])]
    with stopwatch() as t_gram:
        stats = gram_stats_blocks(E, t_blocks, runner=ctx.runner)
    with stopwatch() as t:
        anchor_sums = anchor_sums_from_stats(stats, anchors,
                                             lambda idx: (gather_rows(E, idx, ctx.runner), T[idx]))
        r = anchor_sums.pearson()
    per_anchor_row("corrembed", r, t_gram[0] + t[0])

    ks = [k for k in s.corr_ks if k < n]
    for k in s.corr_ks:
        if k >= n:
            rows.append(ctx.row(TASK, target, "corr_knn", None, 0, 0.0, k=k, protocol=PER_ANCHOR, params=anchor_params,
                                note=join_notes(f"skipped: k={k} needs more than {n} items", base)))
    if ks:
        kmax = max(ks)
        with stopwatch() as t:
            # one exact search serves corr_knn and knn_tag_similarity: the anchors' kmax nearest others
            top = topk_search(query_rows(E, anchors, ctx.runner), E, kmax, exclude=anchors,
                              chunk_rows=s.block_size, runner=ctx.runner)
            y = sparse_row_dots(T, np.repeat(anchors, kmax), top.indices.ravel()).reshape(top.indices.shape)
        by_k = pearson_over_prefixes(top.scores, y, ks)
        for j, k in enumerate(ks):
            per_anchor_row("corr_knn", by_k[:, j], t[0], k=k)
        base_rate = mean_pair_similarity(T)
        csum = np.cumsum(y, axis=1)
        for k in ks:
            per_anchor_row("knn_tag_similarity", csum[:, k - 1] / k, t[0], k=k,
                           extra=f"mean {target} tag similarity over all pairs {base_rate:.4f}")
        if s.corr_random_control:
            with stopwatch() as t:
                # one seeded draw of max(k) others per anchor; each k uses its first k (a uniform sample too)
                rng = np.random.default_rng(derive_seed(s.seed, TASK, target, "random"))
                others = sample_others(n, anchors, kmax, rng)
                a_rep = np.repeat(anchors, kmax)
                x = canonical_pair_scores(E, a_rep, others.ravel(), runner=ctx.runner).reshape(others.shape)
                yr = sparse_row_dots(T, a_rep, others.ravel()).reshape(others.shape)
                by_k_random = pearson_over_prefixes(x, yr, ks)
            for j, k in enumerate(ks):
                per_anchor_row("corr_random", by_k_random[:, j], t[0], k=k,
                               extra="control: k random items per anchor")

    with stopwatch() as t:
        value = all_pairs_from_stats(stats).r
    ci = _pearson_all_interval(ctx, E, t_blocks, stats, target)
    rows.append(ctx.row(TASK, target, "pearson_all", value, n, t_gram[0] + t[0], ci_low=ci.low, ci_high=ci.high,
                        protocol=ALL_PAIRS, params={"pairs": "all"},
                        note=join_notes(f"{n * (n - 1) // 2} pairs", base)))

    rows.append(_spearman_row(ctx, E, T, target, base))
    return rows


def mean_pair_similarity(T: "np.ndarray | sp.spmatrix") -> float:
    """Mean t_i.t_j over pairs i != j of unit rows, in O(nnz): (|sum t|^2 - N) / (N (N - 1))."""
    n = T.shape[0]
    total = np.asarray(T.sum(axis=0), dtype=np.float64).ravel()
    return float((total @ total - n) / (n * (n - 1)))


def _anchor_sums_block(e: np.ndarray, lo: int, t: Any, *, stats: GramStats) -> np.ndarray:
    """Block kernel: (b, 6) per-anchor Pearson sums of the block's rows (every row an anchor)."""
    sums = anchor_sums_from_stats(stats, np.arange(e.shape[0]), lambda idx: (e[idx], t[idx]))
    return np.column_stack([sums.n, sums.sx, sums.sy, sums.sxx, sums.syy, sums.sxy])


def _pearson_all_interval(ctx: TaskContext, E: BlockSource, t_blocks: list[Any], stats: GramStats,
                          target: str) -> Interval:
    """Resample anchors' per-anchor sums: a resample's pairs are every pair (i, j) of a drawn anchor i.

    The (N, 6) per-anchor sums are computed by block tasks from the merged Gram state; O(N) on the driver.
    """
    s = ctx.settings
    if s.bootstrap_resamples <= 0:
        return NO_INTERVAL
    matrix = np.empty((E.n, 6))
    for lo, hi, part in map_blocks_of(_anchor_sums_block, E, params={"stats": stats}, per_block=t_blocks,
                                      runner=ctx.runner):
        matrix[lo:hi] = part
    return bootstrap_summed(matrix, lambda batch: pearson_from_sums(*batch.T), s.bootstrap_resamples,
                            derive_seed(s.seed, TASK, target, "pearson_all"), s.confidence)


def _spearman_row(ctx: TaskContext, E: BlockSource, T: Any, target: str, base: str | None) -> ScoreRow:
    """Spearman over all pairs when they fit ``spearman_max_pairs`` (O(N^2) values, so only small N), else
    over every pair of a seeded sample of m items, m the largest with m(m-1)/2 <= spearman_max_pairs
    (exact on the sample; only the m rows are gathered, so the cost does not grow with N)."""
    s = ctx.settings
    n = E.n
    pairs = n * (n - 1) // 2
    limit = max(2, s.spearman_max_pairs or pairs)
    seed = derive_seed(s.seed, TASK, target, "spearman")
    with stopwatch() as t:
        if pairs <= limit:
            items = np.arange(n)
        else:
            m = max(2, int((1 + np.sqrt(1 + 8 * limit)) // 2))
            items = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
        iu, ju = np.triu_indices(items.size, 1)
        x = upper_triangle_scores(gather_rows(E, items, ctx.runner))
        y = sparse_row_dots(T, items[iu], items[ju])
        rho = spearman(x, y)
    sampled = items.size < n
    params = {"pairs": "sampled-items", "items": int(items.size), "seed": s.seed} if sampled else {"pairs": "all"}
    return ctx.row(TASK, target, "spearman_all", rho, n, t[0], protocol=ALL_PAIRS, params=params,
                   note=join_notes(f"{x.size} of {pairs} pairs" + (f" (all pairs of {items.size} seeded items)"
                                                                   if sampled else ""),
                                   "no bootstrap interval (pairs share items)", base))


def _run(ctx: TaskContext, emb: ModalityEmbeddings, tag_vectors: list[TagVectors]) -> UnitResult:
    per_item: list[pa.Table] = []
    rows = score_corrembed(ctx, emb, tag_vectors, per_item)
    return UnitResult(rows, per_item=concat_per_item(per_item))


def _plan(inputs: PlanInputs) -> list[ScoreUnit]:
    """One unit per modality in ``corr_modalities``; without a tags column a skipped row says why."""
    units: list[ScoreUnit] = []
    for m in inputs.settings.corr_modalities:
        if m not in inputs.modalities:
            continue
        if not inputs.has_tags:
            units.append(ScoreUnit(TASK, m, (), lambda ctx, e, tv, m=m: UnitResult([ctx.row(
                TASK, "all", "corrembed", None, 0, 0.0, protocol=PER_ANCHOR,
                note=f"skipped: the manifest has no 'tags' column ({m})")])))
            continue
        units.append(ScoreUnit(TASK, m, (m,), lambda ctx, e, tv, m=m: _run(ctx, e[m], tv)))
    return units


SCORE_TASK = ScoreTask(
    name=TASK, plan=_plan, options=CorrembedOptions, uses_tags=True, modalities=("image", "text", "sketch"), columns=("tags",),
    description="per-anchor correlation of embedding and weighted-tag similarity (CorrEmbed), corr_knn, "
                "knn_tag_similarity, pearson_all, spearman_all; paper-code CorrEmbed (groups) and its controls",
    headline=(dict(label="CorrEmbed", target="all", metric="corrembed", protocol=PER_ANCHOR),
              dict(label="CorrEmbed paper-code", target="all", metric="corrembed", protocol=PAPER_CODE),
              dict(label="paper-code floor (shuffled)", target="all", metric="control_shuffled_embeddings",
                   protocol=PAPER_CODE),
              dict(label="corr_knn@{k}", target="all", metric="corr_knn", k_setting="corr_knn_k")),
    plots=("embedeval.report.plots:corrembed_plots",),
    # controls are floors, not scores a model should raise or lower: never a regression
    no_direction=("corr_random", "control_random_vectors", "control_shuffled_embeddings", "control_binary_tags",
                  "control_random_tags", "control_shuffled_tags"))
