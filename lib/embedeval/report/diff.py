"""What changed since the previous run: per score key, old vs new, and whether the change is beyond noise.

A change is called **significant** only when each run's value lies outside the other run's bootstrap 95%
interval. That is deliberately conservative (overlapping intervals can still hide a real difference), but
it never calls resampling noise a regression. When only one of the two holds the change is *borderline*.
Rows without intervals are compared by value only and said to have no CI. Where both runs kept the
per-unit values of a score (anchors, queries, test items) and share units, the change gets a **paired**
interval instead (:mod:`embedeval.report.paired_diff`: the shared units resampled with one set of indices);
it is significant when that interval of new - old excludes 0.

Rows are matched on their identity (model, task, target, metric, k, split, protocol): never on counts or
seeds, which live in ``params``. So a catalogue that grows past the anchor sample, gains a label (k-means
k) or switches Spearman to a sampled estimate still compares each score with last night's, and the
``params`` column says what changed in how it was computed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from embedeval.report.leaderboard import model_cell
from embedeval.report.scores import (ScoreKey, format_delta, format_score, is_missing, params_change, params_text,
                                     score_key)
from embedeval.report.tables import Cell, Section, Table
from embedeval.scoring.schema import ScoreRow

if TYPE_CHECKING:
    from embedeval.report.paired_diff import PairedChange

SIGNIFICANT = "significant"
BORDERLINE = "borderline"
WITHIN_CI = "within CI"
UNCHANGED = "unchanged"
NO_CI = "no CI"
UNDEFINED = "undefined"
#: Display order: what needs attention first.
STATUS_ORDER = (SIGNIFICANT, BORDERLINE, WITHIN_CI, NO_CI, UNDEFINED, UNCHANGED)


@dataclass
class DiffRow:
    old: ScoreRow
    new: ScoreRow
    status: str
    paired: "PairedChange | None" = None    # new - old on the units both runs share, where both kept them

    @property
    def key(self) -> ScoreKey:
        return score_key(self.new)

    @property
    def params_change(self) -> str:
        """'' when both runs computed the score with the same parameters, else what changed."""
        return params_change(self.old.params, self.new.params)

    @property
    def delta(self) -> float | None:
        if is_missing(self.old.value) or is_missing(self.new.value):
            return None
        return float(self.new.value) - float(self.old.value)  # type: ignore[arg-type]


@dataclass
class RunDiff:
    run_id: str
    previous_run_id: str | None
    how_chosen: str
    compared: list[DiffRow] = field(default_factory=list)
    added: list[ScoreRow] = field(default_factory=list)       # keys only in the new run
    removed: list[ScoreRow] = field(default_factory=list)     # keys only in the previous run
    added_models: list[str] = field(default_factory=list)
    removed_models: list[str] = field(default_factory=list)
    random_changed: list[str] = field(default_factory=list)   # models whose weights_random flag flipped
    random: set[str] = field(default_factory=set)             # random models of either run (for flags)

    def count(self, status: str) -> int:
        return sum(1 for d in self.compared if d.status == status)


def _outside(value: float, low: float | None, high: float | None) -> bool:
    return value < low or value > high  # type: ignore[operator]


def classify_change(old: ScoreRow, new: ScoreRow, paired: "PairedChange | None" = None) -> str:
    """One of :data:`STATUS_ORDER`; see the module docstring for the rule."""
    if is_missing(old.value) or is_missing(new.value):
        return UNCHANGED if is_missing(old.value) and is_missing(new.value) else UNDEFINED
    if old.value == new.value:
        return UNCHANGED
    if paired is not None and np.isfinite(paired.low):
        return SIGNIFICANT if paired.excludes_zero else WITHIN_CI
    if any(is_missing(x) for x in (old.ci_low, old.ci_high, new.ci_low, new.ci_high)):
        return NO_CI
    new_out = _outside(float(new.value), old.ci_low, old.ci_high)  # type: ignore[arg-type]
    old_out = _outside(float(old.value), new.ci_low, new.ci_high)  # type: ignore[arg-type]
    if new_out and old_out:
        return SIGNIFICANT
    if new_out or old_out:
        return BORDERLINE
    return WITHIN_CI


def _natural(text: str) -> tuple:
    """``R@5`` before ``R@10``: digit runs compare as numbers."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _key_sort(key: ScoreKey) -> tuple:
    # (type tag, value) pairs: None, ints and strings never get compared with each other
    return tuple((0, ()) if x is None else (1, (x,)) if isinstance(x, int) else (2, _natural(x)) for x in key)


def diff_scores(new_rows: list[ScoreRow], old_rows: list[ScoreRow], run_id: str, previous_run_id: str,
                how_chosen: str, paired: "dict[ScoreKey, PairedChange] | None" = None) -> RunDiff:
    """Match rows by identity (model, task, target, metric, k, split, protocol) and classify each change;
    ``paired`` (:func:`embedeval.report.paired_diff.paired_changes`) gives paired intervals where known."""
    paired = paired or {}
    new = {score_key(r): r for r in new_rows}
    old = {score_key(r): r for r in old_rows}
    new_models = {r.model for r in new_rows}
    old_models = {r.model for r in old_rows}
    d = RunDiff(run_id, previous_run_id, how_chosen)
    d.added_models = sorted(new_models - old_models)
    d.removed_models = sorted(old_models - new_models)
    for key in sorted(new.keys() & old.keys(), key=_key_sort):
        change = paired.get(key)
        d.compared.append(DiffRow(old[key], new[key], classify_change(old[key], new[key], change), change))
    d.added = [new[k] for k in sorted(new.keys() - old.keys(), key=_key_sort)]
    d.removed = [old[k] for k in sorted(old.keys() - new.keys(), key=_key_sort)]
    old_random = {r.model for r in old_rows if r.weights_random}
    new_random = {r.model for r in new_rows if r.weights_random}
    d.random_changed = sorted((old_random ^ new_random) & new_models & old_models)
    d.random = old_random | new_random
    d.compared.sort(key=lambda x: (STATUS_ORDER.index(x.status), -abs(x.delta or 0.0), _key_sort(x.key)))
    return d


def _key_cells(row: ScoreRow, random: set[str]) -> list[Cell]:
    return [model_cell(row.model, random, short=True), Cell(row.task), Cell(row.target), Cell(row.metric),
            Cell("" if row.k is None else str(row.k)), Cell(row.split), Cell(row.protocol)]


KEY_HEADERS = ["model", "task", "target", "metric", "k", "split", "protocol"]


def _value_cell(row: ScoreRow) -> Cell:
    text, ci = format_score(row.value, row.ci_low, row.ci_high)
    return Cell(text, detail=ci, sort=None if is_missing(row.value) else float(row.value))  # type: ignore[arg-type]


def changes_table(rows: list[DiffRow], random: set[str]) -> Table:
    table = Table([*KEY_HEADERS, "params", "old [CI]", "new [CI]", "Δ", "status"], numeric={4, 8, 9, 10})
    for d in rows:
        delta = d.delta
        arrow = "" if not delta else ("▲ " if delta > 0 else "▼ ")
        status_css = {SIGNIFICANT: "sig", BORDERLINE: "border"}.get(d.status)
        change = d.params_change
        params = Cell(f"changed: {change}", emphasis=True) if change else Cell(params_text(d.new.params))
        shown = format_delta(delta, d.old.value, d.new.value)
        detail = None
        if d.paired is not None and np.isfinite(d.paired.low):
            detail = (f"paired [{format_delta(d.paired.low, d.old.value, d.new.value)}, "
                      f"{format_delta(d.paired.high, d.old.value, d.new.value)}], {d.paired.shared} shared")
        table.rows.append([*_key_cells(d.new, random), params, _value_cell(d.old), _value_cell(d.new),
                           Cell(shown, detail=detail, sort=delta),
                           Cell(arrow + d.status, emphasis=d.status == SIGNIFICANT, css=status_css)])
    return table


def rows_table(rows: list[ScoreRow], random: set[str]) -> Table:
    table = Table([*KEY_HEADERS, "params", "value [CI]", "n"], numeric={4, 8, 9})
    for r in rows:
        table.rows.append([*_key_cells(r, random), Cell(params_text(r.params)), _value_cell(r),
                           Cell(str(r.n), sort=float(r.n))])
    return table


RULE = ("A change is **significant** when the new value lies outside the previous run's bootstrap 95% CI "
        "and the previous value lies outside the new CI; **borderline** when only one of the two holds; "
        "**within CI** otherwise. Where both runs kept per-unit values and share units, the paired 95% "
        "interval of the change (shown under Δ) decides instead: significant when it excludes 0. ▲/▼ give the direction of the change (for ranks and distances lower is better).")


def diff_sections(d: RunDiff) -> list[Section]:
    """The diff as titled sections (rendered to diff.md and into report.html)."""
    if d.previous_run_id is None:
        return [Section("No previous run", [
            f"There is no earlier run with a scores table to compare run `{d.run_id}` with. The previous run is "
            f"{d.how_chosen}. The next run will be compared with this one."])]
    counts = ", ".join(f"{d.count(s)} {s}" for s in STATUS_ORDER if d.count(s))
    summary = [
        f"- compared score rows: {len(d.compared)}" + (f" ({counts})" if counts else ""),
        f"- models added: {', '.join(d.added_models) or 'none'}",
        f"- models removed: {', '.join(d.removed_models) or 'none'}",
        f"- score rows added: {len(d.added)}; removed: {len(d.removed)}",
        f"- compared rows computed with changed parameters (anchors, samples, k-means k...): "
        f"{sum(1 for x in d.compared if x.params_change)}",
    ]
    if d.random_changed:
        summary.append(f"- ⚠ weights_random flag changed for: {', '.join(d.random_changed)}")
    sections = [Section("Summary", [f"Previous run: `{d.previous_run_id}`, {d.how_chosen}.", RULE,
                                    "\n".join(summary)])]
    notable = [x for x in d.compared if x.status in (SIGNIFICANT, BORDERLINE)]
    sig = sum(1 for x in notable if x.status == SIGNIFICANT)
    title = f"Changes beyond the bootstrap interval ({sig} significant, {len(notable) - sig} borderline)"
    sections.append(Section(title,
                            [] if notable else ["None: every change is within the bootstrap intervals."],
                            changes_table(notable, d.random) if notable else None))
    # Rows of a whole added / removed model are summarised by the model list above, not repeated one by one.
    for title, rows, models, where, see in (
            ("Added", d.added, d.added_models, "this run only", "the leaderboard and the full scores table"),
            ("Removed", d.removed, d.removed_models, "the previous run only", "the previous run's report")):
        own = [r for r in rows if r.model not in models]
        whole = len(rows) - len(own)
        if not rows:
            continue
        text = [f"Present in {where} (metrics, k, splits or protocols)."]
        if whole:
            text.append(f"Not listed: the {whole} rows of the {title.lower()} model(s) "
                        f"{', '.join(models)} (see {see}).")
        sections.append(Section(f"{title} score rows ({len(own)} of existing models)", text,
                                rows_table(own, d.random) if own else None))
    sections.append(Section(f"All compared rows ({len(d.compared)})", ["Most notable first."],
                            changes_table(d.compared, d.random) if d.compared else None))
    return sections


def diff_title(d: RunDiff) -> str:
    if d.previous_run_id is None:
        return f"Diff — run `{d.run_id}` (no previous run)"
    return f"Diff — run `{d.run_id}` vs `{d.previous_run_id}`"


def is_regression(d: DiffRow) -> bool:
    """A significant change in the worse direction of its metric (see the task's declared direction)."""
    from embedeval.scoring.registry import metric_direction

    delta = d.delta
    if d.status != SIGNIFICANT or not delta:
        return False
    return metric_direction(d.new.task, d.new.metric) * delta < 0


def regression_lines(d: RunDiff) -> list[str]:
    """One line per regression, for the console summary and a scheduler's log."""
    out = []
    for x in d.compared:
        if is_regression(x):
            k = "" if x.new.k is None else f"@{x.new.k}"
            out.append(f"{x.new.model}: {x.new.task} {x.new.target} {x.new.metric}{k} ({x.new.split}) "
                       f"{x.old.value:.4g} -> {x.new.value:.4g}, outside both intervals")
    return out


def like_for_like_sections(d: RunDiff | None, shared: int, current_items: int, previous_items: int,
                           why_not: str | None) -> list[Section]:
    """The diff.md part that keeps "the catalogue changed" apart from "the model got worse"."""
    head = (f"The two runs share {shared} items (this run {current_items}, previous {previous_items}). "
            "Both runs' vectors were re-scored on exactly those items with this run's metadata and settings, so "
            "a change here is a change of the vectors, not of the catalogue.")
    if d is None:
        return [Section("Like for like", [f"No like-for-like comparison: {why_not}."])]
    bad = [x for x in d.compared if is_regression(x)]
    sections = [Section(f"Like for like: regressions on the {shared} shared items ({len(bad)})",
                        [head, RULE] + ([] if bad else ["None: no score got worse beyond its intervals."]),
                        changes_table(bad, d.random) if bad else None)]
    notable = [x for x in d.compared if x.status in (SIGNIFICANT, BORDERLINE) and not is_regression(x)]
    if notable:
        sections.append(Section(f"Like for like: other changes beyond the intervals ({len(notable)})",
                                ["Improvements, and changes of metrics without a better direction."],
                                changes_table(notable, d.random)))
    return sections
