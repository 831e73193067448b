"""Modality gap (Liang et al., "Mind the Gap"): CLIP-style models put images and texts in separate cones.

- ``centroid_distance``: Euclidean distance between the mean normalised image and the mean normalised
  text embedding (0 = no gap; up to 2).
- ``gap_gain@R@1``: image->text R@1 after removing each modality's mean from its own vectors and
  re-normalising, minus R@1 before (a fraction; positive = the gap was costing retrieval accuracy).

One image vector per item; every caption is a text vector. Intervals: centroid distance by resampling
items (an item's image and captions together); gap gain by resampling queries (paired: the same queries
before and after).
"""

from __future__ import annotations

import numpy as np

from embedeval.scoring.bootstrap import bootstrap_mean, derive_seed, percentile_interval, resample_indices
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.retrieval import caption_ranks, check_same_dim, matches_by_id
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

    with stopwatch() as t:
        gap = float(np.linalg.norm(images.unit.mean(axis=0, dtype=np.float64) - texts.unit.mean(axis=0, dtype=np.float64)))
    ci = _centroid_interval(images, texts, s.bootstrap_resamples, derive_seed(s.seed, TASK, "centroid"), s.confidence)
    rows.append(ctx.row(TASK, TARGET, "centroid_distance", gap, len(images) + len(texts), t[0],
                        ci_low=ci[0], ci_high=ci[1], note=note))

    with stopwatch() as t:
        before, skipped = caption_ranks(ctx, images.unit, texts.unit, images.ids, texts.ids)
        after, _ = caption_ranks(ctx, centre_and_normalise(images.unit), centre_and_normalise(texts.unit),
                                 images.ids, texts.ids)
    if before.size == 0:
        rows.append(ctx.row(TASK, TARGET, "gap_gain@R@1", None, 0, t[0], k=1,
                            note=join_notes("skipped: no image has a caption", note)))
        return rows
    delta = (after <= 1).astype(np.float64) - (before <= 1).astype(np.float64)
    ci2 = bootstrap_mean(delta, s.bootstrap_resamples, derive_seed(s.seed, TASK, "gain"), s.confidence)
    rows.append(ctx.row(TASK, TARGET, "gap_gain@R@1", float(delta.mean()), delta.size, t[0], k=1,
                        ci_low=ci2.low, ci_high=ci2.high, variant="image->text",
                        note=join_notes(f"R@1 {np.mean(before <= 1):.4f} -> {np.mean(after <= 1):.4f}",
                                        f"{skipped} images without captions skipped" if skipped else None, note)))
    return rows


def _centroid_interval(images: ModalityEmbeddings, texts: ModalityEmbeddings, resamples: int, seed: int,
                       confidence: float) -> tuple[float | None, float | None]:
    """Resample items; each drawn item brings its image (if any) and all its captions."""
    if resamples <= 0:
        return None, None
    items = np.unique(np.concatenate([images.ids.astype(str), texts.ids.astype(str)]))
    if items.size < 2:
        return None, None
    img_ptr, img_idx = matches_by_id(items, images.ids)
    txt_ptr, txt_idx = matches_by_id(items, texts.ids)
    # per-item sums and counts, so a resample's means are count-weighted sums (no vector copies)
    img_sum = np.add.reduceat(np.vstack([images.unit[img_idx], np.zeros((1, images.dim))]).astype(np.float64),
                              np.minimum(img_ptr[:-1], len(img_idx)), axis=0)
    txt_sum = np.add.reduceat(np.vstack([texts.unit[txt_idx], np.zeros((1, texts.dim))]).astype(np.float64),
                              np.minimum(txt_ptr[:-1], len(txt_idx)), axis=0)
    img_n, txt_n = np.diff(img_ptr).astype(np.float64), np.diff(txt_ptr).astype(np.float64)
    img_sum[img_n == 0] = 0.0
    txt_sum[txt_n == 0] = 0.0
    stats = []
    for chunk in resample_indices(items.size, resamples, seed):
        for idx in chunk:
            counts = np.bincount(idx, minlength=items.size).astype(np.float64)
            ni, nt = counts @ img_n, counts @ txt_n
            if ni == 0 or nt == 0:
                continue
            stats.append(np.linalg.norm(counts @ img_sum / ni - counts @ txt_sum / nt))
    ci = percentile_interval(np.asarray(stats), confidence)
    return ci.low, ci.high
