"""Prototypes: k-means on one modality's normalised embeddings, compared with the catalogue's labels.

Rows (target = modality): ``nmi``, ``ari``, ``purity`` of the clustering against labels (k-means k = number of
labels unless set; in ``params``, so the score keeps its identity when a label is added), and ``ambiguity_rate``: the share of items whose nearest neighbour has another label
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

from embedeval.engine.kmeans import assign_to_centroids, kmeans
from embedeval.engine.knn import topk_search
from embedeval.engine.sources import BlockSource
from embedeval.engine.tiles import map_blocks_of, query_rows
from embedeval.io.prompts import PROMPT_MODALITY
from embedeval.metrics import clustering
from embedeval.scoring.bootstrap import bootstrap_mean, derive_seed, half_sample_interval, seeded_sample
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.parts import UnitResult
from embedeval.scoring.registry import PlanInputs, ScoreTask, ScoreUnit
from embedeval.scoring.schema import ScoreRow

TASK = "prototypes"
PROTOCOL = "kmeans"     # k-means on unit vectors; k, init and iterations are in ``params``
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
    """k-means prototypes of one modality against labels; see the module docstring.

    Memory on the driver O(N) (labels, assignments, distances) plus O(sampled items x neighbours); the
    vectors stay in their blocks. k-means is O(N k d) per Lloyd pass; ``score.kmeans_fit_sample`` fits the
    centroids on a seeded sample instead and assigns every item to them in one exact pass. The ambiguity neighbours are an exact all-items search, O(N^2 d):
    ``score.ambiguity_max_items`` runs it for a seeded sample of items instead (exact on the sample).
    """
    s = ctx.settings
    emb = emb.first_per_item()
    modality = emb.modality
    cat_labels = ctx.catalogue.labels
    codes_all = cat_labels.codes[emb.rows] if cat_labels is not None else np.full(len(emb), -1, dtype=np.int64)
    known = codes_all >= 0
    base = join_notes(f"{int((~known).sum())} unlabelled items excluded" if (~known).any() else None, emb.note(),
                      "first caption per item" if modality == "text" else None)
    sub = emb.select(known)
    X = ctx.place(sub.source)
    label_codes = codes_all[known]
    n = X.n
    n_labels = np.unique(label_codes).size
    k = s.kmeans_k or n_labels
    empty = PrototypeScores([], AMBIGUITY_SCHEMA.empty_table(), EXAMPLES_SCHEMA.empty_table())
    if n_labels < 2 or k > n or n < 3:
        empty.rows = [ctx.row(TASK, modality, m, None, n, 0.0, protocol=PROTOCOL, note=join_notes(
            f"skipped: {n} labelled items, {n_labels} labels, k={k}", base))
            for m in ("nmi", "ari", "purity", "ambiguity_rate")]
        return empty

    fit_rows = None
    if s.kmeans_fit_sample is not None and n > max(s.kmeans_fit_sample, k):
        fit_rows = seeded_sample(n, max(s.kmeans_fit_sample, k), derive_seed(s.seed, TASK, modality, "kmeans-fit"))
    with stopwatch() as t:
        # the sample gathered into dense blocks (bounded as query samples are): a Selection would read
        # every base block on each of the Lloyd passes
        result = kmeans(X if fit_rows is None else query_rows(X, fit_rows, ctx.runner), k, iters=s.kmeans_iters,
                        seed=derive_seed(s.seed, TASK, modality), init=s.kmeans_init, block_size=s.block_size,
                        runner=ctx.runner)
        if fit_rows is None:
            assign, inertia = np.asarray(result.labels, dtype=np.int64), float(result.inertia)
        else:  # the centroids came from the sample; every item is assigned to them exactly
            assign, sqdist = assign_to_centroids(X, result.centroids, block_size=s.block_size, runner=ctx.runner)
            inertia = float(np.sum(sqdist))
    fit_seconds = t[0]
    # k-means k follows the label count by default: a parameter, not part of the score's identity (k column
    # stays null), so a catalogue that gains a label still diffs against last night's clustering
    params = {"k": int(k), "init": s.kmeans_init, "iters": s.kmeans_iters, "seed": s.seed}
    fitted_on = "" if fit_rows is None else f", centroids fitted on {fit_rows.size} of {n} items (seeded)"
    if fit_rows is not None:
        params["fit_sample"] = int(fit_rows.size)
    kmeans_note = join_notes(f"k-means: {result.n_iter} iterations{fitted_on}, inertia {inertia:.4g}", base)

    rows: list[ScoreRow] = []
    for metric, fn in (("nmi", clustering.nmi), ("ari", clustering.ari), ("purity", clustering.purity)):
        with stopwatch() as t:
            value = fn(label_codes, assign)
        ci = half_sample_interval(n, lambda idx, f=fn: f(label_codes[idx], assign[idx]), value,
                                  s.bootstrap_resamples, derive_seed(s.seed, TASK, modality, metric), s.confidence,
                                  bounds=_BOUNDS[metric])
        rows.append(ctx.row(TASK, modality, metric, value, n, fit_seconds + t[0], protocol=PROTOCOL,
                            params=params, ci_low=ci.low, ci_high=ci.high, note=kmeans_note))

    m = min(s.ambiguity_neighbours, n - 1)
    items = np.arange(n, dtype=np.int64)
    amb_note = kmeans_note
    amb_params = dict(params, neighbours=int(m))
    if s.ambiguity_max_items is not None and n > s.ambiguity_max_items:
        items = seeded_sample(n, s.ambiguity_max_items, derive_seed(s.seed, TASK, modality, "ambiguity-items"))
        amb_params["items"] = int(items.size)
        amb_note = join_notes(f"ambiguity: {items.size} of {n} items sampled (seeded), neighbours among all {n}",
                              kmeans_note)
    with stopwatch() as t:
        top = topk_search(query_rows(X, items, ctx.runner), X, m, exclude=items, chunk_rows=s.block_size,
                          runner=ctx.runner)
    sims, nbrs = top.scores, top.indices
    nn = nbrs[:, 0]
    soft = (label_codes[nn] != label_codes[items]) & (assign[nn] == assign[items])
    ci = bootstrap_mean(soft.astype(np.float64), s.bootstrap_resamples, derive_seed(s.seed, TASK, modality, "amb"),
                        s.confidence)
    rows.append(ctx.row(TASK, modality, "ambiguity_rate", float(soft.mean()), items.size, fit_seconds + t[0],
                        protocol=PROTOCOL, params=amb_params, ci_low=ci.low, ci_high=ci.high, note=amb_note))

    names = _Names(ctx, sub.rows, label_codes)
    ambiguity = ambiguity_table(ctx.model, modality, names, items, label_codes, assign, sims, nbrs, s.ambiguity_top)
    examples = prototype_examples(ctx, modality, X, names, assign, np.asarray(result.centroids), s.prototype_examples)
    return PrototypeScores(rows, ambiguity, examples)


class _Names:
    """Ids and label names of the few items an output table shows (looked up only for those)."""

    def __init__(self, ctx: TaskContext, manifest_rows: np.ndarray, label_codes: np.ndarray) -> None:
        self.catalogue = ctx.catalogue
        self.manifest_rows = manifest_rows
        self.label_codes = label_codes

    def ids(self, items: np.ndarray) -> list[str]:
        return self.catalogue.id_of(self.manifest_rows[np.asarray(items, dtype=np.int64)])

    def labels(self, items: np.ndarray) -> list[str | None]:
        assert self.catalogue.labels is not None
        return [self.catalogue.labels.values[c] for c in self.label_codes[np.asarray(items, dtype=np.int64)]]


def ambiguity_table(model: str, modality: str, names: _Names, items: np.ndarray, labels: np.ndarray,
                    assign: np.ndarray, sims: np.ndarray, nbrs: np.ndarray, top: int) -> pa.Table:
    """The ``top`` most similar other-label pairs and the ``top`` items with most other-label neighbours.

    Row r of ``sims``/``nbrs`` are the neighbours of item ``items[r]``; ``labels`` are integer codes.
    Vectorised over the (items x neighbours) arrays; only the shown rows are turned into strings.
    """
    n, m = nbrs.shape
    rows_i = np.repeat(items, m)
    cols = nbrs.ravel()
    pair_sims = sims.ravel()
    other = labels[rows_i] != labels[cols]
    a, b = np.minimum(rows_i, cols)[other], np.maximum(rows_i, cols)[other]
    ps = pair_sims[other]
    order = np.lexsort((b, a, -ps))              # by similarity desc, then item order for determinism
    a, b, ps = a[order], b[order], ps[order]
    first = np.ones(a.size, dtype=bool)          # each unordered pair once (its best-ranked occurrence)
    if a.size:
        key = a.astype(np.int64) * (int(max(a.max(), b.max())) + 1) + b
        _, first_at = np.unique(key, return_index=True)
        first[:] = False
        first[first_at] = True
    chosen = np.flatnonzero(first)[:top]
    pa_, pb_ = a[chosen], b[chosen]
    shared = np.where(assign[pa_] == assign[pb_], assign[pa_], -1)
    pairs = list(zip(["pair"] * chosen.size, names.ids(pa_), names.ids(pb_), names.labels(pa_), names.labels(pb_),
                     ps[chosen].tolist(), [int(x) if x >= 0 else None for x in shared], ps[chosen].tolist()))

    other_mask = labels[nbrs] != labels[items][:, None]                  # (n, m)
    share = other_mask.mean(axis=1)
    first_other = np.where(other_mask.any(axis=1), other_mask.argmax(axis=1), -1)
    candidates = np.flatnonzero(share > 0)
    nearest_sim = sims[candidates, first_other[candidates]]
    order = candidates[np.lexsort((candidates, -nearest_sim, -share[candidates]))][:top]
    j = nbrs[order, first_other[order]]
    chosen_items = items[order]
    item_rows = list(zip(["item"] * order.size, names.ids(chosen_items), [None] * order.size,
                         names.labels(chosen_items), names.labels(j), sims[order, first_other[order]].tolist(),
                         assign[chosen_items].tolist(), share[order].tolist()))
    records = []
    for kind_rows in (pairs, item_rows):
        for rank, (kind, ia, ib, la, lb, sim, proto, score) in enumerate(kind_rows, start=1):
            records.append({"model": model, "modality": modality, "kind": kind, "id_a": str(ia),
                            "id_b": None if ib is None else str(ib), "label_a": str(la), "label_b": str(lb),
                            "similarity": float(sim), "prototype": proto, "score": float(score), "rank": rank})
    return pa.Table.from_pylist(records, schema=AMBIGUITY_SCHEMA)


def _centroid_distance_block(block: np.ndarray, lo: int, assign: np.ndarray, *, unit_c: np.ndarray) -> np.ndarray:
    """Block kernel: 1 - cosine of each row to its own prototype."""
    return 1.0 - np.einsum("ij,ij->i", block.astype(np.float64), unit_c[assign])


def prototype_examples(ctx: TaskContext, modality: str, X: BlockSource, names: _Names, assign: np.ndarray,
                       centroids: np.ndarray, per_prototype: int) -> pa.Table:
    """For each prototype, its ``per_prototype`` members nearest the centroid (by cosine distance).

    Distances come from one pass of block tasks; the driver keeps O(N) floats and sorts them."""
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    unit_c = centroids / np.where(norms > 0, norms, 1.0)
    dist = np.empty(X.n)
    per_block = [assign[lo:hi] for lo, hi in zip(X.offsets[:-1], X.offsets[1:])]
    for lo, hi, part in map_blocks_of(_centroid_distance_block, X, params={"unit_c": unit_c}, per_block=per_block,
                                      runner=ctx.runner):
        dist[lo:hi] = part
    order = np.lexsort((np.arange(X.n), dist, assign))           # by prototype, then distance, then item
    srt = assign[order]
    starts = np.searchsorted(srt, srt, side="left")
    rank = np.arange(order.size) - starts + 1
    keep = order[rank <= per_prototype]
    ranks = rank[rank <= per_prototype]
    records = [{"model": ctx.model, "modality": modality, "prototype": int(c), "id": i, "label": str(lab),
                "distance": float(d), "rank": int(r)}
               for c, i, lab, d, r in zip(assign[keep], names.ids(keep), names.labels(keep), dist[keep], ranks)]
    return pa.Table.from_pylist(records, schema=EXAMPLES_SCHEMA)


def _plan(inputs: PlanInputs) -> list[ScoreUnit]:
    """One unit per modality (``prototype_modalities``, default all) when the manifest has labels."""
    if inputs.catalogue.labels is None:
        return []
    wanted = inputs.settings.prototype_modalities or sorted(inputs.modalities - {PROMPT_MODALITY})
    return [ScoreUnit(TASK, m, (m,), lambda ctx, e, tv, m=m: _unit_result(score_prototypes(ctx, e[m])))
            for m in wanted if m in inputs.modalities]


def _unit_result(result: PrototypeScores) -> UnitResult:
    return UnitResult(result.rows, result.ambiguity, result.examples)


SCORE_TASK = ScoreTask(
    name=TASK, plan=_plan, modalities=("image", "text", "sketch"), columns=("label",),
    description="k-means prototypes vs labels (NMI, ARI, purity) and the ambiguity rate; ambiguity.parquet, "
                "prototypes.parquet",
    headline=(dict(label="NMI ({target})", metric="nmi"),), no_direction=("ambiguity_rate",))
