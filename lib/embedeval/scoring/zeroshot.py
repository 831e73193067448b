"""Zero-shot scores from text prompts: classification (as CLIP_benchmark) and text-bridged sketch retrieval.

Class vectors. For every manifest ``label`` with prompt vectors (:mod:`embedeval.io.prompts`: the model's
``prompt`` partition, ids = labels, one row per template), the class vector is the mean of the unit
prompt vectors, renormalised (prompt ensembling). Labels without prompt vectors are no candidate class;
their items are skipped, and both are counted in the note. Classes are ordered by label.

**Classification** (``protocol = prompt-ensemble``, target = the classified modality, one vector per item):
each labelled item is assigned the classes of highest cosine with its vector (exact top-k over the C
class vectors, ties to the first class in label order), with every class a candidate. Metrics:

- ``acc@k``: share of items whose true class is among the k best (CLIP_benchmark's ``acc1`` / ``acc5``);
- ``mean_per_class_recall``: the mean over classes present among the items of the share of that class's
  items classified correctly at top-1 (sklearn's ``balanced_accuracy_score``).

Splits: ``all`` and, with a ``class_split`` column, each value (seen/unseen): the items restricted, the
candidates still all classes. Intervals: bootstrap over items (per-class recall resamples items too).

**Text-bridged retrieval** (target ``a->b``, e.g. ``sketch->image``): the label retrieval of
:mod:`embedeval.scoring.retrieval` (mAP@all, mAP@K, P@K, relevance = same label, per class split) with
the query vectors replaced, so it compares with that task's direct ``sketch->image`` on the same queries:

- ``text-bridge-hard``: the query is the class vector of its zero-shot (top-1) class;
- ``text-bridge-soft``: the query is the renormalised mix sum_c softmax(cos(x, p_c) / T)_c p_c
  (T = ``temperature``, default 0.01);
- ``mean-removed``: query and gallery each minus their modality's mean vector, renormalised.

Memory: driver O(N x k) top-k indices and O(C x d) class vectors; tasks O(chunk x d + block x d).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from embedeval.engine.knn import topk_search
from embedeval.engine.sources import ArrayBlocks, BlockSource, Centred, IndexedRows, SoftmaxMix
from embedeval.io.prompts import DEFAULT_TEMPLATES, PROMPT_MODALITY
from embedeval.scoring.bootstrap import Interval, bootstrap_mean, derive_seed, percentile_interval, resample_indices
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.parts import UnitResult
from embedeval.scoring.registry import PlanInputs, ScoreTask, ScoreUnit
from embedeval.scoring.retrieval import modality_mean, score_label_retrieval
from embedeval.scoring.schema import ScoreRow
from embedeval.scoring.settings import check_directions, check_modalities

TASK = "zeroshot"
PROTOCOL = "prompt-ensemble"
BRIDGES = ("text-bridge-hard", "text-bridge-soft", "mean-removed")


class ZeroShotOptions(BaseModel):
    """``score.options.zeroshot``."""

    model_config = ConfigDict(extra="forbid")

    prompt_templates: list[str] = Field(default_factory=list, description="templates ('a sketch of a {}.') added to "
                                        "the default set when prompts are embedded by a model's text tower")
    default_templates: bool = Field(True, description="use embedeval.io.prompts.DEFAULT_TEMPLATES besides yours")
    modalities: list[str] = Field(default_factory=lambda: ["image", "sketch"], description="modalities classified")
    ks: list[int] = Field(default_factory=lambda: [1, 5], description="k of acc@k")
    bridge_pairs: list[str] = Field(default_factory=lambda: ["sketch->image"],
                                    description="'a->b' directions of the text-bridged retrieval")
    temperature: float = Field(0.01, gt=0.0, description="softmax temperature of text-bridge-soft")

    @field_validator("prompt_templates")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t.count("{}") != 1]
        if bad:
            raise ValueError(f"every prompt template needs exactly one '{{}}' for the class name; got {bad}")
        return v

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"ks must be a non-empty list of values >= 1, got {v}")
        return sorted(set(v))

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: list[str]) -> list[str]:
        return check_modalities(v)

    @field_validator("bridge_pairs")
    @classmethod
    def _pairs(cls, v: list[str]) -> list[str]:
        return check_directions(v, "bridge_pairs")

    def templates(self) -> list[str]:
        """The templates a text tower embeds for every label."""
        base = list(DEFAULT_TEMPLATES) if self.default_templates else []
        return base + [t for t in self.prompt_templates if t not in base]


@dataclass(frozen=True)
class ClassVectors:
    """The candidate classes: ``names`` (sorted labels with prompt vectors), their unit vectors, and the
    class index of every catalogue label code (-1: the label has no prompt vector)."""

    names: list[str]
    vectors: np.ndarray          # (C, d) float32
    of_code: np.ndarray          # (n label values,) int64
    missing: list[str]           # labels without prompt vectors

    def note(self) -> str | None:
        if not self.missing:
            return None
        shown = ", ".join(repr(m) for m in self.missing[:5]) + (" ..." if len(self.missing) > 5 else "")
        return f"{len(self.missing)} labels without prompt vectors ({shown}) are no candidate class"


def class_vectors(ctx: TaskContext) -> ClassVectors | str:
    """The model's class vectors, or the reason there are none (no labels, no prompts, other dimension)."""
    labels = ctx.catalogue.labels
    if labels is None:
        return "the manifest has no 'label' column"
    if ctx.prompts is None:
        return f"model {ctx.model!r} has no prompt vectors (modality '{PROMPT_MODALITY}')"
    vectors, found = ctx.prompts.lookup(labels.values)
    if not found.any():
        return f"none of the {len(labels.values)} labels has a prompt vector (prompt ids must be labels)"
    of_code = np.full(len(labels.values), -1, dtype=np.int64)
    of_code[found] = np.arange(int(found.sum()))
    return ClassVectors([v for v, f in zip(labels.values, found) if f], vectors.astype(np.float32), of_code,
                        [v for v, f in zip(labels.values, found) if not f])


def class_topk(ctx: TaskContext, emb: ModalityEmbeddings, classes: ClassVectors, k: int) -> np.ndarray:
    """(len(emb), min(k, C)) class indices of every row, best first (exact; ties to the lower class index).

    The zero-shot class of a modality is computed once per model and shared by classification and the
    text bridge (``ctx.shared``). Memory: driver O(n x k)."""
    k = min(k, len(classes.names))
    key = ("zeroshot_topk", emb.modality, len(emb))
    cached = ctx.shared.get(key)
    if cached is not None and cached.shape[1] >= k:
        return cached[:, :k]
    top = topk_search(ctx.place(emb.source), ArrayBlocks(classes.vectors), k, chunk_rows=ctx.settings.block_size,
                      runner=ctx.runner)
    ctx.shared[key] = top.indices
    return top.indices


def mean_per_class_recall(true: np.ndarray, hits: np.ndarray, n_classes: int) -> float:
    """Mean over classes present in ``true`` of the share of their items with ``hits``."""
    counts = np.bincount(true, minlength=n_classes)
    correct = np.bincount(true, weights=hits.astype(np.float64), minlength=n_classes)
    present = counts > 0
    return float(np.mean(correct[present] / counts[present]))


def mean_per_class_recall_interval(true: np.ndarray, hits: np.ndarray, n_classes: int, resamples: int, seed: int,
                                   confidence: float) -> Interval:
    """Bootstrap over items of :func:`mean_per_class_recall` (classes absent from a resample are left out).

    One bincount per chunk of resamples; memory O(chunk x (n + C))."""
    n = true.size
    if resamples <= 0 or n < 2:
        return Interval(None, None)
    weights = hits.astype(np.float64)
    stats = []
    for idx in resample_indices(n, resamples, seed):
        r = idx.shape[0]
        flat = (true[idx] + (np.arange(r) * n_classes)[:, None]).ravel()
        counts = np.bincount(flat, minlength=r * n_classes).reshape(r, n_classes)
        correct = np.bincount(flat, weights=weights[idx].ravel(), minlength=r * n_classes).reshape(r, n_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(counts > 0, correct / np.maximum(counts, 1), np.nan)
        stats.append(np.nanmean(recall, axis=1))
    return percentile_interval(np.concatenate(stats), confidence)


def score_zero_shot(ctx: TaskContext, emb: ModalityEmbeddings) -> list[ScoreRow]:
    """acc@k and mean per-class recall of zero-shot classification of one modality, per class split."""
    s = ctx.settings
    opts: ZeroShotOptions = s.options_for(TASK)
    target = emb.modality
    metrics = [f"acc@{k}" for k in opts.ks] + ["mean_per_class_recall"]

    def skipped(reason: str, split: str = "all") -> list[ScoreRow]:
        return [ctx.row(TASK, target, m, None, 0, 0.0, protocol=PROTOCOL, k=_k_of(m), split=split,
                        note=join_notes(f"skipped: {reason}", emb.note())) for m in metrics]

    classes = class_vectors(ctx)
    if isinstance(classes, str):
        return skipped(classes)
    if ctx.prompts is not None and ctx.prompts.dim != emb.dim:
        return skipped(f"prompt vectors have dim {ctx.prompts.dim}, {emb.modality} vectors dim {emb.dim}")
    emb = emb.first_per_item()
    codes = ctx.catalogue.labels.codes[emb.rows]
    true_all = np.where(codes >= 0, classes.of_code[np.maximum(codes, 0)], -1)
    unlabelled = int((codes < 0).sum())
    no_prompt = int(((codes >= 0) & (true_all < 0)).sum())
    n_classes = len(classes.names)
    base = join_notes(f"{n_classes} candidate classes", classes.note(),
                      f"{unlabelled} unlabelled items skipped" if unlabelled else None,
                      f"{no_prompt} items whose label has no prompt vector skipped" if no_prompt else None,
                      emb.note())
    with stopwatch() as t:
        top = class_topk(ctx, emb, classes, max(opts.ks))
    splits: list[tuple[str, np.ndarray]] = [("all", true_all >= 0)]
    if ctx.catalogue.class_split is not None:
        cs = ctx.catalogue.class_split.take(emb.rows)
        splits += [(v, (true_all >= 0) & cs.mask(v)) for v in cs.values if (cs.mask(v) & (true_all >= 0)).any()]
    params = {"classes": n_classes}
    rows: list[ScoreRow] = []
    for split, mask in splits:
        if not mask.any():
            rows.extend(skipped("no labelled item", split))
            continue
        true, pred = true_all[mask], top[mask]
        for k in opts.ks:
            hits = (pred[:, :k] == true[:, None]).any(axis=1).astype(np.float64)
            ci = bootstrap_mean(hits, s.bootstrap_resamples, derive_seed(s.seed, TASK, target, split, f"acc@{k}"),
                                s.confidence)
            note = join_notes(f"only {n_classes} classes: acc@{k} counts all of them" if k >= n_classes else None, base)
            rows.append(ctx.row(TASK, target, f"acc@{k}", float(hits.mean()), hits.size, t[0], k=k, split=split,
                                protocol=PROTOCOL, params=params, ci_low=ci.low, ci_high=ci.high, note=note))
        hits1 = pred[:, 0] == true
        ci = mean_per_class_recall_interval(true, hits1, n_classes, s.bootstrap_resamples,
                                            derive_seed(s.seed, TASK, target, split, "mean_per_class_recall"),
                                            s.confidence)
        rows.append(ctx.row(TASK, target, "mean_per_class_recall", mean_per_class_recall(true, hits1, n_classes),
                            true.size, t[0], split=split, protocol=PROTOCOL, params=params, ci_low=ci.low,
                            ci_high=ci.high, note=base))
    return rows


def _k_of(metric: str) -> int | None:
    return int(metric.split("@")[1]) if metric.startswith("acc@") else None


def score_text_bridge(ctx: TaskContext, queries: ModalityEmbeddings, gallery: ModalityEmbeddings) -> list[ScoreRow]:
    """mAP@all / mAP@K / P@K of a->b label retrieval through each text bridge (see the module docstring)."""
    opts: ZeroShotOptions = ctx.settings.options_for(TASK)
    queries, gallery = queries.first_per_item(), gallery.first_per_item()
    direction = f"{queries.modality}->{gallery.modality}"
    classes = class_vectors(ctx)
    reason = classes if isinstance(classes, str) else (
        f"prompt vectors have dim {ctx.prompts.dim}, {queries.modality} vectors dim {queries.dim}"
        if ctx.prompts is not None and ctx.prompts.dim != queries.dim else None)
    rows: list[ScoreRow] = []
    for bridge in BRIDGES:
        if bridge != "mean-removed" and reason is not None:
            rows.append(ctx.row(TASK, direction, "mAP@all", None, 0, 0.0, protocol=bridge,
                                note=f"skipped: {reason}"))
            continue
        with stopwatch() as t:
            transform, note = _bridge(ctx, bridge, queries, classes if not isinstance(classes, str) else None,
                                      opts.temperature)
            out = score_label_retrieval(ctx, queries, gallery, task=TASK, variant=bridge, transform=transform,
                                        note=note)
        for row in out:
            row.seconds = t[0]
        rows.extend(out)
    return rows


def _bridge(ctx: TaskContext, bridge: str, queries: ModalityEmbeddings, classes: ClassVectors | None,
            temperature: float):  # noqa: ANN202 - (transform, note)
    if bridge == "mean-removed":
        def centre(q: BlockSource, g: BlockSource) -> tuple[BlockSource, BlockSource]:
            return Centred(q, modality_mean(q, ctx.runner)), Centred(g, modality_mean(g, ctx.runner))
        return centre, None
    assert classes is not None
    note = join_notes(f"{len(classes.names)} candidate classes", classes.note())
    if bridge == "text-bridge-hard":
        predicted = class_topk(ctx, queries, classes, 1)[:, 0]

        def hard(q: BlockSource, g: BlockSource) -> tuple[BlockSource, BlockSource]:
            return IndexedRows(classes.vectors, predicted, q.offsets), g
        return hard, note

    def soft(q: BlockSource, g: BlockSource) -> tuple[BlockSource, BlockSource]:
        return SoftmaxMix(q, classes.vectors, temperature), g
    return soft, join_notes(f"temperature={temperature:g}", note)


def _plan(inputs: PlanInputs) -> list[ScoreUnit]:
    """Classification per ``modalities`` entry the model has; the bridge per ``bridge_pairs`` direction.

    Needs labels; a model without a ``prompt`` partition gets classification units only if it has a text
    modality (so its rows say why they are empty) and no bridge units beyond ``mean-removed``."""
    if inputs.catalogue.labels is None:
        return []
    opts: ZeroShotOptions = inputs.options(TASK)
    have = inputs.modalities
    has_prompts = PROMPT_MODALITY in have
    if not has_prompts and "text" not in have:
        return []
    extra = (PROMPT_MODALITY,) if has_prompts else ()
    units = [ScoreUnit(TASK, m, (m, *extra), lambda ctx, e, tv, m=m: UnitResult(score_zero_shot(ctx, e[m])))
             for m in opts.modalities if m in have]
    for pair in opts.bridge_pairs:
        a, _, b = pair.partition("->")
        if a in have and b in have:
            units.append(ScoreUnit(TASK, pair, tuple(sorted({a, b})) + extra,
                                   lambda ctx, e, tv, a=a, b=b: UnitResult(score_text_bridge(ctx, e[a], e[b]))))
    return units


SCORE_TASK = ScoreTask(
    name=TASK, plan=_plan, modalities=("image", "sketch", PROMPT_MODALITY), columns=("label", "class_split"),
    options=ZeroShotOptions,
    description="zero-shot classification by prompt ensembles (acc@1, acc@5, mean per-class recall) and "
                "text-bridged sketch->image retrieval (hard / soft prompt bridge, mean-removed)",
    headline=(dict(label="zero-shot acc@1 ({target})", metric="acc@1", protocol=PROTOCOL, split=["all"]),
              dict(label="bridged sketch mAP@all ({split})", target="sketch->image", metric="mAP@all",
                   protocol="text-bridge-soft", split=["unseen", "all", "seen"])),
    plots=("embedeval.report.plots:zeroshot_plots",))
