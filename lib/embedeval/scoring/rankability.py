"""Rankability: does a direction in embedding space order items by a human attribute (size, price, age...)?

For every ``attr_<name>`` of the manifest an axis v is fitted on L2-normalised *train* items and the test
items are ranked by <v, x>; the score is Spearman (scipy's convention: average ranks for ties) between
that projection and the attribute on *test* items (``split`` column). Three fits, reported in ``variant``:

- ``regression``: ridge regression of the attribute on the embedding (intercept fitted, as sklearn's
  ``Ridge(alpha)``); v is the coefficient vector.
- ``fewshot`` (k = n): the same ridge on n randomly drawn labelled train items, averaged over seeded draws;
  how many labels a user needs to find the axis.
- ``extremes``: v = x_max - x_min of the two train items with the largest and smallest attribute (first
  in id order on ties): the zero-effort axis.

Items with NaN attribute are excluded and counted. An attribute with a single value (or a split with a
single value) has no defined Spearman: it gets a row with value null and a note, never a number.
Memory: O(d^2 + block * d) for the primal fit, O(n_train^2) for the dual one (chosen when n_train < d).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata

from embedeval.scoring.bootstrap import Interval, percentile_interval, resample_indices, derive_seed
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.schema import ScoreRow

TASK = "rankability"
_MAX_REDRAWS = 100
_BATCH_CELLS = 2_000_000  # resampled projection values ranked at once (16 MB of float64 per array)


def fit_ridge_axis(X: np.ndarray, y: np.ndarray, alpha: float, block_size: int = 4096) -> np.ndarray:
    """The coefficient vector of ridge regression of y on X with an unpenalised intercept.

    Equals ``sklearn.linear_model.Ridge(alpha).fit(X, y).coef_``. Solved in the primal (d x d, Gram
    accumulated in row blocks in float64) when n >= d, else in the dual (n x n).
    """
    X = np.asarray(X)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    mu = X.mean(axis=0, dtype=np.float64)
    yc = y - y.mean()
    if n >= d:
        gram = np.zeros((d, d), dtype=np.float64)
        xty = np.zeros(d, dtype=np.float64)
        for start in range(0, n, block_size):
            xb = X[start:start + block_size].astype(np.float64) - mu
            gram += xb.T @ xb
            xty += xb.T @ yc[start:start + block_size]
        gram[np.diag_indices(d)] += alpha
        return np.linalg.solve(gram, xty)
    xc = X.astype(np.float64) - mu
    kernel = xc @ xc.T
    kernel[np.diag_indices(n)] += alpha
    return xc.T @ np.linalg.solve(kernel, yc)


def extremes_axis(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x of the largest attribute minus x of the smallest (first occurrence on ties)."""
    return X[int(np.argmax(y))].astype(np.float64) - X[int(np.argmin(y))].astype(np.float64)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Spearman of two (r, n) arrays (average ranks for ties, as scipy); NaN for constant rows."""
    ra = rankdata(np.atleast_2d(a), axis=1)
    rb = rankdata(np.atleast_2d(b), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def mean_spearman_interval(projections: np.ndarray, y: np.ndarray, resamples: int, seed: int,
                           confidence: float) -> Interval:
    """Bootstrap over test items of the mean (over fits) Spearman; ``projections`` is (n_fits, n_test).

    Resamples are ranked in batches (one rankdata call per batch), at most ``_BATCH_CELLS`` values at once.
    """
    if resamples <= 0 or y.size < 3:
        return Interval(None, None)
    n_fits, n = projections.shape
    stats = []
    step = max(1, _BATCH_CELLS // (n_fits * n))
    for chunk in resample_indices(n, resamples, seed):
        for s in range(0, chunk.shape[0], step):
            idx = chunk[s:s + step]                                   # (b, n)
            p = projections[:, idx].transpose(1, 0, 2).reshape(-1, n)  # (b * n_fits, n)
            t = np.repeat(y[idx], n_fits, axis=0)
            r = spearman_rows(p, t).reshape(idx.shape[0], n_fits)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)       # all-NaN resamples -> NaN, dropped below
                stats.append(np.nanmean(r, axis=1))
    return percentile_interval(np.concatenate(stats), confidence)


def score_rankability(ctx: TaskContext, emb: ModalityEmbeddings) -> list[ScoreRow]:
    """Spearman rows for every attribute x fit of one modality (one vector per item)."""
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
    variants = ["regression", "extremes"] + [f"fewshot:{n}" for n in s.fewshot_ns]

    def skip_all(reason: str, n: int) -> list[ScoreRow]:
        out = []
        for v in variants:
            kind, _, k = v.partition(":")
            out.append(ctx.row(TASK, name, "spearman", None, n, 0.0, split="test", variant=kind,
                               k=int(k) if k else None, note=join_notes(f"skipped: {reason}", base_note)))
        return out

    if ctx.catalogue.split is None:
        return skip_all("manifest has no 'split' column (train/test)", 0)
    split = ctx.catalogue.split[emb.rows]
    train = finite & (split == "train")
    test = finite & (split == "test")
    distinct = np.unique(values[finite])
    if distinct.size <= 1:
        shown = "none" if distinct.size == 0 else f"{distinct[0]:g}"
        return skip_all(f"attribute {name!r} has a single value ({shown}) over {int(finite.sum())} items", int(test.sum()))
    if np.unique(values[train]).size < 2:
        return skip_all(f"fewer than 2 distinct {name} values among {int(train.sum())} train items", int(test.sum()))
    if np.unique(values[test]).size < 2 or test.sum() < 3:
        return skip_all(f"{int(test.sum())} test items with fewer than 2 distinct {name} values", int(test.sum()))

    x_train, y_train = emb.unit[train], values[train]
    x_test, y_test = emb.unit[test], values[test]
    counts = f"train={int(train.sum())} test={int(test.sum())}"
    out: list[ScoreRow] = []

    def emit(variant: str, axes: np.ndarray, seconds: float, k: int | None = None, note: str | None = None) -> None:
        proj = np.atleast_2d(axes) @ x_test.T.astype(np.float64)
        r = spearman_rows(proj, np.broadcast_to(y_test, proj.shape))
        value = float(np.nanmean(r)) if np.isfinite(r).any() else None
        ci = mean_spearman_interval(proj, y_test, s.bootstrap_resamples,
                                    derive_seed(s.seed, TASK, name, variant, k), s.confidence)
        out.append(ctx.row(TASK, name, "spearman", value, y_test.size, seconds, split="test", variant=variant,
                           k=k, ci_low=ci.low, ci_high=ci.high, note=join_notes(counts, note, base_note)))

    with stopwatch() as t:
        axis = fit_ridge_axis(x_train, y_train, s.ridge_alpha, s.block_size)
    emit("regression", axis, t[0], note=f"ridge alpha={s.ridge_alpha:g}")

    with stopwatch() as t:
        axis = extremes_axis(x_train, y_train)
    emit("extremes", axis, t[0])

    for n in s.fewshot_ns:
        if n > y_train.size:
            out.append(ctx.row(TASK, name, "spearman", None, y_test.size, 0.0, split="test", variant="fewshot", k=n,
                               note=join_notes(f"skipped: only {y_train.size} train items for n={n}", base_note)))
            continue
        with stopwatch() as t:
            axes, redraws = _fewshot_axes(x_train, y_train, n, s.fewshot_repeats, s.ridge_alpha,
                                          derive_seed(s.seed, TASK, name, "fewshot-draws", n))
        if axes is None:
            out.append(ctx.row(TASK, name, "spearman", None, y_test.size, t[0], split="test", variant="fewshot", k=n,
                               note=join_notes(f"skipped: no draw of {n} train items has 2 distinct values", base_note)))
            continue
        emit("fewshot", axes, t[0], k=n,
             note=f"mean over {s.fewshot_repeats} seeded draws" + (f", {redraws} constant draws redrawn" if redraws else ""))
    return out


def _fewshot_axes(X: np.ndarray, y: np.ndarray, n: int, repeats: int, alpha: float,
                  seed: int) -> tuple[np.ndarray | None, int]:
    """Ridge axes fitted on ``repeats`` seeded draws of n train items; draws with one value are redrawn."""
    rng = np.random.default_rng(seed)
    axes, redraws = [], 0
    while len(axes) < repeats:
        idx = np.sort(rng.choice(y.size, size=n, replace=False))
        if np.unique(y[idx]).size < 2:
            redraws += 1
            if redraws > _MAX_REDRAWS * repeats:
                return None, redraws
            continue
        axes.append(fit_ridge_axis(X[idx], y[idx], alpha))
    return np.vstack(axes), redraws
