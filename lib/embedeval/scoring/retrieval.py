"""Retrieval: caption retrieval (image<->text, several captions per image) and label retrieval (sketch->image).

Caption retrieval follows the Flickr30K/MSCOCO protocol: a query is correct at K when any of its true
matches (an image's captions; a caption's image) is in its top K; ranks are 1-based ranks of the best true
match; rsum is the recalls in percent summed over both directions. R@K values are fractions in [0, 1].

Label retrieval (any a->b with labels; sketch->image by default): relevance = same label; mAP@all over the
whole gallery ranking, mAP@K over its first K, P@K. ``protocol`` names the AP convention: ``standard``
(AP divides by the relevant items R, P@K by K) or ``zs-sbir`` (the ZS-SBIR code's min(K, R) divisor and
interpolated AP). A seeded query sample (``caption_max_queries``, ``label_max_queries``) is recorded in
``params`` as ``{"queries": m, "seed": s}``: the same score, estimated on fewer queries. Splits: ``all`` (every query against the whole gallery) and, with a ``class_split``
column, one split per value (seen/unseen) where queries *and* gallery are restricted to that value — the
zero-shot protocol, where unseen-class sketches are searched among unseen-class images.

Queries without any relevant item (an image without captions, a caption whose image is not embedded, a
sketch whose label no gallery item has, an item without a label) are skipped and counted in ``note``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from embedeval.engine.ranks import Relevance, rank_positives
from embedeval.engine.runner import TileRunner
from embedeval.engine.sources import BlockSource, Centred
from embedeval.engine.tiles import query_rows, reduce_blocks
from embedeval.metrics import retrieval as rm
from embedeval.scoring.bootstrap import (bootstrap_gathered, bootstrap_mean, derive_seed, percentile_interval,
                                         resampled_means, seeded_sample)
from embedeval.scoring.context import ModalityEmbeddings, ScoringError, TaskContext, join_notes, stopwatch
from embedeval.scoring.parts import UnitResult
from embedeval.scoring.per_item import concat_per_item, ids_of, per_item_table
from embedeval.scoring.registry import PlanInputs, ScoreTask, ScoreUnit
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


@dataclass(frozen=True)
class CaptionRanks:
    """Best-match ranks of one direction: ``ranks`` for the scored queries, and what was left out."""

    ranks: np.ndarray      # (scored,) int64, 1-based
    skipped: int           # queries without any true match
    sampled_from: int      # queries with a match before sampling (== ranks.size when not sampled)
    queries: np.ndarray    # (scored,) int64 positions of the scored queries in the query embeddings


def caption_ranks(ctx: TaskContext, queries: ModalityEmbeddings, gallery: ModalityEmbeddings,
                  centred: bool = False) -> CaptionRanks:
    """1-based rank of each query's best true match (the same item) over the whole gallery.

    Queries without a match are skipped and counted; with ``score.caption_max_queries`` a seeded sample
    of the others is ranked (exact on the sample). ``centred``: both sides with their modality mean
    removed (the modality gap's variant). The result is shared by every task of the model that asks for
    the same direction (retrieval and the modality gap rank image->text once).
    """
    s = ctx.settings
    key = ("caption_ranks", queries.modality, gallery.modality, centred, s.caption_max_queries)
    if key in ctx.shared:
        return ctx.shared[key]
    relevance = Relevance(q_codes=queries.rows, g_codes=gallery.rows)
    has = relevance.positive_counts(0, len(queries)) > 0
    keep = np.flatnonzero(has)
    sampled_from = keep.size
    if s.caption_max_queries is not None and keep.size > s.caption_max_queries:
        keep = keep[seeded_sample(keep.size, s.caption_max_queries,
                                  derive_seed(s.seed, TASK, f"{queries.modality}->{gallery.modality}", "queries"))]
    if keep.size == 0:
        result = CaptionRanks(np.zeros(0, dtype=np.int64), int((~has).sum()), 0, keep)
    else:
        q_src, g_src = ctx.place(queries.source), ctx.place(gallery.source)
        if centred:
            q_src = Centred(q_src, modality_mean(q_src, ctx.runner))
            g_src = Centred(g_src, modality_mean(g_src, ctx.runner))
        lists = rank_positives(query_rows(q_src, keep, ctx.runner), g_src,
                               Relevance(q_codes=queries.rows[keep], g_codes=gallery.rows), best_only=True,
                               chunk_rows=s.block_size, runner=ctx.runner)
        result = CaptionRanks(np.asarray(lists.ranks, dtype=np.int64), int((~has).sum()), sampled_from, keep)
    ctx.shared[key] = result
    return result


def _sum_rows(block: np.ndarray, lo: int, _: None) -> np.ndarray:
    return block.astype(np.float64).sum(axis=0)


def modality_mean(source: BlockSource, runner: TileRunner | None = None) -> np.ndarray:
    """The float64 mean row of a source (one pass of block tasks)."""
    return reduce_blocks(_sum_rows, source, np.add, np.zeros(source.dim), runner=runner) / max(source.n, 1)


def sample_params(result: CaptionRanks, seed: int) -> dict[str, int] | None:
    """``params`` of a row computed on a seeded query sample (None when every query was ranked)."""
    if result.ranks.size < result.sampled_from:
        return {"queries": int(result.ranks.size), "seed": seed}
    return None


def sample_note(result: CaptionRanks) -> str | None:
    if result.ranks.size < result.sampled_from:
        return f"{result.ranks.size} of {result.sampled_from} queries sampled (seeded)"
    return None


def score_caption_retrieval(ctx: TaskContext, images: ModalityEmbeddings, texts: ModalityEmbeddings,
                            per_item: list[pa.Table] | None = None) -> list[ScoreRow]:
    """image->text and text->image R@K, median/mean rank, and rsum (one image vector per item).
    ``per_item``, when given, receives every R@K row's per-query hits."""
    check_same_dim(images, texts, ctx.model)
    images = images.first_per_item()
    s = ctx.settings
    rows: list[ScoreRow] = []
    hits_by_direction: dict[str, list[np.ndarray]] = {}
    total_seconds = 0.0
    base = join_notes(images.note(), texts.note())
    for direction, q, g in (("image->text", images, texts), ("text->image", texts, images)):
        with stopwatch() as t:
            result = caption_ranks(ctx, q, g)
        ranks, skipped = result.ranks, result.skipped
        note = join_notes(f"{skipped} {q.modality} queries without a true match skipped" if skipped else None,
                          sample_note(result), base)
        seconds = t[0]
        params = sample_params(result, s.seed)
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
                                params=params, ci_low=ci.low, ci_high=ci.high, note=note))
            if per_item is not None:
                per_item.append(per_item_table(rows[-1], ids_of(ctx.catalogue.ids, q.rows[result.queries]),
                                               hits, q.subs[result.queries]))
        for metric, value, fn in (("median_rank", rm.median_rank(ranks), np.median),
                                  ("mean_rank", rm.mean_rank(ranks), np.mean)):
            ci = bootstrap_gathered(ranks.astype(np.float64), lambda a, f=fn: f(a, axis=1), s.bootstrap_resamples,
                                    derive_seed(s.seed, TASK, direction, metric), s.confidence)
            rows.append(ctx.row(TASK, direction, metric, value, ranks.size, seconds, params=params,
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
                   ci_high=ci.high if ci else None, params={"ks": list(s.recall_ks)}, note=note)


#: Turns the (placed) query and gallery sources into the ones ranked: a text bridge, centring...
SourceTransform = Callable[[BlockSource, BlockSource], "tuple[BlockSource, BlockSource]"]


def score_label_retrieval(ctx: TaskContext, queries: ModalityEmbeddings, gallery: ModalityEmbeddings, *,
                          task: str = TASK, variant: str | None = None,
                          transform: SourceTransform | None = None, note: str | None = None,
                          per_item: list[pa.Table] | None = None) -> list[ScoreRow]:
    """mAP@all, mAP@K and P@K of a->b retrieval where relevance is the same label, per class split.
    ``per_item``, when given, receives every row's per-query AP or precision.

    ``transform`` (e.g. the zero-shot task's text bridges) maps the whole query and gallery sources to
    the vectors actually ranked; its rows carry ``task`` and the protocol ``<variant>`` (``<variant>:zs-sbir``
    under the ZS-SBIR AP convention), and ``note``. Queries, relevance and bootstrap draws are those of
    the plain direction, so variants are compared on the same queries.
    """
    check_same_dim(queries, gallery, ctx.model)
    queries, gallery = queries.first_per_item(), gallery.first_per_item()
    cat = ctx.catalogue
    direction = f"{queries.modality}->{gallery.modality}"
    if cat.labels is None:
        return [ctx.row(task, direction, "mAP@all", None, 0, 0.0, protocol=_protocol(ctx, variant),
                        note="skipped: the manifest has no 'label' column")]
    q_codes, g_codes = cat.labels.codes[queries.rows], cat.labels.codes[gallery.rows]
    q_known, g_known = q_codes >= 0, g_codes >= 0
    base = join_notes(
        f"{int((~q_known).sum())} unlabelled queries skipped" if (~q_known).any() else None,
        f"{int((~g_known).sum())} unlabelled gallery items dropped" if (~g_known).any() else None,
        queries.note(), gallery.note() if gallery is not queries else None, note)
    splits: list[tuple[str, np.ndarray, np.ndarray]] = [("all", q_known, g_known)]
    if cat.class_split is not None:
        qs, gs = cat.class_split.take(queries.rows), cat.class_split.take(gallery.rows)
        for value in qs.values:
            if qs.mask(value).any():
                splits.append((value, q_known & qs.mask(value), g_known & gs.mask(value)))
    rows: list[ScoreRow] = []
    for split, qmask, gmask in splits:
        rows.extend(_label_split(ctx, direction, split, queries, gallery, qmask, gmask, q_codes, g_codes, base,
                                 task, variant, transform, per_item))
    return rows


def _protocol(ctx: TaskContext, variant: str | None) -> str:
    convention = ctx.settings.ap_convention   # the AP / P@K definition: "standard" or the ZS-SBIR code's
    if variant is None:
        return convention
    return variant if convention == "standard" else f"{variant}:{convention}"


def _label_split(ctx: TaskContext, direction: str, split: str, queries: ModalityEmbeddings,
                 gallery: ModalityEmbeddings, qmask: np.ndarray, gmask: np.ndarray, q_codes: np.ndarray,
                 g_codes: np.ndarray, base: str | None, task: str = TASK, variant: str | None = None,
                 transform: SourceTransform | None = None, per_item: list[pa.Table] | None = None) -> list[ScoreRow]:
    s = ctx.settings
    protocol = _protocol(ctx, variant)
    same_space = queries.modality == gallery.modality
    qi, gi = np.flatnonzero(qmask), np.flatnonzero(gmask)
    exclude = None
    if same_space:
        # the query itself is in the gallery and is not a result
        where = np.full(len(ctx.catalogue), -1, dtype=np.int64)
        where[gallery.rows[gi]] = np.arange(gi.size)
        exclude = where[queries.rows[qi]]
    relevance = Relevance(q_codes=q_codes[qi], g_codes=g_codes[gi], exclude=exclude)
    n_rel = relevance.positive_counts(0, qi.size)
    ok = n_rel > 0
    note = join_notes(f"{int((~ok).sum())} queries without a relevant item skipped" if (~ok).any() else None,
                      f"gallery={gi.size}", base)
    metrics = (["mAP@all"] + [f"mAP@{k}" for k in s.map_cutoffs] + [f"P@{k}" for k in s.precision_ks])
    if not ok.any():
        return [ctx.row(task, direction, m, None, 0, 0.0, split=split, protocol=protocol,
                        note=join_notes("skipped: no query has a relevant item", note)) for m in metrics]
    pick = np.flatnonzero(ok)
    params = None
    if s.label_max_queries is not None and pick.size > s.label_max_queries:
        # Exact ranks over the whole gallery cost O(queries x gallery); a seeded uniform sample of queries
        # keeps every number exact for the queries it covers, and n and the note say how many.
        sample = seeded_sample(pick.size, s.label_max_queries, derive_seed(s.seed, TASK, direction, split, "queries"))
        note = join_notes(f"{s.label_max_queries} of {pick.size} queries sampled (seeded)", note)
        params = {"queries": int(s.label_max_queries), "seed": s.seed}
        pick = pick[sample]
    n_rel = n_rel[pick]
    q_all, g_all = ctx.place(queries.source), ctx.place(gallery.source)
    if transform is not None:
        q_all, g_all = transform(q_all, g_all)
    q_src = query_rows(q_all, qi[pick], ctx.runner)
    g_src = g_all.select(gi)
    with stopwatch() as t:
        lists = rank_positives(q_src, g_src, Relevance(q_codes=q_codes[qi][pick], g_codes=g_codes[gi],
                                                       exclude=None if exclude is None else exclude[pick]),
                               best_only=False, chunk_rows=s.block_size, runner=ctx.runner)
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
        rows.append(ctx.row(task, direction, metric, float(values.mean()), values.size, seconds, k=k, split=split,
                            protocol=protocol, params=params, ci_low=ci.low, ci_high=ci.high, note=note))
        if per_item is not None:
            per_item.append(per_item_table(rows[-1], ids_of(ctx.catalogue.ids, queries.rows[qi[pick]]), values))
    return rows


def _with_per_item(score: "Callable[[list[pa.Table]], list[ScoreRow]]") -> UnitResult:
    per_item: list[pa.Table] = []
    rows = score(per_item)
    return UnitResult(rows, per_item=concat_per_item(per_item))


def _plan(inputs: PlanInputs) -> list[ScoreUnit]:
    """image<->text when the model has both; one unit per ``label_pairs`` direction it has."""
    have = inputs.modalities
    units: list[ScoreUnit] = []
    if {"image", "text"} <= have:
        units.append(ScoreUnit(TASK, "image<->text", ("image", "text"), lambda ctx, e, tv: _with_per_item(
            lambda out: score_caption_retrieval(ctx, e["image"], e["text"], out))))
    for pair in inputs.settings.label_pairs:
        a, _, b = pair.partition("->")
        if a in have and b in have:
            units.append(ScoreUnit(TASK, pair, tuple(sorted({a, b})), lambda ctx, e, tv, a=a, b=b: _with_per_item(
                lambda out: score_label_retrieval(ctx, e[a], e[b], per_item=out))))
    return units


SCORE_TASK = ScoreTask(
    name=TASK, plan=_plan, modalities=("image", "text", "sketch"), columns=("captions", "label", "class_split"),
    description="image<->text R@K, rsum, median/mean rank; label retrieval (sketch->image) mAP@all, mAP@K, P@K",
    headline=(dict(label="i→t R@1", target="image->text", metric="R@1"),
              dict(label="t→i R@1", target="text->image", metric="R@1"),
              dict(label="rsum", metric="rsum"),
              dict(label="sketch mAP@all ({split})", target="sketch->image", metric="mAP@all",
                   split=["unseen", "test", "all", "seen"])),
    plots=("embedeval.report.plots:retrieval_plots",), lower_is_better=("median_rank", "mean_rank"))
