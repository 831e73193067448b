"""Prototypes: k-means on one modality's normalised embeddings, compared with the catalogue's labels.

Rows (target = modality): ``nmi``, ``ari``, ``purity`` of the clustering against labels (k = number of
labels unless set), and ``ambiguity_rate``: the share of items whose nearest neighbour has another label
but the same prototype — soft positives, pairs a model thinks alike that the labels keep apart.

Two tables for the report, written by the job:

- ``ambiguity.parquet``: the most ambiguous *pairs* (kind='pair': an item and one of its nearest
  neighbours with another label, ranked by cosine similarity; prototype = the shared prototype, null
  when the two fall in different ones) and *items* (kind='item': score = share of the item's nearest
  neighbours with another label; similarity and label_b = its nearest other-label neighbour's).
- ``prototypes.parquet``: the few members nearest each centroid (distance = 1 - cosine to the centroid),
  for thumbnails.

One vector per item (the first caption for text). Unlabelled items are excluded and counted.
Intervals: the spread of the metric over half-samples of items, centred on the observed value
(:func:`embedeval.scoring.bootstrap.half_sample_interval`; a with-replacement bootstrap inflates NMI/ARI/
purity through duplicated items). k-means is not re-run per half-sample, so the interval reflects which
items were sampled, not k-means' own seed sensitivity. ambiguity_rate is a mean: ordinary bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from embedeval.engine.kmeans import kmeans
from embedeval.engine.knn import exact_topk
from embedeval.metrics import clustering
from embedeval.scoring.bootstrap import bootstrap_mean, derive_seed, half_sample_interval
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.schema import ScoreRow

TASK = "prototypes"
_BOUNDS = {"nmi": (0.0, 1.0), "ari": (-0.5, 1.0), "purity": (0.0, 1.0)}

AMBIGUITY_SCHEMA = pa.schema([
    pa.field("model", pa.string(), nullable=False),
    pa.field("modality", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),          # 'pair' | 'item'
    pa.field("id_a", pa.string(), nullable=False),
    pa.field("id_b", pa.string(), nullable=True),            # null for items
    pa.field("label_a", pa.string(), nullable=True),
    pa.field("label_b", pa.string(), nullable=True),
    pa.field("similarity", pa.float64(), nullable=True),     # cosine
    pa.field("prototype", pa.int64(), nullable=True),        # shared prototype (pairs) / own prototype (items)
    pa.field("score", pa.float64(), nullable=False),         # what the rank sorts by (desc)
    pa.field("rank", pa.int64(), nullable=False),            # 1-based within (model, modality, kind)
])

EXAMPLES_SCHEMA = pa.schema([
    pa.field("model", pa.string(), nullable=False),
    pa.field("modality", pa.string(), nullable=False),
    pa.field("prototype", pa.int64(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("label", pa.string(), nullable=True),
    pa.field("distance", pa.float64(), nullable=False),      # 1 - cosine to the centroid
    pa.field("rank", pa.int64(), nullable=False),            # 1 = nearest the centroid
])


@dataclass
class PrototypeScores:
    """Score rows plus the two report tables (in AMBIGUITY_SCHEMA and EXAMPLES_SCHEMA)."""

    rows: list[ScoreRow]
    ambiguity: pa.Table
    examples: pa.Table


def score_prototypes(ctx: TaskContext, emb: ModalityEmbeddings) -> PrototypeScores:
    """k-means prototypes of one modality against labels; see the module docstring."""
    s = ctx.settings
    emb = emb.first_per_item()
    modality = emb.modality
    labels_all = ctx.catalogue.labels[emb.rows] if ctx.catalogue.labels is not None else np.full(len(emb), None)
    known = np.fromiter((lab is not None and lab != "" for lab in labels_all), dtype=bool, count=len(emb))
    base = join_notes(f"{int((~known).sum())} unlabelled items excluded" if (~known).any() else None, emb.note(),
                      "first caption per item" if modality == "text" else None)
    X = emb.unit[known]
    ids = emb.ids[known]
    labels = np.asarray(labels_all[known], dtype=str)
    n = X.shape[0]
    n_labels = np.unique(labels).size
    k = s.kmeans_k or n_labels
    empty = PrototypeScores([], AMBIGUITY_SCHEMA.empty_table(), EXAMPLES_SCHEMA.empty_table())
    if n_labels < 2 or k > n or n < 3:
        empty.rows = [ctx.row(TASK, modality, m, None, n, 0.0, note=join_notes(
            f"skipped: {n} labelled items, {n_labels} labels, k={k}", base))
            for m in ("nmi", "ari", "purity", "ambiguity_rate")]
        return empty

    with stopwatch() as t:
        result = kmeans(X, k, iters=s.kmeans_iters, seed=derive_seed(s.seed, TASK, modality), init=s.kmeans_init,
                        block_size=s.block_size, runner=ctx.runner)
    fit_seconds = t[0]
    assign = np.asarray(result.labels, dtype=np.int64)
    _, label_codes = np.unique(labels, return_inverse=True)
    variant = f"k={k},init={s.kmeans_init}"
    kmeans_note = join_notes(f"k-means: {result.n_iter} iterations, inertia {float(result.inertia):.4g}", base)

    rows: list[ScoreRow] = []
    for metric, fn in (("nmi", clustering.nmi), ("ari", clustering.ari), ("purity", clustering.purity)):
        with stopwatch() as t:
            value = fn(label_codes, assign)
        ci = half_sample_interval(n, lambda idx, f=fn: f(label_codes[idx], assign[idx]), value,
                                  s.bootstrap_resamples, derive_seed(s.seed, TASK, modality, metric), s.confidence,
                                  bounds=_BOUNDS[metric])
        rows.append(ctx.row(TASK, modality, metric, value, n, fit_seconds + t[0], k=k, variant=variant,
                            ci_low=ci.low, ci_high=ci.high, note=kmeans_note))

    m = min(s.ambiguity_neighbours, n - 1)
    with stopwatch() as t:
        sims, nbrs = exact_topk(X, X, m, exclude_self=True, block_size=s.block_size, runner=ctx.runner)
    sims, nbrs = np.asarray(sims, dtype=np.float64), np.asarray(nbrs, dtype=np.int64)
    nn = nbrs[:, 0]
    soft = (label_codes[nn] != label_codes) & (assign[nn] == assign)
    ci = bootstrap_mean(soft.astype(np.float64), s.bootstrap_resamples, derive_seed(s.seed, TASK, modality, "amb"),
                        s.confidence)
    rows.append(ctx.row(TASK, modality, "ambiguity_rate", float(soft.mean()), n, fit_seconds + t[0], k=k,
                        variant=variant, ci_low=ci.low, ci_high=ci.high, note=kmeans_note))

    ambiguity = ambiguity_table(ctx.model, modality, ids, labels, assign, sims, nbrs, s.ambiguity_top)
    examples = prototype_examples(ctx.model, modality, X, ids, labels, assign, np.asarray(result.centroids),
                                  s.prototype_examples)
    return PrototypeScores(rows, ambiguity, examples)


def ambiguity_table(model: str, modality: str, ids: np.ndarray, labels: np.ndarray, assign: np.ndarray,
                    sims: np.ndarray, nbrs: np.ndarray, top: int) -> pa.Table:
    """The ``top`` most similar other-label pairs and the ``top`` items with most other-label neighbours."""
    n, m = nbrs.shape
    rows_i = np.repeat(np.arange(n), m)
    cols = nbrs.ravel()
    pair_sims = sims.ravel()
    other = labels[rows_i] != labels[cols]
    a, b = np.minimum(rows_i, cols)[other], np.maximum(rows_i, cols)[other]
    ps = pair_sims[other]
    order = np.lexsort((b, a, -ps))              # by similarity desc, then ids for determinism
    seen: set[tuple[int, int]] = set()
    pairs = []
    for j in order:
        key = (int(a[j]), int(b[j]))
        if key in seen:
            continue
        seen.add(key)
        pa_, pb_ = key
        shared = int(assign[pa_]) if assign[pa_] == assign[pb_] else None
        pairs.append(("pair", ids[pa_], ids[pb_], labels[pa_], labels[pb_], float(ps[j]), shared, float(ps[j])))
        if len(pairs) >= top:
            break

    other_mask = labels[nbrs] != labels[:, None]                  # (n, m)
    share = other_mask.mean(axis=1)
    first_other = np.where(other_mask.any(axis=1), other_mask.argmax(axis=1), -1)
    candidates = np.flatnonzero(share > 0)
    nearest_sim = np.array([sims[i, first_other[i]] for i in candidates])
    order = candidates[np.lexsort((candidates, -nearest_sim, -share[candidates]))][:top]
    items = []
    for i in order:
        j = nbrs[i, first_other[i]]
        items.append(("item", ids[i], None, labels[i], labels[j], float(sims[i, first_other[i]]), int(assign[i]),
                      float(share[i])))
    records = []
    for kind_rows in (pairs, items):
        for rank, (kind, ia, ib, la, lb, sim, proto, score) in enumerate(kind_rows, start=1):
            records.append({"model": model, "modality": modality, "kind": kind, "id_a": str(ia),
                            "id_b": None if ib is None else str(ib), "label_a": str(la), "label_b": str(lb),
                            "similarity": sim, "prototype": proto, "score": score, "rank": rank})
    return pa.Table.from_pylist(records, schema=AMBIGUITY_SCHEMA)


def prototype_examples(model: str, modality: str, X: np.ndarray, ids: np.ndarray, labels: np.ndarray,
                       assign: np.ndarray, centroids: np.ndarray, per_prototype: int) -> pa.Table:
    """For each prototype, its ``per_prototype`` members nearest the centroid (by cosine distance)."""
    records = []
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    unit_c = centroids / np.where(norms > 0, norms, 1.0)
    for c in range(centroids.shape[0]):
        members = np.flatnonzero(assign == c)
        if members.size == 0:
            continue
        dist = 1.0 - X[members].astype(np.float64) @ unit_c[c]
        order = members[np.lexsort((members, dist))][:per_prototype]
        for rank, i in enumerate(order, start=1):
            records.append({"model": model, "modality": modality, "prototype": c, "id": str(ids[i]),
                            "label": str(labels[i]), "distance": float(1.0 - X[i].astype(np.float64) @ unit_c[c]),
                            "rank": rank})
    return pa.Table.from_pylist(records, schema=EXAMPLES_SCHEMA)
