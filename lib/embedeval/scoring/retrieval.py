"""Retrieval: caption retrieval (image<->text, several captions per image) and label retrieval (sketch->image).

Caption retrieval follows the Flickr30K/MSCOCO protocol: a query is correct at K when any of its true
matches (an image's captions; a caption's image) is in its top K; ranks are 1-based ranks of the best true
match; rsum is the recalls in percent summed over both directions. R@K values are fractions in [0, 1].

Label retrieval (any a->b with labels; sketch->image by default): relevance = same label; mAP@all over the
whole gallery ranking, mAP@K over its first K, P@K. ``variant`` names the AP convention: ``ap=standard``
(AP divides by the relevant items R, P@K by K) or ``ap=zs-sbir`` (the ZS-SBIR code's min(K, R) divisor and
interpolated AP). Splits: ``all`` (every query against the whole gallery) and, with a ``class_split``
column, one split per value (seen/unseen) where queries *and* gallery are restricted to that value — the
zero-shot protocol, where unseen-class sketches are searched among unseen-class images.

Queries without any relevant item (an image without captions, a caption whose image is not embedded, a
sketch whose label no gallery item has, an item without a label) are skipped and counted in ``note``.
"""

from __future__ import annotations

import numpy as np

from embedeval.engine.ranks import best_positive_rank, positive_ranks
from embedeval.metrics import retrieval as rm
from embedeval.scoring.bootstrap import (bootstrap_gathered, bootstrap_mean, derive_seed, percentile_interval,
                                         resampled_means)
from embedeval.scoring.context import ModalityEmbeddings, ScoringError, TaskContext, join_notes, stopwatch
from embedeval.scoring.schema import ScoreRow

TASK = "retrieval"


def check_same_dim(a: ModalityEmbeddings, b: ModalityEmbeddings, model: str) -> None:
    if a.dim != b.dim:
        raise ScoringError(f"model {model!r}: {a.modality} vectors have dim {a.dim} but {b.modality} vectors "
                           f"dim {b.dim}; cross-modal retrieval needs one embedding space")


def matches_by_id(query_ids: np.ndarray, gallery_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of the gallery rows sharing each query's item id (gallery sorted by id)."""
    g = np.asarray(gallery_ids, dtype=str)
    if g.size > 1 and np.any(g[1:] < g[:-1]):
        raise ScoringError("gallery ids must be sorted (EmbeddingSet rows are sorted by id, sub)")
    q = np.asarray(query_ids, dtype=str)
    lo = np.searchsorted(g, q, side="left")
    hi = np.searchsorted(g, q, side="right")
    counts = hi - lo
    indptr = np.zeros(q.size + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in zip(lo, hi)]) if q.size else np.zeros(0, np.int64)
    return indptr, indices


def caption_ranks(ctx: TaskContext, queries: np.ndarray, gallery: np.ndarray, query_ids: np.ndarray,
                  gallery_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """1-based rank of each query's best true match (same item id) and the number of queries skipped.

    Returns ranks only for queries with at least one match (in query order).
    """
    indptr, indices = matches_by_id(query_ids, gallery_ids)
    has = np.diff(indptr) > 0
    keep = np.flatnonzero(has)
    sub_indptr = np.zeros(keep.size + 1, dtype=np.int64)
    np.cumsum(np.diff(indptr)[keep], out=sub_indptr[1:])
    sub_indices = np.concatenate([indices[indptr[i]:indptr[i + 1]] for i in keep]) if keep.size else indices[:0]
    if keep.size == 0:
        return np.zeros(0, dtype=np.int64), int((~has).sum())
    ranks = best_positive_rank(queries[keep], gallery, sub_indptr, sub_indices,
                               block_size=ctx.settings.block_size, runner=ctx.runner)
    return np.asarray(ranks, dtype=np.int64), int((~has).sum())


def score_caption_retrieval(ctx: TaskContext, images: ModalityEmbeddings, texts: ModalityEmbeddings) -> list[ScoreRow]:
    """image->text and text->image R@K, median/mean rank, and rsum (one image vector per item)."""
    check_same_dim(images, texts, ctx.model)
    images = images.first_per_item()
    s = ctx.settings
    rows: list[ScoreRow] = []
    hits_by_direction: dict[str, list[np.ndarray]] = {}
    total_seconds = 0.0
    base = join_notes(images.note(), texts.note())
    for direction, q, g in (("image->text", images, texts), ("text->image", texts, images)):
        with stopwatch() as t:
            ranks, skipped = caption_ranks(ctx, q.unit, g.unit, q.ids, g.ids)
        note = join_notes(f"{skipped} {q.modality} queries without a true match skipped" if skipped else None, base)
        seconds = t[0]
        total_seconds += seconds
        if ranks.size == 0:
            rows.append(ctx.row(TASK, direction, "R@1", None, 0, seconds, k=1, note=join_notes("skipped: no query has a match", note)))
            continue
        hits_by_direction[direction] = []
        for k in s.recall_ks:
            hits = rm.recall_at_k(ranks, k).values
            hits_by_direction[direction].append(hits)
            ci = bootstrap_mean(hits, s.bootstrap_resamples, derive_seed(s.seed, TASK, direction, k), s.confidence)
            rows.append(ctx.row(TASK, direction, f"R@{k}", float(hits.mean()), ranks.size, seconds, k=k,
                                ci_low=ci.low, ci_high=ci.high, note=note))
        for metric, value, fn in (("median_rank", rm.median_rank(ranks), np.median),
                                  ("mean_rank", rm.mean_rank(ranks), np.mean)):
            ci = bootstrap_gathered(ranks.astype(np.float64), lambda a, f=fn: f(a, axis=1), s.bootstrap_resamples,
                                    derive_seed(s.seed, TASK, direction, metric), s.confidence)
            rows.append(ctx.row(TASK, direction, metric, value, ranks.size, seconds,
                                ci_low=ci.low, ci_high=ci.high, note=note))
    if len(hits_by_direction) == 2:
        rows.append(_rsum_row(ctx, hits_by_direction, base, total_seconds))
    return rows


def _rsum_row(ctx: TaskContext, hits_by_direction: dict[str, list[np.ndarray]], note: str | None,
              seconds: float) -> ScoreRow:
    """rsum = every R@K in percent over both directions; the bootstrap resamples each direction's queries."""
    s = ctx.settings
    value = sum(100.0 * h.mean() for hits in hits_by_direction.values() for h in hits)
    stats = np.zeros(max(s.bootstrap_resamples, 0))
    for direction, hits in hits_by_direction.items():
        seed = derive_seed(s.seed, TASK, direction, "rsum")
        # one index draw per direction, shared by its K's, so the sum keeps their dependence
        stats = stats + resampled_means(100.0 * np.sum(hits, axis=0), s.bootstrap_resamples, seed)
    ci = percentile_interval(stats, s.confidence) if s.bootstrap_resamples > 0 else None
    n = sum(h[0].size for h in hits_by_direction.values())
    ks = ",".join(str(k) for k in s.recall_ks)
    return ctx.row(TASK, "image<->text", "rsum", value, n, seconds, ci_low=ci.low if ci else None,
                   ci_high=ci.high if ci else None, variant=f"ks={ks}", note=note)


def score_label_retrieval(ctx: TaskContext, queries: ModalityEmbeddings, gallery: ModalityEmbeddings) -> list[ScoreRow]:
    """mAP@all, mAP@K and P@K of a->b retrieval where relevance is the same label, per class split."""
    check_same_dim(queries, gallery, ctx.model)
    queries, gallery = queries.first_per_item(), gallery.first_per_item()
    cat = ctx.catalogue
    direction = f"{queries.modality}->{gallery.modality}"
    if cat.labels is None:
        return [ctx.row(TASK, direction, "mAP@all", None, 0, 0.0, note="skipped: the manifest has no 'label' column")]
    q_labels, g_labels = cat.labels[queries.rows], cat.labels[gallery.rows]
    q_known, g_known = _known(q_labels), _known(g_labels)
    base = join_notes(
        f"{int((~q_known).sum())} unlabelled queries skipped" if (~q_known).any() else None,
        f"{int((~g_known).sum())} unlabelled gallery items dropped" if (~g_known).any() else None,
        queries.note(), gallery.note() if gallery is not queries else None)
    splits: list[tuple[str, np.ndarray, np.ndarray]] = [("all", q_known, g_known)]
    if cat.class_split is not None:
        qs, gs = cat.class_split[queries.rows], cat.class_split[gallery.rows]
        for value in sorted({v for v in qs if v is not None}):
            splits.append((str(value), q_known & (qs == value), g_known & (gs == value)))
    rows: list[ScoreRow] = []
    for split, qmask, gmask in splits:
        rows.extend(_label_split(ctx, direction, split, queries, gallery, qmask, gmask, q_labels, g_labels, base))
    return rows


def _known(labels: np.ndarray) -> np.ndarray:
    return np.fromiter((lab is not None and lab == lab and lab != "" for lab in labels), dtype=bool, count=len(labels))


def _label_split(ctx: TaskContext, direction: str, split: str, queries: ModalityEmbeddings,
                 gallery: ModalityEmbeddings, qmask: np.ndarray, gmask: np.ndarray, q_labels: np.ndarray,
                 g_labels: np.ndarray, base: str | None) -> list[ScoreRow]:
    s = ctx.settings
    variant = f"ap={s.ap_convention}"
    same_space = queries.modality == gallery.modality
    qi, gi = np.flatnonzero(qmask), np.flatnonzero(gmask)
    gl = np.asarray(g_labels[gi], dtype=str)
    ql = np.asarray(q_labels[qi], dtype=str)
    labels, g_count = np.unique(gl, return_counts=True)
    n_rel = np.zeros(qi.size, dtype=np.int64)
    pos = np.searchsorted(labels, ql)
    found = (pos < labels.size) & (labels[np.minimum(pos, labels.size - 1)] == ql) if labels.size else np.zeros(qi.size, bool)
    n_rel[found] = g_count[pos[found]]
    if same_space:
        # the query itself is in the gallery and is not a result
        n_rel = np.maximum(n_rel - np.isin(queries.ids[qi], gallery.ids[gi]).astype(np.int64), 0)
    ok = n_rel > 0
    note = join_notes(f"{int((~ok).sum())} queries without a relevant item skipped" if (~ok).any() else None,
                      f"gallery={gi.size}", base)
    metrics = (["mAP@all"] + [f"mAP@{k}" for k in s.map_cutoffs] + [f"P@{k}" for k in s.precision_ks])
    if not ok.any():
        return [ctx.row(TASK, direction, m, None, 0, 0.0, split=split, variant=variant,
                        note=join_notes("skipped: no query has a relevant item", note)) for m in metrics]
    qi, ql, n_rel = qi[ok], ql[ok], n_rel[ok]
    if s.label_max_queries is not None and qi.size > s.label_max_queries:
        # Exact ranks over the whole gallery cost O(queries x gallery); a seeded uniform sample of queries
        # keeps every number exact for the queries it covers, and n and the note say how many.
        rng = np.random.default_rng(derive_seed(s.seed, TASK, direction, split, "queries"))
        pick = np.sort(rng.choice(qi.size, size=s.label_max_queries, replace=False))
        note = join_notes(f"{s.label_max_queries} of {qi.size} queries sampled (seeded)", note)
        qi, ql, n_rel = qi[pick], ql[pick], n_rel[pick]
    with stopwatch() as t:
        lists = positive_ranks(queries.unit[qi], gallery.unit[gi], ql, gl, exclude_same_index=same_space,
                               block_size=s.block_size, runner=ctx.runner)
    indptr, ranks = lists.indptr, lists.ranks
    if not np.array_equal(lists.n_relevant, n_rel):
        raise ScoringError(f"{direction}: relevant counts disagree with the engine's rank lists")
    seconds = t[0]
    per_query: dict[str, tuple[np.ndarray, int | None]] = {
        "mAP@all": (rm.average_precision_from_ranks(indptr, ranks, n_rel, None, s.ap_convention).values, None)}
    for k in s.map_cutoffs:
        per_query[f"mAP@{k}"] = (rm.average_precision_from_ranks(indptr, ranks, n_rel, k, s.ap_convention).values, k)
    for k in s.precision_ks:
        per_query[f"P@{k}"] = (rm.precision_at_k(indptr, ranks, n_rel, k, s.ap_convention).values, k)
    rows = []
    for metric, (values, k) in per_query.items():
        values = np.asarray(values, dtype=np.float64)
        ci = bootstrap_mean(values, s.bootstrap_resamples, derive_seed(s.seed, TASK, direction, split, metric),
                            s.confidence)
        rows.append(ctx.row(TASK, direction, metric, float(values.mean()), values.size, seconds, k=k, split=split,
                            variant=variant, ci_low=ci.low, ci_high=ci.high, note=note))
    return rows
