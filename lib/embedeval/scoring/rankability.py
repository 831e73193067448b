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

from embedeval.engine.runner import TileRunner
from embedeval.engine.sources import ArrayBlocks, BlockSource
from embedeval.engine.tiles import gather_rows, map_blocks_of, reduce_blocks
from embedeval.scoring.bootstrap import Interval, percentile_interval, resample_indices, derive_seed
from embedeval.scoring.context import ModalityEmbeddings, TaskContext, join_notes, stopwatch
from embedeval.scoring.schema import ScoreRow

TASK = "rankability"
_MAX_REDRAWS = 100
_BATCH_CELLS = 500_000  # resampled projection values ranked at once (4 MB of float64 per array)


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
    y_ranks = rankdata(y_test)

    def emit(variant: str, axes: np.ndarray, seconds: float, k: int | None = None, note: str | None = None) -> None:
        fits.append((variant, np.atleast_2d(axes), seconds, k, note))

    def finish() -> None:
        # one pass over the test items projects every axis of every fit
        stacked = np.vstack([axes for _, axes, _, _, _ in fits])
        with stopwatch() as t:
            all_proj = project(x_test, stacked, ctx.runner)
        at = 0
        for variant, axes, seconds, k, note in fits:
            proj = all_proj[at:at + axes.shape[0]]
            at += axes.shape[0]
            _emit_row(variant, proj, seconds + t[0] * axes.shape[0] / stacked.shape[0], k, note)

    def _emit_row(variant: str, proj: np.ndarray, seconds: float, k: int | None, note: str | None) -> None:
        r = _pearson_rows(rankdata(proj, axis=1), y_ranks[None, :])
        value = float(np.nanmean(r)) if np.isfinite(r).any() else None
        ci = mean_spearman_interval(proj, y_test, s.bootstrap_resamples,
                                    derive_seed(s.seed, TASK, name, variant, k), s.confidence,
                                    max_units=s.bootstrap_max_units)
        if y_test.size > s.bootstrap_max_units:
            note = join_notes(note, f"interval: m-out-of-n bootstrap, m={s.bootstrap_max_units}")
        out.append(ctx.row(TASK, name, "spearman", value, y_test.size, seconds, split="test", variant=variant,
                           k=k, ci_low=ci.low, ci_high=ci.high, note=join_notes(counts, note, base_note)))

    with stopwatch() as t:
        axis = fit_ridge_axis(x_train, y_train, s.ridge_alpha, s.block_size, ctx.runner)
    emit("regression", axis, t[0], note=f"ridge alpha={s.ridge_alpha:g}")

    with stopwatch() as t:
        ends = gather_rows(x_train, np.array([int(np.argmax(y_train)), int(np.argmin(y_train))]), ctx.runner)
        axis = ends[0].astype(np.float64) - ends[1].astype(np.float64)
    emit("extremes", axis, t[0])

    for n in s.fewshot_ns:
        if n > y_train.size:
            out.append(ctx.row(TASK, name, "spearman", None, y_test.size, 0.0, split="test", variant="fewshot", k=n,
                               note=join_notes(f"skipped: only {y_train.size} train items for n={n}", base_note)))
            continue
        with stopwatch() as t:
            axes, redraws = _fewshot_axes(x_train, y_train, n, s.fewshot_repeats, s.ridge_alpha,
                                          derive_seed(s.seed, TASK, name, "fewshot-draws", n), ctx.runner)
        if axes is None:
            out.append(ctx.row(TASK, name, "spearman", None, y_test.size, t[0], split="test", variant="fewshot", k=n,
                               note=join_notes(f"skipped: no draw of {n} train items has 2 distinct values", base_note)))
            continue
        emit("fewshot", axes, t[0], k=n,
             note=f"mean over {s.fewshot_repeats} seeded draws" + (f", {redraws} constant draws redrawn" if redraws else ""))
    finish()
    return _in_fit_order(out, variants)


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


def _in_fit_order(rows: list[ScoreRow], variants: list[str]) -> list[ScoreRow]:
    """Rows in the order regression, extremes, few-shot by n (skipped ones where they fall)."""
    rank = {v: i for i, v in enumerate(variants)}
    return sorted(rows, key=lambda r: rank.get(r.variant if r.k is None else f"{r.variant}:{r.k}", len(rank)))
