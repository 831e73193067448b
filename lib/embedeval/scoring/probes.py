"""Probes: how well a label can be read off the embedding — a linear probe and a k-NN vote.

Train and test items come from the manifest's ``split`` column (``train`` / ``test``), labels from its
``label`` column; unlabelled items are excluded and counted. One vector per item (sub 0). Rows (target =
the modality, split ``test``):

- ``linear_probe`` (protocol ``logistic``): accuracy on test items of a multinomial logistic regression
  (scikit-learn ``LogisticRegression(solver="lbfgs", C=C)``) fitted on the train items' unit vectors.
  C is chosen from ``score.options.probes.c_grid`` by accuracy on a seeded held-out 20% of the train
  items (fitted on the other 80%; ties go to the smaller C, the stronger penalty), then the probe is
  refitted on all of them. ``linear_probe_macro_f1``: the macro-averaged F1 of the same predictions
  (over the labels of the test items and the predictions, scikit-learn's ``f1_score(average="macro")``;
  a label never predicted and never true is not counted; an undefined precision or recall counts 0).
  ``params``: ``{"C": chosen, "c_grid": [...], "train": m}`` (+ ``"seed"`` when sampled).
- ``knn_classify`` (k, protocol ``cosine-vote``): accuracy of the majority label among each test item's k
  nearest train items by cosine (exact, :func:`embedeval.engine.knn.topk_search`: ties in score go to the
  lower train row). A tie in the vote goes to the label first in sorted order — scikit-learn's
  ``KNeighborsClassifier`` rule, so the predictions are the same as its brute-force search.

Memory: the logistic fit gathers at most ``max_train`` seeded train rows onto the driver — O(max_train x d)
floats — and holds a (classes x d) coefficient matrix; test vectors are never gathered (predicted by
block tasks). k-NN holds O(test x k) neighbour indices; it is O(test x train x d), and
``knn_max_test`` runs it for a seeded sample of test items instead (exact on the sample). A test item whose label no train item has is
always wrong; their count is in the note. Intervals: bootstrap over test items (accuracy: a mean; macro
F1: recomputed on each resample). Per-test-item correctness (0/1) of ``linear_probe`` and every
``knn_classify`` k is kept for paired comparison (:mod:`embedeval.scoring.per_item`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from embedeval.engine.knn import topk_search
from embedeval.engine.tiles import gather_rows, map_blocks_of, query_rows
from embedeval.scoring.bootstrap import bootstrap_mean, bootstrap_statistic, derive_seed, seeded_sample
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.parts import UnitResult
from embedeval.scoring.per_item import ids_of, per_item_table
from embedeval.scoring.registry import PlanInputs, ScoreTask, ScoreUnit
from embedeval.scoring.schema import ScoreRow

TASK = "probes"
LOGISTIC = "logistic"
KNN_VOTE = "cosine-vote"
HOLDOUT_FRACTION = 0.2


class ProbeOptions(BaseModel):
    """``score.options.probes``."""

    model_config = ConfigDict(extra="forbid")

    modalities: list[str] = Field(default_factory=lambda: ["image"], description="modalities to probe")
    max_train: int | None = Field(
        50_000, ge=2, description="the logistic probe fits on at most this many seeded train items (gathered on "
                                  "the driver: O(max_train x d)); None = every train item")
    c_grid: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0],
                                description="inverse L2 penalties tried; the best on a held-out 20% is used")
    max_iter: int = Field(1000, ge=1, description="lbfgs iterations of each logistic fit")
    knn_ks: list[int] = Field(default_factory=lambda: [1, 5, 10], description="k of the k-NN vote")
    knn_max_test: int | None = Field(
        None, ge=1, description="the k-NN vote for a seeded sample of this many test items, their neighbours "
                                "searched among every train item (exact on the sample, O(sample x train x d)); "
                                "None = every test item, O(test x train x d)")

    @field_validator("c_grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        if not v or any(c <= 0 for c in v):
            raise ValueError(f"c_grid needs positive values, got {v}")
        return sorted(set(float(c) for c in v))

    @field_validator("knn_ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"knn_ks needs values >= 1, got {v}")
        return sorted(set(v))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the labels in ``y_true`` or ``y_pred`` (integer codes), undefined terms as 0."""
    labels, inv = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    t, p = inv[:y_true.size], inv[y_true.size:]
    m = labels.size
    tp = np.bincount(t[t == p], minlength=m).astype(np.float64)
    fp = np.bincount(p, minlength=m) - tp
    fn = np.bincount(t, minlength=m) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(m), where=denom > 0)
    return float(f1.mean()) if m else float("nan")


def _fit_logistic(X: np.ndarray, y: np.ndarray, C: float, max_iter: int):  # -> LogisticRegression
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ConvergenceWarning at max_iter: the fit is still a valid probe
        return LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter).fit(X, y)


def choose_c(X: np.ndarray, y: np.ndarray, grid: list[float], max_iter: int, seed: int) -> float:
    """The C of ``grid`` with the best accuracy on a seeded held-out 20% of (X, y) (fit on the rest);
    ties go to the smaller C. A sample too small to hold out (or whose fit part has one label) gets the
    grid's middle value."""
    n = y.size
    hold = int(round(HOLDOUT_FRACTION * n))
    perm = np.random.default_rng(seed).permutation(n)
    held, fit = np.sort(perm[:hold]), np.sort(perm[hold:])
    if hold < 1 or np.unique(y[fit]).size < 2:
        return grid[len(grid) // 2]
    scores = [float(np.mean(_fit_logistic(X[fit], y[fit], c, max_iter).predict(X[held]) == y[held])) for c in grid]
    return grid[int(np.argmax(scores))]


def _predict_block(block: np.ndarray, lo: int, _: None, *, coef: np.ndarray, intercept: np.ndarray,
                   classes: np.ndarray) -> np.ndarray:
    """Block kernel: the logistic probe's label codes of the block's rows (as sklearn's ``predict``)."""
    scores = block.astype(np.float64) @ coef.T + intercept
    if coef.shape[0] == 1:   # binary: sklearn predicts classes[1] where the decision is > 0
        return classes[(scores[:, 0] > 0).astype(np.int64)]
    return classes[np.argmax(scores, axis=1)]


def knn_vote(neighbour_labels: np.ndarray, k: int, n_labels: int) -> np.ndarray:
    """Majority label among the first k columns of (queries, >= k) label codes; ties to the smallest code."""
    lab = neighbour_labels[:, :k]
    q = lab.shape[0]
    counts = np.zeros((q, n_labels), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(q), lab.shape[1]), lab.ravel()), 1)
    return np.argmax(counts, axis=1)   # argmax takes the first (smallest code) of tied maxima


def score_probes(ctx: TaskContext, emb: ModalityEmbeddings, opts: ProbeOptions) -> UnitResult:
    """The linear-probe and k-NN rows of one modality, with their per-test-item correctness."""
    emb = emb.first_per_item()
    cat = ctx.catalogue
    target = emb.modality
    metrics = [("linear_probe", None, LOGISTIC), ("linear_probe_macro_f1", None, LOGISTIC)] + \
              [("knn_classify", k, KNN_VOTE) for k in opts.knn_ks]

    def skip_all(reason: str, note: str | None = None) -> UnitResult:
        return UnitResult([ctx.row(TASK, target, m, None, 0, 0.0, k=k, split="test", protocol=p,
                                   note=join_notes(f"skipped: {reason}", note)) for m, k, p in metrics])

    if cat.labels is None:
        return skip_all("the manifest has no 'label' column")
    if cat.split is None:
        return skip_all("the manifest has no 'split' column (train/test)")
    codes = cat.labels.codes[emb.rows]
    split = cat.split.take(emb.rows)
    known = codes >= 0
    train, test = np.flatnonzero(known & split.mask("train")), np.flatnonzero(known & split.mask("test"))
    unlabelled = int((~known & (split.mask("train") | split.mask("test"))).sum())
    base = join_notes(f"{unlabelled} unlabelled items excluded" if unlabelled else None, emb.note())
    if train.size < 2 or np.unique(codes[train]).size < 2:
        return skip_all(f"{train.size} labelled train items with {np.unique(codes[train]).size} labels", base)
    if test.size == 0:
        return skip_all("no labelled test items", base)
    y_train, y_test = codes[train], codes[test]
    unseen = int((~np.isin(y_test, y_train)).sum())
    base = join_notes(f"{unseen} test items with a label no train item has (always wrong)" if unseen else None,
                      f"train={train.size}", base)
    s = ctx.settings
    src = ctx.place(emb.source)
    test_ids = ids_of(cat.ids, emb.rows[test])
    rows: list[ScoreRow] = []
    per_item: list[pa.Table] = []

    # --- linear probe ---------------------------------------------------------------------------------
    with stopwatch() as t:
        fit_rows, params, note = train, {}, base
        if opts.max_train is not None and train.size > opts.max_train:
            fit_rows = train[seeded_sample(train.size, opts.max_train, derive_seed(s.seed, TASK, target, "train"))]
            params["seed"] = s.seed
            note = join_notes(f"logistic fit on {opts.max_train} of {train.size} train items (seeded)", note)
        X = gather_rows(src, fit_rows, ctx.runner).astype(np.float64)
        y = codes[fit_rows]
        C = choose_c(X, y, opts.c_grid, opts.max_iter, derive_seed(s.seed, TASK, target, "holdout"))
        model = _fit_logistic(X, y, C, opts.max_iter)
        del X
        pred = np.empty(test.size, dtype=np.int64)
        for lo, hi, part in map_blocks_of(_predict_block, src.select(test), runner=ctx.runner,
                                          params={"coef": model.coef_, "intercept": model.intercept_,
                                                  "classes": model.classes_.astype(np.int64)}):
            pred[lo:hi] = part
    params.update({"C": C, "c_grid": opts.c_grid, "train": int(fit_rows.size)})
    correct = (pred == y_test).astype(np.float64)
    ci = bootstrap_mean(correct, s.bootstrap_resamples, derive_seed(s.seed, TASK, target, "linear_probe"),
                        s.confidence)
    acc_row = ctx.row(TASK, target, "linear_probe", correct.mean(), test.size, t[0], split="test",
                      protocol=LOGISTIC, params=params, ci_low=ci.low, ci_high=ci.high,
                      note=join_notes(f"C={C:g} chosen on a held-out 20% of train", note))
    rows.append(acc_row)
    per_item.append(per_item_table(acc_row, test_ids, correct))
    ci = bootstrap_statistic(test.size, lambda idx: macro_f1(y_test[idx], pred[idx]), s.bootstrap_resamples,
                             derive_seed(s.seed, TASK, target, "linear_probe_macro_f1"), s.confidence)
    rows.append(ctx.row(TASK, target, "linear_probe_macro_f1", macro_f1(y_test, pred), test.size, t[0],
                        split="test", protocol=LOGISTIC, params=params, ci_low=ci.low, ci_high=ci.high, note=note))

    # --- k-NN vote ------------------------------------------------------------------------------------
    kmax = max(opts.knn_ks)
    voters, knn_params, knn_note = np.arange(test.size), {"train": int(train.size)}, base
    if opts.knn_max_test is not None and test.size > opts.knn_max_test:
        voters = seeded_sample(test.size, opts.knn_max_test, derive_seed(s.seed, TASK, target, "knn-test"))
        knn_params.update(test=int(voters.size), seed=s.seed)
        knn_note = join_notes(f"k-NN vote for {voters.size} of {test.size} test items (seeded), neighbours among "
                              f"all {train.size} train items", base)
    with stopwatch() as t:
        top = topk_search(query_rows(src, test[voters], ctx.runner), src.select(train), min(kmax, train.size),
                          chunk_rows=s.block_size, runner=ctx.runner)
        neighbour_labels = y_train[top.indices]
    for k in opts.knn_ks:
        if k > train.size:
            rows.append(ctx.row(TASK, target, "knn_classify", None, 0, 0.0, k=k, split="test", protocol=KNN_VOTE,
                                note=join_notes(f"skipped: k={k} exceeds the {train.size} train items", base)))
            continue
        correct = (knn_vote(neighbour_labels, k, len(cat.labels.values)) == y_test[voters]).astype(np.float64)
        ci = bootstrap_mean(correct, s.bootstrap_resamples, derive_seed(s.seed, TASK, target, "knn_classify", k),
                            s.confidence)
        row = ctx.row(TASK, target, "knn_classify", correct.mean(), voters.size, t[0], k=k, split="test",
                      protocol=KNN_VOTE, params=knn_params, ci_low=ci.low, ci_high=ci.high, note=knn_note)
        rows.append(row)
        per_item.append(per_item_table(row, test_ids.take(pa.array(voters)), correct))
    return UnitResult(rows, per_item=pa.concat_tables(per_item))


def _plan(inputs: PlanInputs) -> list[ScoreUnit]:
    """One unit per probed modality the model has, when the manifest has labels."""
    if inputs.catalogue.labels is None:
        return []
    opts: ProbeOptions = inputs.options(TASK)
    return [ScoreUnit(TASK, m, (m,), lambda ctx, e, tv, m=m, o=opts: score_probes(ctx, e[m], o))
            for m in opts.modalities if m in inputs.modalities]


SCORE_TASK = ScoreTask(
    name=TASK, plan=_plan, options=ProbeOptions, modalities=("image", "text", "sketch"), columns=("label", "split"),
    description="label probes on test items: logistic-regression accuracy and macro F1, k-NN vote accuracy",
    headline=(dict(label="probe acc", metric="linear_probe", split=["test"]),
              dict(label="k-NN acc@{k}", metric="knn_classify", k=5, split=["test"])),
)
