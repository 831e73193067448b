"""Modality gap (Liang et al., "Mind the Gap"): CLIP-style models put images and texts in separate cones.

- ``centroid_distance``: Euclidean distance between the mean normalised image and the mean normalised
  text embedding (0 = no gap; up to 2).
- ``gap_gain@R@1``: image->text R@1 after removing each modality's mean from its own vectors and
  re-normalising, minus R@1 before (a fraction; positive = the gap was costing retrieval accuracy).

One image vector per item; every caption is a text vector. Intervals: centroid distance by a Poisson
bootstrap over items (an item's image and captions carry one weight, computed inside the block tasks);
gap gain by resampling queries (paired: the same queries before and after). The uncentred image->text
ranks are the retrieval task's own (computed once per model).
"""

from __future__ import annotations

import numpy as np

from embedeval.engine.sources import BlockSource
from embedeval.engine.tiles import reduce_blocks
from embedeval.scoring.bootstrap import bootstrap_mean, derive_seed, percentile_interval, poisson_weights
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.parts import UnitResult
from embedeval.scoring.registry import PlanInputs, ScoreTask, ScoreUnit
from embedeval.scoring.retrieval import caption_ranks, check_same_dim, modality_mean, sample_note
from embedeval.scoring.schema import ScoreRow

TASK = "modality_gap"
TARGET = "image|text"


def centre_and_normalise(unit: np.ndarray) -> np.ndarray:
    """Subtract the modality mean and re-normalise (rows that become zero stay zero)."""
    centred = unit.astype(np.float64) - unit.mean(axis=0, dtype=np.float64)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return (centred / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def score_modality_gap(ctx: TaskContext, images: ModalityEmbeddings, texts: ModalityEmbeddings) -> list[ScoreRow]:
    check_same_dim(images, texts, ctx.model)
    s = ctx.settings
    images = images.first_per_item()
    note = join_notes(images.note(), texts.note())
    rows = []
    img_src, txt_src = ctx.place(images.source), ctx.place(texts.source)

    with stopwatch() as t:
        gap = float(np.linalg.norm(modality_mean(img_src, ctx.runner) - modality_mean(txt_src, ctx.runner)))
    ci = _centroid_interval(ctx, images, texts, s.bootstrap_resamples, derive_seed(s.seed, TASK, "centroid"),
                            s.confidence)
    rows.append(ctx.row(TASK, TARGET, "centroid_distance", gap, len(images) + len(texts), t[0],
                        ci_low=ci[0], ci_high=ci[1], note=join_notes(note, "interval: Poisson bootstrap over items")))

    with stopwatch() as t:
        before = caption_ranks(ctx, images, texts)          # shared with the retrieval task
        after = caption_ranks(ctx, images, texts, centred=True)
    if before.ranks.size == 0:
        rows.append(ctx.row(TASK, TARGET, "gap_gain@R@1", None, 0, t[0], k=1,
                            note=join_notes("skipped: no image has a caption", note)))
        return rows
    delta = (after.ranks <= 1).astype(np.float64) - (before.ranks <= 1).astype(np.float64)
    ci2 = bootstrap_mean(delta, s.bootstrap_resamples, derive_seed(s.seed, TASK, "gain"), s.confidence)
    skipped = before.skipped
    rows.append(ctx.row(TASK, TARGET, "gap_gain@R@1", float(delta.mean()), delta.size, t[0], k=1,
                        ci_low=ci2.low, ci_high=ci2.high, protocol="image->text",
                        note=join_notes(f"R@1 {np.mean(before.ranks <= 1):.4f} -> {np.mean(after.ranks <= 1):.4f}",
                                        f"{skipped} images without captions skipped" if skipped else None,
                                        sample_note(before), note)))
    return rows


def _weighted_sums_block(block: np.ndarray, lo: int, keys: np.ndarray, *, resamples: int, seed: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Block kernel: per resample, the Poisson-weighted sum of the block's rows and the weights' total."""
    w = poisson_weights(keys, resamples, seed)
    return w @ block.astype(np.float64), w.sum(axis=1)


def _weighted_means(ctx: TaskContext, emb: ModalityEmbeddings, source: BlockSource, resamples: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    per_block = [emb.rows[lo:hi] for lo, hi in zip(source.offsets[:-1], source.offsets[1:])]
    zero = (np.zeros((resamples, source.dim)), np.zeros(resamples))
    return reduce_blocks(_weighted_sums_block, source, lambda a, b: (a[0] + b[0], a[1] + b[1]), zero,
                         params={"resamples": resamples, "seed": seed}, per_block=per_block, runner=ctx.runner)


def _centroid_interval(ctx: TaskContext, images: ModalityEmbeddings, texts: ModalityEmbeddings, resamples: int,
                       seed: int, confidence: float) -> tuple[float | None, float | None]:
    """Resample items with Poisson weights keyed by the item (its manifest row), so an item's image and
    all its captions carry the same weight; block tasks sum the weighted vectors (O(resamples x d))."""
    if resamples <= 0 or len(images) + len(texts) < 2:
        return None, None
    img_sum, img_n = _weighted_means(ctx, images, ctx.place(images.source), resamples, seed)
    txt_sum, txt_n = _weighted_means(ctx, texts, ctx.place(texts.source), resamples, seed)
    ok = (img_n > 0) & (txt_n > 0)
    stats = np.linalg.norm(img_sum[ok] / img_n[ok, None] - txt_sum[ok] / txt_n[ok, None], axis=1)
    ci = percentile_interval(stats, confidence)
    return ci.low, ci.high


def _plan(inputs: PlanInputs) -> list[ScoreUnit]:
    if not {"image", "text"} <= inputs.modalities:
        return []
    return [ScoreUnit(TASK, TARGET, ("image", "text"), lambda ctx, e, tv: UnitResult(
        score_modality_gap(ctx, e["image"], e["text"])))]


SCORE_TASK = ScoreTask(
    name=TASK, plan=_plan, modalities=("image", "text"), columns=("captions",),
    description="distance between the image and text centroids, and R@1 gained by removing each modality's mean",
    no_direction=("centroid_distance", "gap_gain@R@1"))
