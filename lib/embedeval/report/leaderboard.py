"""The leaderboard: a few headline metrics per model, each with its CI, the best real model per column marked.

Columns come from :class:`HeadlineMetric` specs matched against the scores table (a spec can expand to
several columns, e.g. one per rankability attribute). Models are ordered by their mean rank over the
columns they have a value in; models with random weights are listed last, flagged, and never marked best:
a random baseline is a floor to compare against, not a contender.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from embedeval.report.scores import (
    format_score,
    is_missing,
    metric_label,
    random_models,
)
from embedeval.report.settings import HeadlineMetric
from embedeval.report.tables import Cell, Table, to_markdown
from embedeval.scoring.schema import ScoreRow

RANDOM_FLAG = "⚠ RANDOM WEIGHTS — not a real model"
BEST_MARK = "★"
NEAR_BEST_MARK = "≈"   # not separable from the best (paired comparison, report/comparisons.py)
NEAR_BEST_LEGEND = (f"{NEAR_BEST_MARK}: not separable from the best model of the column — the paired bootstrap "
                    "95% interval of their difference (both models resampled on the same items, "
                    "the comparisons table of the score stage) includes 0.")


@dataclass
class Column:
    """One leaderboard column: a fully resolved score key, less the model."""

    label: str
    task: str
    target: str
    metric: str
    k: int | None
    split: str
    protocol: str
    higher_is_better: bool = True

    def matches(self, row: ScoreRow) -> bool:
        return (row.task, row.target, row.metric, row.k, row.split, row.protocol) == (
            self.task, self.target, self.metric, self.k, self.split, self.protocol)


@dataclass
class Leaderboard:
    columns: list[Column]
    models: list[str]                                   # display order (rank order, random models last)
    cells: dict[tuple[str, int], ScoreRow]              # (model, column index) -> score
    best: dict[int, set[str]]                           # column index -> best real model(s); ties all marked
    random: set[str]
    mean_rank: dict[str, float | None]
    notes: list[str] = field(default_factory=list)      # e.g. "corr_knn k=10 absent; k=50 used"
    near_best: dict[int, set[str]] = field(default_factory=dict)  # column -> models not separable from its best

    def n_text(self, col: int) -> str:
        """n of a column: one number, or the range when models were scored on different n."""
        ns = sorted({self.cells[(m, col)].n for m in self.models if (m, col) in self.cells})
        if not ns:
            return "—"
        return str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


def _spec_matches(spec: HeadlineMetric, row: ScoreRow) -> bool:
    if row.task != spec.task:
        return False
    if spec.metric not in (row.metric, metric_label(row.metric, row.k)):
        return False
    if spec.target is not None and row.target != spec.target:
        return False
    if spec.protocol is not None and row.protocol != spec.protocol:
        return False
    return True


def _label(spec: HeadlineMetric, target: str, k: int | None, split: str, protocol: str) -> str:
    values = {"target": target, "k": "" if k is None else k, "split": split, "protocol": protocol,
              "variant": protocol}
    names = {f for _, f, _, _ in string.Formatter().parse(spec.label) if f}
    return spec.label.format(**{n: values.get(n, "{" + n + "}") for n in names})


def resolve_columns(specs: list[HeadlineMetric], rows: list[ScoreRow]) -> tuple[list[Column], list[str]]:
    """Expand headline specs into the columns the scores table can fill, and notes on fallbacks taken."""
    columns: list[Column] = []
    notes: list[str] = []
    for spec in specs:
        cands = [r for r in rows if _spec_matches(spec, r)]
        if not cands:
            continue
        if spec.k is not None:
            ks = sorted({r.k for r in cands if r.k is not None})
            if spec.k not in ks and ks:
                nearest = min(ks, key=lambda x: (abs(x - spec.k), x))  # type: ignore[operator]
                notes.append(f"{spec.metric} with k={spec.k} is not in this run's scores; k={nearest} is shown")
                cands = [r for r in cands if r.k == nearest]
            else:
                cands = [r for r in cands if r.k == spec.k]
        if spec.split:
            present = {r.split for r in cands}
            chosen = next((s for s in spec.split if s in present), None)
            if chosen is not None:
                cands = [r for r in cands if r.split == chosen]
        groups = sorted({(r.target, r.metric, r.k, r.split, r.protocol) for r in cands},
                        key=lambda g: (g[0], g[1], -1 if g[2] is None else g[2], g[3], g[4]))
        for target, metric, k, split, protocol in groups:
            columns.append(Column(_label(spec, target, k, split, protocol), spec.task, target, metric, k, split,
                                  protocol, spec.higher_is_better))
    _disambiguate(columns)
    return columns, notes


def _disambiguate(columns: list[Column]) -> None:
    """Append the distinguishing fields to labels that would otherwise repeat."""
    by_label: dict[str, list[Column]] = {}
    for c in columns:
        by_label.setdefault(c.label, []).append(c)
    for same in by_label.values():
        if len(same) < 2:
            continue
        for attr in ("target", "split", "protocol", "k"):
            if len({getattr(c, attr) for c in same}) > 1:
                for c in same:
                    c.label = f"{c.label} ({getattr(c, attr)})"


def _ranks(values: dict[str, float], higher_is_better: bool) -> dict[str, float]:
    """Competition-free average ranks (1 = best; ties share the mean of their ranks)."""
    ordered = sorted(values.items(), key=lambda kv: -kv[1] if higher_is_better else kv[1])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][1] == ordered[i][1]:
            j += 1
        for m, _ in ordered[i:j + 1]:
            ranks[m] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def build_leaderboard(rows: list[ScoreRow], specs: list[HeadlineMetric]) -> Leaderboard:
    """Rank models on the headline columns; see the module docstring for the ordering and marking rules."""
    columns, notes = resolve_columns(specs, rows)
    random = set(random_models(rows))
    models = sorted({r.model for r in rows})
    cells: dict[tuple[str, int], ScoreRow] = {}
    for ci, col in enumerate(columns):
        for r in rows:
            if col.matches(r):
                cells[(r.model, ci)] = r
    best: dict[int, set[str]] = {}
    rank_sum: dict[str, list[float]] = {m: [] for m in models}
    for ci, col in enumerate(columns):
        vals = {m: float(cells[(m, ci)].value) for m in models  # type: ignore[arg-type]
                if (m, ci) in cells and not is_missing(cells[(m, ci)].value)}
        real = {m: v for m, v in vals.items() if m not in random}
        if real:
            top = max(real.values()) if col.higher_is_better else min(real.values())
            best[ci] = {m for m, v in real.items() if v == top}
        for m, rk in _ranks(vals, col.higher_is_better).items():
            rank_sum[m].append(rk)
    mean_rank = {m: (sum(v) / len(v) if v else None) for m, v in rank_sum.items()}
    order = sorted(models, key=lambda m: (m in random, mean_rank[m] is None, mean_rank[m] or 0.0, m))
    return Leaderboard(columns, order, cells, best, random, mean_rank, notes)


RANDOM_FLAG_SHORT = "⚠ RANDOM WEIGHTS"
PAIRWISE_INTRO = ("Each pair of models on each headline column, scored on the items both have and resampled "
                  "with the same bootstrap indices: the difference A − B with its paired 95% interval, the share "
                  "of resamples in which A scores higher, and whether the interval excludes 0 (separable).")


def model_cell(model: str, random: set[str], short: bool = False) -> Cell:
    """A model name, flagged when its weights are random (``short`` for long tables such as the diff)."""
    if model in random:
        return Cell(model, emphasis=True, css="random", badge=RANDOM_FLAG_SHORT if short else RANDOM_FLAG)
    return Cell(model)


def leaderboard_table(board: Leaderboard) -> Table:
    """The ranked table: #, model, one value [CI] per column, the best real model per column starred."""
    headers = [c.label + ("" if c.higher_is_better else " ↓") for c in board.columns]
    table = Table(["#", "model", *headers], numeric=set(range(2, 2 + len(board.columns))))
    for pos, m in enumerate(board.models, start=1):
        cells = [Cell(str(pos)), model_cell(m, board.random)]
        for ci in range(len(board.columns)):
            row = board.cells.get((m, ci))
            if row is None:
                cells.append(Cell("—"))
                continue
            is_best = m in board.best.get(ci, set())
            text, interval = format_score(row.value, row.ci_low, row.ci_high)
            if m in board.near_best.get(ci, set()):
                text = f"{NEAR_BEST_MARK} {text}"
            cells.append(Cell(f"{BEST_MARK} {text}" if is_best else text, emphasis=is_best,
                              css="best" if is_best else None,
                              sort=None if is_missing(row.value) else float(row.value),  # type: ignore[arg-type]
                              detail=interval))
        table.rows.append(cells)
    return table


def columns_table(board: Leaderboard) -> Table:
    """What each column is: its full score key and n (the anchors / queries / items it averages over)."""
    table = Table(["column", "task", "target", "metric", "k", "split", "protocol", "n"], numeric={4, 7})
    for ci, c in enumerate(board.columns):
        table.add(c.label, c.task, c.target, c.metric, "" if c.k is None else str(c.k), c.split, c.protocol,
                  board.n_text(ci))
    return table


def random_banner_text(random: set[str]) -> str:
    """The loud warning shown atop leaderboard.md and report.html whenever a random model is present."""
    names = ", ".join(sorted(random))
    plural = "s were" if len(random) > 1 else " was"
    return (f"⚠ RANDOM WEIGHTS: model{plural} scored with random (untrained) weights: {names}. "
            "These rows are baselines, not real models; they are flagged in every table and plot and never "
            "marked best.")


def leaderboard_markdown(board: Leaderboard, run_id: str, run_date: str, generated: str,
                         pairwise: Table | None = None) -> str:
    """The whole leaderboard.md: header, random-weights banner, ranked table, legend, column definitions,
    and the pairwise comparison table when the run has one."""
    out = [f"# Leaderboard — run `{run_id}`", ""]
    if board.random:
        out += [f"> **{random_banner_text(board.random)}**", ""]
    out += [f"Run `{run_id}` · scored {run_date} · report generated {generated} · "
            f"{len(board.models)} models · {len(board.columns)} headline columns", ""]
    if not board.models:
        out += ["_This run's scores table is empty: nothing to rank._", ""]
    elif not board.columns:
        out += ["_No headline metric of the report settings is present in this run's scores; "
                "see report.html for the full table._", ""]
    else:
        out += [to_markdown(leaderboard_table(board)),
                f"{BEST_MARK} and bold: best real (non-random) model per column; ties are all marked. "
                "Cells: value [bootstrap 95% CI]. ↓ after a column name: lower is better. "
                "Order: mean rank over the columns a model has; random-weight models last."
                + (" " + NEAR_BEST_LEGEND if pairwise is not None else ""), ""]
    for note in board.notes:
        out += [f"- Note: {note}"]
    if board.notes:
        out.append("")
    if board.columns:
        out += ["## Columns", "", to_markdown(columns_table(board))]
    if pairwise is not None and pairwise.rows:
        out += ["", "## Pairwise comparison", "", PAIRWISE_INTRO, "", to_markdown(pairwise)]
    return "\n".join(out).rstrip() + "\n"
