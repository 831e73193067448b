"""Rankability: does a direction in embedding space order items by a human attribute (size, price, age...)?

For every ``attr_<name>`` of the manifest an axis v is fitted on L2-normalised *train* items and the test
items are ranked by <v, x>; the score is Spearman (scipy's convention: average ranks for ties) between
that projection and the attribute on *test* items (``split`` column). Three fits, each its own ``protocol``:

- ``regression``: ridge regression of the attribute on the embedding (intercept fitted, as sklearn's
  ``Ridge(alpha)``); v is the coefficient vector.
- ``fewshot`` (k = n): the same ridge on n randomly drawn labelled train items, averaged over seeded draws;
  how many labels a user needs to find the axis.
- ``extremes``: v = x_max - x_min of the two train items with the largest and smallest attribute (first
  in id order on ties): the zero-effort axis.
- ``prompt-axis``: v = text(high prompt) - text(low prompt), e.g. "a photo of a large {}" minus "a photo
  of a small {}" (``score.options.rankability.prompt_axes``): the model's prompt vectors ``attr:<name>:high``
  and ``attr:<name>:low`` (:mod:`embedeval.io.prompts`); no training item is used (zero-shot).

Every fit gets three metrics on the test items (mean over a few-shot fit's draws):

- ``spearman``;
- ``kendall_tau_b``: Kendall's tau-b (ties in either variable corrected, as ``scipy.stats.kendalltau``);
- ``pairwise_accuracy``: among test pairs with distinct attribute values, the share the projection orders
  the same way (projection ties count 1/2): ``1/2 + (C - D) / (2 (n0 - n_y))`` with C - D from tau-b, so
  O(n log n) like tau.

Items with NaN attribute are excluded and counted. An attribute with a single value (or a split with a
single value) has no defined Spearman: it gets a row with value null and a note, never a number.
Memory: O(d^2 + block * d) for the primal fit, O(n_train^2) for the dual one (chosen when n_train < d).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.stats import kendalltau, rankdata

from embedeval.engine.runner import TileRunner
from embedeval.engine.sources import ArrayBlocks, BlockSource
from embedeval.engine.tiles import gather_rows, map_blocks_of, reduce_blocks
from embedeval.io.prompts import PROMPT_MODALITY
from embedeval.scoring.bootstrap import Interval, percentile_interval, resample_indices, derive_seed
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.parts import UnitResult
from embedeval.scoring.registry import PlanInputs, ScoreTask, ScoreUnit
from embedeval.scoring.schema import ScoreRow

if TYPE_CHECKING:
    from embedeval.scoring.settings import ScoreSettings

TASK = "rankability"
METRICS = ("spearman", "kendall_tau_b", "pairwise_accuracy")


class RankabilityOptions(BaseModel):
    """``score.options.rankability``."""

    model_config = ConfigDict(extra="forbid")

    prompt_axes: dict[str, list[str]] = Field(
        default_factory=dict, description="attribute -> [low prompt, high prompt], e.g. size: ['a photo of a "
                                          "small {}', 'a photo of a large {}'] ({} = axis_subject)")
    axis_subject: str = Field("object", description="what fills {} in the axis prompts")

    @field_validator("prompt_axes")
    @classmethod
    def _pairs(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, pair in v.items():
            if len(pair) != 2 or any(p.count("{}") > 1 for p in pair):
                raise ValueError(f"prompt_axes.{name} must be [low prompt, high prompt] with at most one '{{}}'")
        return v
_MAX_REDRAWS = 100
_BATCH_CELLS = 500_000  # resampled projection values ranked at once (4 MB of float64 per array)
# kendall_rows counts pairs directly up to this many items: below it scipy's per-call overhead (~1 ms) is
# most of the cost (the bootstrap calls it fits x resamples times per score); above it O(n log n) wins.
_PAIRWISE_MAX_N = 512


def fit_ridge_axis(X: "np.ndarray | BlockSource", y: np.ndarray, alpha: float, block_size: int = 4096,
                   runner: TileRunner | None = None) -> np.ndarray:
    """The coefficient vector of ridge regression of y on X with an unpenalised intercept.

    Equals ``sklearn.linear_model.Ridge(alpha).fit(X, y).coef_``. Solved in the primal (d x d normal
    equations accumulated block by block in float64: two passes, the mean then the centred Gram) when
    n >= d, else in the dual (n x n, the n rows gathered). X may be a ``BlockSource``: the passes then
    run as block tasks. Memory O(d^2) (primal) or O(n^2 + n d) (dual) on the driver.
    """
    src = X if isinstance(X, BlockSource) else ArrayBlocks(np.asarray(X), block_size)
    y = np.asarray(y, dtype=np.float64)
    n, d = src.n, src.dim
    yc = y - y.mean()
    if n >= d:
        per_block = [yc[lo:hi] for lo, hi in zip(src.offsets[:-1], src.offsets[1:])]
        mu = reduce_blocks(_column_sum, src, np.add, np.zeros(d), runner=runner) / n
        gram, xty = reduce_blocks(_centred_normal_equations, src, _add_pair, (np.zeros((d, d)), np.zeros(d)),
                                  params={"mu": mu}, per_block=per_block, runner=runner)
        gram[np.diag_indices(d)] += alpha
        return np.linalg.solve(gram, xty)
    Xd = np.asarray(X if not isinstance(X, BlockSource) else gather_rows(src, np.arange(n), runner), dtype=np.float64)
    xc = Xd - Xd.mean(axis=0)
    kernel = xc @ xc.T
    kernel[np.diag_indices(n)] += alpha
    return xc.T @ np.linalg.solve(kernel, yc)


def _column_sum(block: np.ndarray, lo: int, _: None) -> np.ndarray:
    return block.astype(np.float64).sum(axis=0)


def _centred_normal_equations(block: np.ndarray, lo: int, yc: np.ndarray, *, mu: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray]:
    xb = block.astype(np.float64) - mu
    return xb.T @ xb, xb.T @ yc


def _add_pair(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return a[0] + b[0], a[1] + b[1]


def _project_block(block: np.ndarray, lo: int, _: None, *, axes: np.ndarray) -> np.ndarray:
    return axes @ block.T.astype(np.float64)


def project(source: BlockSource, axes: np.ndarray, runner: TileRunner | None = None) -> np.ndarray:
    """(n_axes, n) projections <v, x> of every row on every axis, by block tasks; O(n_axes x n) on the driver."""
    axes = np.atleast_2d(np.asarray(axes, dtype=np.float64))
    out = np.empty((axes.shape[0], source.n))
    for lo, hi, part in map_blocks_of(_project_block, source, params={"axes": axes}, runner=runner):
        out[:, lo:hi] = part
    return out


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Spearman of two (r, n) arrays (average ranks for ties, as scipy); NaN for constant rows."""
    return _pearson_rows(rankdata(np.atleast_2d(a), axis=1), rankdata(np.atleast_2d(b), axis=1))


def kendall_rows(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``a`` (r, n): Kendall's tau-b with y and the pairwise ordering accuracy (module docstring).

    NaN where undefined (y constant; tau-b also when the row is constant, where the accuracy is 1/2).
    Up to :data:`_PAIRWISE_MAX_N` items the pairs are counted directly for all rows at once
    (:func:`_pair_counts`, O(r x n^2) time, at most ``_BATCH_CELLS`` pair differences in memory), else one
    ``scipy.stats.kendalltau`` per row (O(r x n log n)); both give scipy's tau-b to the bit."""
    a = np.atleast_2d(a)
    y = np.asarray(y, dtype=np.float64)
    n0 = y.size * (y.size - 1) / 2.0
    n_y = _tied_pairs(y)
    tau = np.full(a.shape[0], np.nan)
    acc = np.full(a.shape[0], np.nan)
    if n0 - n_y <= 0:
        return tau, acc
    if y.size <= _PAIRWISE_MAX_N and np.isfinite(a).all():
        con_minus_dis, row_ties = _pair_counts(a, y)
        tot = y.size * (y.size - 1) // 2
        varies = row_ties < tot
        with np.errstate(invalid="ignore", divide="ignore"):
            # scipy.stats.kendalltau's own operations on the same integer counts: the same float64 result
            tau[varies] = np.clip(con_minus_dis[varies] / np.sqrt(tot - row_ties[varies])
                                  / np.sqrt(tot - int(n_y)), -1.0, 1.0)
        n_x = row_ties.astype(np.float64)
    else:
        n_x = np.array([_tied_pairs(row) for row in a])
        for i in np.flatnonzero(n0 - n_x > 0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                tau[i] = kendalltau(a[i], y, variant="b").statistic
    constant = n0 - n_x <= 0
    acc[constant] = 0.5
    with np.errstate(invalid="ignore"):
        concordance = tau * np.sqrt((n0 - n_x) * (n0 - n_y))       # C - D
        acc[~constant] = (0.5 + concordance / (2.0 * (n0 - n_y)))[~constant]
    return tau, acc


def _pair_counts(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C - D, pairs tied in the row) of every row of ``a`` (r, n) against y, as int64 arrays, from the
    signs of all n (n - 1) / 2 pair differences; rows are taken in chunks of at most ``_BATCH_CELLS`` pairs."""
    i, j = np.triu_indices(y.size, 1)
    sign_y = np.sign(y[i] - y[j])
    con_minus_dis = np.empty(a.shape[0], np.int64)
    ties = np.empty(a.shape[0], np.int64)
    step = max(1, _BATCH_CELLS // max(1, i.size))
    for lo in range(0, a.shape[0], step):
        diff = a[lo:lo + step, i] - a[lo:lo + step, j]          # finite: 0 exactly where the pair ties
        con_minus_dis[lo:lo + step] = (np.sign(diff) @ sign_y).astype(np.int64)   # sums of +-1: exact
        ties[lo:lo + step] = (diff == 0).sum(axis=1)
    return con_minus_dis, ties


def _tied_pairs(v: np.ndarray) -> float:
    _, counts = np.unique(v, return_counts=True)
    return float((counts * (counts - 1) / 2.0).sum())


def _pearson_rows(ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """Row-wise Pearson of rank arrays (``rb`` may broadcast against ``ra``); NaN where a row is constant."""
    ra = ra - ra.mean(axis=-1, keepdims=True)
    rb = rb - rb.mean(axis=-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=-1) * (rb * rb).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def _resampled_mean_spearman(projections: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per resample (rows of ``idx``), the mean over fits of Spearman(projection, y) on the resampled
    items; y is ranked once per resample, shared by every fit."""
    n_fits = projections.shape[0]
    b, m = idx.shape
    ry = rankdata(y[idx], axis=1)[:, None, :]                                   # (b, 1, m)
    rp = rankdata(projections[:, idx].transpose(1, 0, 2).reshape(-1, m), axis=1).reshape(b, n_fits, m)
    r = _pearson_rows(rp, ry)                                                  # (b, n_fits)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                       # all-NaN resamples -> NaN, dropped
        return np.nanmean(r, axis=1)


def mean_spearman_interval(projections: np.ndarray, y: np.ndarray, resamples: int, seed: int,
                           confidence: float, max_units: int | None = None) -> Interval:
    """Bootstrap over test items of the mean (over fits) Spearman; ``projections`` is (n_fits, n_test).

    Resamples are ranked in batches (one rankdata call per batch), at most ``_BATCH_CELLS`` values at once.
    With more than ``max_units`` test items, an m-out-of-n bootstrap (m = ``max_units``, Bickel et al.):
    resamples of m items, their spread around the full-sample value shrunk by sqrt(m / n). Cost
    O(resamples x m log m) instead of O(resamples x n log n).
    """
    if resamples <= 0 or y.size < 3:
        return Interval(None, None)
    n_fits, n = projections.shape
    if max_units is not None and n > max_units >= 3:
        return _m_out_of_n_interval(projections, y, resamples, seed, confidence, max_units)
    stats = []
    step = max(1, _BATCH_CELLS // (n_fits * n))
    for chunk in resample_indices(n, resamples, seed):
        for s in range(0, chunk.shape[0], step):
            stats.append(_resampled_mean_spearman(projections, y, chunk[s:s + step]))
    return percentile_interval(np.concatenate(stats), confidence)


def _m_out_of_n_interval(projections: np.ndarray, y: np.ndarray, resamples: int, seed: int, confidence: float,
                         m: int) -> Interval:
    n_fits, n = projections.shape
    full = _pearson_rows(rankdata(projections, axis=1), rankdata(y)[None, :])
    value = float(np.nanmean(full)) if np.isfinite(full).any() else np.nan
    rng = np.random.default_rng(seed)
    stats = []
    step = max(1, _BATCH_CELLS // (n_fits * m))
    done = 0
    while done < resamples:
        b = min(step, resamples - done)
        stats.append(_resampled_mean_spearman(projections, y, rng.integers(0, n, size=(b, m))))
        done += b
    spread = percentile_interval(np.sqrt(m / n) * (np.concatenate(stats) - value), confidence)
    if spread.low is None or spread.high is None or not np.isfinite(value):
        return Interval(None, None)
    return Interval(value + spread.low, value + spread.high)


def kendall_intervals(projections: np.ndarray, y: np.ndarray, resamples: int, seed: int, confidence: float,
                      max_units: int | None = None,
                      full_rows: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Interval, Interval]:
    """Bootstrap over test items of the mean (over fits) tau-b and pairwise accuracy, on the same resamples.

    As :func:`mean_spearman_interval`: with more than ``max_units`` items an m-out-of-n bootstrap (the
    spread around the full-sample value shrunk by sqrt(m / n)). Cost O(resamples x fits x m log m); up to
    :data:`_PAIRWISE_MAX_N` items O(resamples x fits x n^2) in batched matrix products (:class:`_PairSigns`,
    the same bits).
    ``full_rows``: the caller's ``kendall_rows(projections, y)``, so the full-sample values are not
    computed twice (O(fits x n log n), the largest single cost at a million test items)."""
    none = (Interval(None, None), Interval(None, None))
    if resamples <= 0 or y.size < 3:
        return none
    n = y.size
    m = max_units if max_units is not None and n > max_units >= 3 else n
    rng = np.random.default_rng(seed)
    stats = np.full((resamples, 2), np.nan)
    small = n <= _PAIRWISE_MAX_N and np.isfinite(projections).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                       # all-NaN resamples -> NaN, dropped
        if small:
            pairs = _PairSigns(projections, y)
            step = max(1, _BATCH_CELLS // (n * max(1, projections.shape[0])))
            for lo in range(0, resamples, step):
                idx = rng.integers(0, n, size=(min(step, resamples - lo), m))
                stats[lo:lo + idx.shape[0]] = pairs.resampled_means(idx)
        else:
            for r in range(resamples):
                idx = rng.integers(0, n, size=m)
                tau, acc = kendall_rows(projections[:, idx], y[idx])
                stats[r] = np.nanmean(tau), np.nanmean(acc)
        if m == n:
            return percentile_interval(stats[:, 0], confidence), percentile_interval(stats[:, 1], confidence)
        full = np.nanmean(np.vstack(full_rows if full_rows is not None else kendall_rows(projections, y)), axis=1)
    out = []
    for j in range(2):
        spread = percentile_interval(np.sqrt(m / n) * (stats[:, j] - full[j]), confidence)
        ok = spread.low is not None and spread.high is not None and np.isfinite(full[j])
        out.append(Interval(full[j] + spread.low, full[j] + spread.high) if ok else Interval(None, None))
    return out[0], out[1]


class _PairSigns:
    """The pair signs of n items (n <= :data:`_PAIRWISE_MAX_N`), so that a bootstrap resample's tau-b and
    pairwise accuracy come from its item counts instead of its n^2 pair differences.

    A resample drawing item i w_i times has, over its pairs of positions, C - D = w^T S w / 2 with
    S_ij = sign(x_i - x_j) sign(y_i - y_j), and (w^T E w - m) / 2 pairs tied in x, with E_ij = [x_i == x_j]
    (an item drawn twice ties with itself). These are the integers :func:`kendall_rows` counts on the
    resampled values (sums of small integers in float64: exact), put through the same float operations,
    so the statistics are the same bits. Memory O(fits x n^2) float64 (4 MB a fit at n = 512)."""

    def __init__(self, projections: np.ndarray, y: np.ndarray) -> None:
        y = np.asarray(y, dtype=np.float64)
        dy = np.sign(y[:, None] - y[None, :])
        self.fits = projections.shape[0]
        self.tie_y = (dy == 0).astype(np.float64)
        dx = np.sign(projections[:, :, None] - projections[:, None, :])           # (fits, n, n)
        self.concord = dx * dy
        self.tie_x = (dx == 0).astype(np.float64)

    def resampled_means(self, idx: np.ndarray) -> np.ndarray:
        """(b, 2): per resample (a row of ``idx``, item indices), the mean over fits of tau-b and pairwise
        accuracy, NaN where undefined (as ``np.nanmean`` of :func:`kendall_rows` on the resampled values)."""
        b, m = idx.shape
        n = self.tie_y.shape[0]
        w = np.zeros((b, n))
        np.add.at(w, (np.repeat(np.arange(b), m), idx.ravel()), 1.0)
        tot = m * (m - 1) // 2
        n0 = m * (m - 1) / 2.0
        n_y = ((w @ self.tie_y * w).sum(axis=1) - m) / 2.0                      # (b,) pairs tied in y
        defined = n0 - n_y > 0                                                  # y varies in the resample
        tau = np.full((b, self.fits), np.nan)
        acc = np.full((b, self.fits), np.nan)
        for f in range(self.fits):
            con_minus_dis = np.rint((w @ self.concord[f] * w).sum(axis=1) / 2.0).astype(np.int64)
            row_ties = np.rint(((w @ self.tie_x[f] * w).sum(axis=1) - m) / 2.0).astype(np.int64)
            varies = defined & (row_ties < tot)
            with np.errstate(invalid="ignore", divide="ignore"):
                tau[varies, f] = np.clip(con_minus_dis[varies] / np.sqrt(tot - row_ties[varies])
                                         / np.sqrt(tot - n_y[varies].astype(np.int64)), -1.0, 1.0)
                n_x = row_ties.astype(np.float64)
                constant = defined & (n0 - n_x <= 0)
                acc[constant, f] = 0.5
                concordance = tau[:, f] * np.sqrt((n0 - n_x) * (n0 - n_y))
                rest = defined & ~constant
                acc[rest, f] = (0.5 + concordance / (2.0 * (n0 - n_y)))[rest]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)                   # all-NaN resamples -> NaN
            return np.column_stack([np.nanmean(tau, axis=1), np.nanmean(acc, axis=1)])


FitStatistics = tuple[np.ndarray, np.ndarray, np.ndarray, Interval, Interval, Interval]


def fit_statistics(projections: np.ndarray, y: np.ndarray, resamples: int, seed: int, kendall_seed: int,
                   confidence: float, max_units: int | None) -> FitStatistics:
    """Per fitted axis (rows of ``projections``, (fits, n) on the test items): Spearman, tau-b and pairwise
    accuracy with y, and the bootstrap intervals of their means over fits (:func:`mean_spearman_interval`,
    :func:`kendall_intervals`). One fit's whole job, so fits run as tasks side by side (the bootstraps
    were most of rankability's time at a million test items, on the driver alone). Memory O(fits x n), and
    O(fits x n^2) up to :data:`_PAIRWISE_MAX_N` items (:class:`_PairSigns`)."""
    r = _pearson_rows(rankdata(projections, axis=1), rankdata(y)[None, :])
    tau, acc = kendall_rows(projections, y)
    ci = mean_spearman_interval(projections, y, resamples, seed, confidence, max_units=max_units)
    ci_tau, ci_acc = kendall_intervals(projections, y, resamples, kendall_seed, confidence, max_units=max_units,
                                       full_rows=(tau, acc))
    return r, tau, acc, ci, ci_tau, ci_acc


def score_rankability(ctx: TaskContext, emb: ModalityEmbeddings) -> list[ScoreRow]:
    """spearman, kendall_tau_b and pairwise_accuracy rows for every attribute x fit of one modality
    (one vector per item)."""
    emb = emb.first_per_item()
    rows: list[ScoreRow] = []
    for name in sorted(ctx.catalogue.attrs):
        rows.extend(_score_attribute(ctx, emb, name))
    return rows


def _score_attribute(ctx: TaskContext, emb: ModalityEmbeddings, name: str) -> list[ScoreRow]:
    s = ctx.settings
    values = ctx.catalogue.attrs[name][emb.rows]
    finite = np.isfinite(values)
    base_note = join_notes(emb.note(), f"{int((~finite).sum())} items with NaN {name} excluded"
                           if (~finite).any() else None)
    opts: RankabilityOptions = s.options_for(TASK)
    prompt_axis = ctx.prompts.axis(name) if ctx.prompts is not None else None
    wants_prompt = prompt_axis is not None or name in opts.prompt_axes
    fit_names = ["regression", "extremes"] + [f"fewshot:{n}" for n in s.fewshot_ns] + \
        (["prompt-axis"] if wants_prompt else [])

    def skipped(fit: str, reason: str, n: int, k: int | None = None, seconds: float = 0.0) -> list[ScoreRow]:
        return [ctx.row(TASK, name, metric, None, n, seconds, split="test", protocol=fit, k=k,
                        params=_fit_params(fit, s), note=join_notes(f"skipped: {reason}", base_note))
                for metric in METRICS]

    def skip_all(reason: str, n: int) -> list[ScoreRow]:
        out = []
        for v in fit_names:
            kind, _, k = v.partition(":")
            out.extend(skipped(kind, reason, n, int(k) if k else None))
        return out

    if ctx.catalogue.split is None:
        return skip_all("manifest has no 'split' column (train/test)", 0)
    split = ctx.catalogue.split.take(emb.rows)
    train = finite & split.mask("train")
    test = finite & split.mask("test")
    distinct = np.unique(values[finite])
    if distinct.size <= 1:
        shown = "none" if distinct.size == 0 else f"{distinct[0]:g}"
        return skip_all(f"attribute {name!r} has a single value ({shown}) over {int(finite.sum())} items", int(test.sum()))
    if np.unique(values[train]).size < 2:
        return skip_all(f"fewer than 2 distinct {name} values among {int(train.sum())} train items", int(test.sum()))
    if np.unique(values[test]).size < 2 or test.sum() < 3:
        return skip_all(f"{int(test.sum())} test items with fewer than 2 distinct {name} values", int(test.sum()))

    source = ctx.place(emb.source)
    x_train, y_train = source.select(np.flatnonzero(train)), values[train]
    x_test, y_test = source.select(np.flatnonzero(test)), values[test]
    counts = f"train={int(train.sum())} test={int(test.sum())}"
    out: list[ScoreRow] = []
    fits: list[tuple[str, np.ndarray, float, int | None, str | None]] = []

    def emit(fit: str, axes: np.ndarray, seconds: float, k: int | None = None, note: str | None = None) -> None:
        fits.append((fit, np.atleast_2d(axes), seconds, k, note))

    def finish() -> None:
        # one pass over the test items projects every axis of every fit
        stacked = np.vstack([axes for _, axes, _, _, _ in fits])
        with stopwatch() as t:
            all_proj = project(x_test, stacked, ctx.runner)
        calls, at = [], 0
        for fit, axes, _, k, _ in fits:
            calls.append((all_proj[at:at + axes.shape[0]], y_test, s.bootstrap_resamples,
                          derive_seed(s.seed, TASK, name, fit, k), derive_seed(s.seed, TASK, name, fit, k, "kendall"),
                          s.confidence, s.bootstrap_max_units))
            at += axes.shape[0]
        # each fit's statistics and bootstrap intervals are one call: tasks side by side on Ray
        stats: dict[int, FitStatistics] = {}
        with stopwatch() as t_stats:
            for i, value in ctx.runner.map_calls(fit_statistics, calls):
                stats[i] = value
        for i, (fit, axes, seconds, k, note) in enumerate(fits):
            share = axes.shape[0] / stacked.shape[0]
            _emit_row(fit, stats[i], seconds + (t[0] + t_stats[0]) * share, k, note)

    def _emit_row(fit: str, stats: "FitStatistics", seconds: float, k: int | None, note: str | None) -> None:
        r, tau, acc, ci, ci_tau, ci_acc = stats
        if y_test.size > s.bootstrap_max_units:
            note = join_notes(note, f"interval: m-out-of-n bootstrap, m={s.bootstrap_max_units}")
        for metric, values, interval in (("spearman", r, ci), ("kendall_tau_b", tau, ci_tau),
                                         ("pairwise_accuracy", acc, ci_acc)):
            value = float(np.nanmean(values)) if np.isfinite(values).any() else None
            out.append(ctx.row(TASK, name, metric, value, y_test.size, seconds, split="test", protocol=fit,
                               params=_fit_params(fit, s), k=k, ci_low=interval.low, ci_high=interval.high,
                               note=join_notes(counts, note, base_note)))

    with stopwatch() as t:
        axis = fit_ridge_axis(x_train, y_train, s.ridge_alpha, s.block_size, ctx.runner)
    emit("regression", axis, t[0], note=f"ridge alpha={s.ridge_alpha:g}")

    with stopwatch() as t:
        ends = gather_rows(x_train, np.array([int(np.argmax(y_train)), int(np.argmin(y_train))]), ctx.runner)
        axis = ends[0].astype(np.float64) - ends[1].astype(np.float64)
    emit("extremes", axis, t[0])

    for n in s.fewshot_ns:
        if n > y_train.size:
            out.extend(skipped("fewshot", f"only {y_train.size} train items for n={n}", y_test.size, n))
            continue
        with stopwatch() as t:
            axes, redraws = _fewshot_axes(x_train, y_train, n, s.fewshot_repeats, s.ridge_alpha,
                                          derive_seed(s.seed, TASK, name, "fewshot-draws", n), ctx.runner)
        if axes is None:
            out.extend(skipped("fewshot", f"no draw of {n} train items has 2 distinct values", y_test.size, n, t[0]))
            continue
        emit("fewshot", axes, t[0], k=n,
             note=f"mean over {s.fewshot_repeats} seeded draws" + (f", {redraws} constant draws redrawn" if redraws else ""))
    if wants_prompt:
        if prompt_axis is None:
            out.extend(skipped("prompt-axis", f"the model has no prompt vectors attr:{name}:low / attr:{name}:high",
                               y_test.size))
        elif prompt_axis.size != emb.dim:
            out.extend(skipped("prompt-axis", f"prompt vectors have dim {prompt_axis.size}, {emb.modality} vectors "
                                              f"dim {emb.dim}", y_test.size))
        else:
            emit("prompt-axis", prompt_axis, 0.0, note="zero-shot: text(high) - text(low), no training item")
    finish()
    return _in_fit_order(out, fit_names)


def _fewshot_axes(X: BlockSource, y: np.ndarray, n: int, repeats: int, alpha: float,
                  seed: int, runner: TileRunner | None = None) -> tuple[np.ndarray | None, int]:
    """Ridge axes fitted on ``repeats`` seeded draws of n train items; draws with one value are redrawn.

    The drawn rows (at most n x repeats) are gathered at once; O(n x repeats x d) on the driver."""
    rng = np.random.default_rng(seed)
    draws, redraws = [], 0
    while len(draws) < repeats:
        idx = np.sort(rng.choice(y.size, size=n, replace=False))
        if np.unique(y[idx]).size < 2:
            redraws += 1
            if redraws > _MAX_REDRAWS * repeats:
                return None, redraws
            continue
        draws.append(idx)
    flat = np.concatenate(draws)
    rows = gather_rows(X, flat, runner)
    axes = [fit_ridge_axis(rows[i * n:(i + 1) * n], y[idx], alpha) for i, idx in enumerate(draws)]
    return np.vstack(axes), redraws


def _fit_params(fit: str, s: ScoreSettings) -> dict[str, float | int] | None:
    """The parameters of a fit that change its number (its ``params``; the fit itself is the protocol)."""
    if fit == "regression":
        return {"alpha": s.ridge_alpha}
    if fit == "fewshot":
        return {"alpha": s.ridge_alpha, "repeats": s.fewshot_repeats, "seed": s.seed}
    return None


def _in_fit_order(rows: list[ScoreRow], fit_names: list[str]) -> list[ScoreRow]:
    """Rows in the order regression, extremes, few-shot by n (skipped ones where they fall)."""
    rank = {v: i for i, v in enumerate(fit_names)}
    return sorted(rows, key=lambda r: rank.get(r.protocol if r.k is None else f"{r.protocol}:{r.k}", len(rank)))


def _plan(inputs: PlanInputs) -> list[ScoreUnit]:
    """One unit per modality in ``rank_modalities`` when the manifest has ``attr_*`` columns (reading the
    model's prompt vectors too when it has them, for ``prompt-axis``)."""
    if not inputs.catalogue.attrs:
        return []
    extra = (PROMPT_MODALITY,) if PROMPT_MODALITY in inputs.modalities else ()
    return [ScoreUnit(TASK, m, (m, *extra), lambda ctx, e, tv, m=m: UnitResult(score_rankability(ctx, e[m])))
            for m in inputs.settings.rank_modalities if m in inputs.modalities]


SCORE_TASK = ScoreTask(
    name=TASK, plan=_plan, modalities=("image", "text", "sketch", PROMPT_MODALITY), columns=("attr_*", "split"),
    options=RankabilityOptions,
    description="Spearman, Kendall tau-b and pairwise accuracy of a linear axis (ridge, few-shot, two extremes, "
                "prompt pair) with each attribute on test items",
    headline=(dict(label="rank ρ: {target}", metric="spearman", protocol="regression", split=["test", "all"]),),
    plots=("embedeval.report.plots:rankability_plots",))
