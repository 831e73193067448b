"""The report's view of the paired model comparison (``scores/comparisons.parquet``).

Three things: which models each leaderboard column cannot separate from its best (the ``≈`` marker),
a pairwise table (one line per model pair of each headline column: difference, paired interval,
P(A > B), separable or not), and one plot, the P(A > B) matrix of the first headline column that has
comparisons (CorrEmbed when the run has it). A run without the file (older runs) shows none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedeval.io.storage import Storage
from embedeval.report.leaderboard import NEAR_BEST_MARK, Column, Leaderboard
from embedeval.report.plots import Plot, Style, _figure, figure_png
from embedeval.report.tables import Cell, Table
from embedeval.io.score_files import read_committed_score_table


@dataclass(frozen=True)
class Pair:
    """One ordered pair row of comparisons.parquet."""

    model_a: str
    model_b: str
    n: int
    diff: float
    diff_low: float | None
    diff_high: float | None
    p_a_better: float | None
    separable: bool | None


Comparisons = dict[tuple[str, str, str, int | None, str, str], dict[tuple[str, str], Pair]]


def load_comparisons(storage: Storage, run_id: str) -> Comparisons | None:
    """Pair rows by score identity (less the model), or None when the run has no comparisons file."""
    table = read_committed_score_table(storage, run_id, "comparisons")
    if table is None:
        return None
    out: Comparisons = {}
    for r in table.to_pylist():
        if r["kind"] != "pair":
            continue
        key = (r["task"], r["target"], r["metric"], r["k"], r["split"], r["protocol"])
        out.setdefault(key, {})[(r["model_a"], r["model_b"])] = Pair(
            r["model_a"], r["model_b"], r["n"], r["diff"], r["diff_low"], r["diff_high"], r["p_a_better"],
            r["separable"])
    return out


def _key(col: Column) -> tuple[str, str, str, int | None, str, str]:
    return (col.task, col.target, col.metric, col.k, col.split, col.protocol)


def mark_near_best(board: Leaderboard, comparisons: Comparisons) -> None:
    """Fill ``board.near_best``: per column, the models not marked best whose paired interval of the
    difference from a best model includes 0 (not separable on the items both have)."""
    for ci, col in enumerate(board.columns):
        pairs = comparisons.get(_key(col))
        if not pairs:
            continue
        best = board.best.get(ci, set())
        near = {m for m in board.models if m not in best and any(
            (b, m) in pairs and pairs[(b, m)].separable is False for b in best)}
        if near:
            board.near_best[ci] = near


def pairwise_table(board: Leaderboard, comparisons: Comparisons) -> Table:
    """Every model pair of every headline column with comparisons, the better-scoring model first."""
    table = Table(["column", "model A", "model B", "n", "A − B [paired 95% CI]", "P(A > B)", "separable"],
                  numeric={3, 4, 5})
    for col in board.columns:
        pairs = comparisons.get(_key(col), {})
        for (a, b), p in sorted(pairs.items(), key=lambda kv: (board.models.index(kv[0][0])
                                                                 if kv[0][0] in board.models else 0, kv[0])):
            if p.diff < 0 or (p.diff == 0 and a > b):
                continue
            ci = "" if p.diff_low is None else f"[{p.diff_low:.4f}, {p.diff_high:.4f}]"
            sep = "—" if p.separable is None else ("yes" if p.separable else "no")
            table.add(col.label, a, b, str(p.n), Cell(f"{p.diff:.4f}", detail=ci, sort=p.diff),
                      "—" if p.p_a_better is None else f"{p.p_a_better:.2f}", Cell(sep, emphasis=sep == "no"))
    return table


def plot_p_better(board: Leaderboard, comparisons: Comparisons, style: Style) -> Plot | None:
    """The P(row model > column model) matrix of the first headline column that has comparisons."""
    col = next((c for c in board.columns if comparisons.get(_key(c))), None)
    if col is None:
        return None
    pairs = comparisons[_key(col)]
    models = style.order({m for pair in pairs for m in pair})
    m = len(models)
    grid = np.full((m, m), np.nan)
    for (a, b), p in pairs.items():
        if p.p_a_better is not None:
            grid[models.index(a), models.index(b)] = p.p_a_better
    if np.all(np.isnan(grid)):
        return None
    labels = [style.label(x) for x in models]
    # room for the tick labels (8 pt, about 0.06 in a character; x rotated 40 degrees), else the layout
    # collapses the matrix to nothing for long model names
    pad = 0.06 * max(len(label) for label in labels)
    fig = _figure(1.6 + 0.7 * m + pad, 1.2 + 0.6 * m + 0.7 * pad)
    ax = fig.add_subplot()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdBu_r")
    for i in range(m):
        for j in range(m):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(grid[i, j] - 0.5) > 0.35 else "black")
    ax.set_xticks(range(m), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(m), labels, fontsize=8)
    ax.set_xlabel("model B")
    ax.set_ylabel("model A")
    fig.colorbar(image, ax=ax, label="P(A > B)")
    n = next(iter(pairs.values())).n
    return Plot("paired_p_better", f"Paired comparison: P(A > B) on {col.label}",
                f"Share of bootstrap resamples (the same resampled {n} shared items for every model) in which "
                "model A (row) scores higher than model B (column); near 0.5 means the two are not separable.",
                figure_png(fig, style.dpi))
