"""CorrEmbed: how well embedding similarity matches tag similarity, per tag category and overall.

Rows per target (a tag category or ``all``), all from cosine similarities of L2-normalised embeddings
(one vector per item) and of weighted tag vectors (:mod:`embedeval.scoring.tags`):

- ``corrembed``: the paper's metric. For each anchor i, the Pearson correlation over all other items j of
  the two similarities; averaged over anchors. Anchors whose correlation is undefined (constant tag
  similarity, e.g. everyone shares the anchor's only tag) are dropped and counted. ``variant`` says which
  anchors: ``anchors=<n>,seed=<s>`` (seeded random, the paper's 1,000) or ``anchors=all``.
- ``corr_knn`` (k): the same per-anchor correlation over the k items nearest the anchor in embedding space
  only; ``corr_random`` (k): over k random items, the control that says how much of corr_knn is the
  neighbourhood rather than the sample size. Caveat: an anchor whose k neighbours all carry its tags
  has a constant tag similarity, so its correlation is undefined and it is dropped (counted in ``note``);
  that happens most for the *best* models, so read corr_knn with its n and with:
- ``knn_tag_similarity`` (k): the mean tag cosine between an anchor and its k nearest neighbours — what
  share of "what the recommender shows" humans call alike; always defined. Its note gives the mean tag
  cosine over all pairs, the value a random neighbourhood would get.
- ``pearson_all``: one Pearson over all N(N-1)/2 pairs (exact, from merged sums).
- ``spearman_all``: one Spearman over all pairs, or a seeded sample of pairs; ``variant`` says which.

Items without a tag vector in a target are excluded from it and counted in ``note``.
Intervals: bootstrap over anchors (per-anchor r; per-anchor sums for pearson_all).
"""

from __future__ import annotations

import numpy as np

from embedeval.engine.gram import AnchorSums, pearson_all_pairs_cosine, pearson_from_sums, per_anchor_sums_cosine
from embedeval.engine.knn import exact_topk, per_anchor_knn_pearson, per_anchor_random_pearson
from embedeval.engine.runner import TileRunner
from embedeval.metrics.correlation import spearman_all_pairs
from embedeval.scoring.bootstrap import NO_INTERVAL, Interval, bootstrap_mean, bootstrap_summed, derive_seed
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.schema import ScoreRow
from embedeval.scoring.tags import TagVectors

TASK = "corrembed"
_GATHER_ELEMENTS = 1 << 22  # anchors x neighbours x tag dims gathered at once (32 MiB of float64)


def choose_anchors(n: int, anchors: int | str, seed: int) -> tuple[np.ndarray, str]:
    """Sorted anchor indices and the variant string naming how they were chosen."""
    if anchors == "all" or int(anchors) >= n:
        return np.arange(n, dtype=np.int64), "anchors=all"
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(anchors), replace=False)).astype(np.int64), f"anchors={anchors},seed={seed}"


def mean_of_defined(r: np.ndarray) -> tuple[float | None, np.ndarray, int]:
    """Mean of the finite per-anchor values, those values, and how many were undefined (dropped)."""
    r = np.asarray(r, dtype=np.float64)
    ok = np.isfinite(r)
    return (float(r[ok].mean()) if ok.any() else None), r[ok], int((~ok).sum())


def score_corrembed(ctx: TaskContext, emb: ModalityEmbeddings, tag_vectors: list[TagVectors]) -> list[ScoreRow]:
    """Every corrembed row for every target, for one modality's embeddings."""
    emb = emb.first_per_item()
    rows: list[ScoreRow] = []
    for tv in tag_vectors:
        rows.extend(_score_target(ctx, emb, tv))
    return rows


def _score_target(ctx: TaskContext, emb: ModalityEmbeddings, tv: TagVectors) -> list[ScoreRow]:
    s = ctx.settings
    target = tv.target
    has = tv.has_vector[emb.rows]
    base = join_notes(f"{int((~has).sum())} items without {target} tags excluded" if (~has).any() else None,
                      emb.note(),
                      f"modality={emb.modality}" if emb.modality != "image" else None)
    E = emb.unit[has]
    T = tv.unit_rows(emb.rows[has])
    n = E.shape[0]
    if n < 3:
        reason = (f"every {target} tag weighs 0 (carried by every tagged item, or weighted 0)"
                  if tv.weights.size and not np.any(tv.weights > 0) else f"{n} items with {target} tags")
        return [ctx.row(TASK, target, m, None, n, 0.0, note=join_notes(f"skipped: {reason}", base))
                for m in ("corrembed", "pearson_all", "spearman_all")]

    rows: list[ScoreRow] = []
    anchor_seed = derive_seed(s.seed, TASK, "anchors")
    anchors, variant = choose_anchors(n, s.corr_anchors, anchor_seed)
    if variant != "anchors=all":
        variant = f"anchors={len(anchors)},seed={s.seed}"

    def per_anchor_row(metric: str, r: np.ndarray, seconds: float, k: int | None = None, extra: str | None = None) -> None:
        value, ok, dropped = mean_of_defined(r)
        ci = bootstrap_mean(ok, s.bootstrap_resamples, derive_seed(s.seed, TASK, target, metric, k), s.confidence)
        note = join_notes(f"{dropped} anchors with undefined correlation dropped" if dropped else None, extra, base)
        rows.append(ctx.row(TASK, target, metric, value, ok.size, seconds, k=k, variant=variant,
                            ci_low=ci.low, ci_high=ci.high, note=note))

    with stopwatch() as t:
        anchor_sums = per_anchor_sums_cosine(E, T, anchors)
        r = anchor_sums.pearson()
    per_anchor_row("corrembed", r, t[0])

    ks = [k for k in s.corr_ks if k < n]
    for k in s.corr_ks:
        if k >= n:
            rows.append(ctx.row(TASK, target, "corr_knn", None, 0, 0.0, k=k, variant=variant,
                                note=join_notes(f"skipped: k={k} needs more than {n} items", base)))
    if ks:
        with stopwatch() as t:
            by_k = per_anchor_knn_pearson(E, T, ks, anchors=anchors, block_size=s.block_size, runner=ctx.runner)
        for k in ks:
            per_anchor_row("corr_knn", by_k[k], t[0], k=k)
        with stopwatch() as t:
            sims = knn_tag_similarity(E, T, anchors, ks, ctx.settings.block_size, ctx.runner)
        base_rate = mean_pair_similarity(T)
        for k in ks:
            per_anchor_row("knn_tag_similarity", sims[k], t[0], k=k,
                           extra=f"mean {target} tag similarity over all pairs {base_rate:.4f}")
        if s.corr_random_control:
            for k in ks:
                with stopwatch() as t:
                    r = per_anchor_random_pearson(E, T, k, seed=derive_seed(s.seed, TASK, target, "random", k),
                                                  anchors=anchors)
                per_anchor_row("corr_random", r, t[0], k=k, extra="control: k random items per anchor")

    with stopwatch() as t:
        value = pearson_all_pairs_cosine(E, T).r
    ci = _pearson_all_interval(ctx, E, T, target, anchor_sums if len(anchors) == n else None)
    rows.append(ctx.row(TASK, target, "pearson_all", value, n, t[0], ci_low=ci.low, ci_high=ci.high,
                        variant="exact", note=join_notes(f"{n * (n - 1) // 2} pairs", base)))

    rows.append(_spearman_row(ctx, E, T, target, base))
    return rows


def knn_tag_similarity(E: np.ndarray, T: np.ndarray, anchors: np.ndarray, ks: list[int], block_size: int,
                       runner: TileRunner | None) -> dict[int, np.ndarray]:
    """Per anchor and k: mean of t_i.t_j over its k nearest neighbours j != i by e_i.e_j.

    One top-(max k + 1) search of the anchors against all items; the anchor itself is removed from its
    list (or, when exact duplicates crowd it out, the last entry is). Memory O(A x k + engine tiles).
    """
    kmax = max(ks)
    _, idx = exact_topk(E[anchors], E, kmax + 1, block_size=block_size, runner=runner)
    is_self = idx == anchors[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), idx.shape[1] - 1)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(idx.shape[0]), drop] = False
    nbrs = idx[keep].reshape(idx.shape[0], idx.shape[1] - 1)[:, :kmax]
    Tf = np.asarray(T, dtype=np.float64)
    y = np.empty(nbrs.shape)
    step = max(1, _GATHER_ELEMENTS // max(1, kmax * Tf.shape[1]))
    for s in range(0, nbrs.shape[0], step):
        y[s:s + step] = np.einsum("ad,akd->ak", Tf[anchors[s:s + step]], Tf[nbrs[s:s + step]])
    csum = np.cumsum(y, axis=1)
    return {k: csum[:, k - 1] / k for k in ks}


def mean_pair_similarity(T: np.ndarray) -> float:
    """Mean t_i.t_j over pairs i != j of unit rows, in O(N d): (|sum t|^2 - N) / (N (N - 1))."""
    n = T.shape[0]
    total = np.asarray(T, dtype=np.float64).sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def _pearson_all_interval(ctx: TaskContext, E: np.ndarray, T: np.ndarray, target: str,
                          all_anchor_sums: AnchorSums | None) -> Interval:
    """Resample anchors' per-anchor sums: a resample's pairs are every pair (i, j) of a drawn anchor i."""
    s = ctx.settings
    if s.bootstrap_resamples <= 0:
        return NO_INTERVAL
    sums = all_anchor_sums if all_anchor_sums is not None else per_anchor_sums_cosine(E, T, np.arange(E.shape[0]))
    matrix = np.column_stack([sums.n, sums.sx, sums.sy, sums.sxx, sums.syy, sums.sxy])
    return bootstrap_summed(matrix, lambda batch: pearson_from_sums(*batch.T), s.bootstrap_resamples,
                            derive_seed(s.seed, TASK, target, "pearson_all"), s.confidence)


def _spearman_row(ctx: TaskContext, E: np.ndarray, T: np.ndarray, target: str, base: str | None) -> ScoreRow:
    s = ctx.settings
    n = E.shape[0]
    pairs = n * (n - 1) // 2
    seed = derive_seed(s.seed, TASK, target, "spearman")
    with stopwatch() as t:
        result = spearman_all_pairs(E, T, max_pairs=max(2, s.spearman_max_pairs or pairs), seed=seed)
    variant = f"sampled:{result.n_pairs},seed={s.seed}" if result.sampled else "exact"
    return ctx.row(TASK, target, "spearman_all", result.rho, n, t[0], variant=variant,
                   note=join_notes(f"{result.n_pairs} of {result.n_total_pairs} pairs",
                                   "no bootstrap interval (pairs share items)", base))
