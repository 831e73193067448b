"""Reading a run's scores table into rows the report can group, and the few helpers every view shares.

The report consumes only the committed ``runs/<run_id>/scores/`` tables (the contract in
:mod:`embedeval.scoring.schema`, read through the stage's marker, :mod:`embedeval.io.score_files`); it never
imports the scoring code, so a report can be rebuilt from the files alone, on any machine, long after the run.
"""

from __future__ import annotations

import math
from dataclasses import fields

import pyarrow as pa
import pyarrow.parquet as pq

from embedeval.errors import EmbedevalError
from embedeval.io.layout import RunLayout, marker_in
from embedeval.io.score_files import read_committed_score_table, read_scores_commit
from embedeval.io.storage import Storage
from embedeval.scoring.schema import ScoreRow, params_of

#: The identity of one score (:data:`embedeval.scoring.schema.IDENTITY_COLUMNS`): the scores table holds
#: at most one row per key, and the diff matches runs on it.
ScoreKey = tuple[str, str, str, str, int | None, str, str]


class ReportError(EmbedevalError, ValueError):
    """The report cannot be built from what is in storage; the message names the file and the remedy."""


def has_scores(storage: Storage, run_id: str) -> bool:
    """Whether a run's score stage has committed (its marker exists), or the run predates stage markers."""
    return read_scores_commit(storage, run_id) is not None or _legacy_scores(storage, run_id)


def _legacy_scores(storage: Storage, run_id: str) -> bool:
    """A run scored before the score stage had a marker: ``scores.parquet`` was that stage's commit (written
    last), so a readable one without a marker is a finished older run, and the nightly diff keeps working
    across the upgrade. A file that does not parse (a write cut short) is no scores. Reads only the
    file's footer."""
    layout = RunLayout(run_id)
    if storage.exists(marker_in(layout.scores)) or not storage.exists(layout.scores_table):
        return False
    try:
        names = pq.read_schema(storage.path(layout.scores_table), filesystem=storage.fs).names
    except (OSError, pa.ArrowInvalid):
        return False
    return _LEGACY_COLUMNS <= set(names)


_LEGACY_COLUMNS = {"model", "task", "metric", "value"}


def _read_legacy(storage: Storage, run_id: str) -> pa.Table | None:
    if not _legacy_scores(storage, run_id):
        return None
    try:
        return storage.read_parquet([RunLayout(run_id).scores_table])
    except (OSError, pa.ArrowInvalid):
        return None


def load_scores(storage: Storage, run_id: str) -> list[ScoreRow]:
    """All rows of a run's committed scores table, as the contract's :class:`ScoreRow`.

    Columns the file lacks (an older writer) take the dataclass defaults and unknown columns are ignored,
    so an old run still diffs against a new one. Raises :class:`ReportError` when the run has no committed
    scores (none written, or the score stage has not finished).
    """
    table = read_committed_score_table(storage, run_id)
    if table is None and read_scores_commit(storage, run_id) is None:
        table = _read_legacy(storage, run_id)
    if table is None:
        where = storage.uri(RunLayout(run_id).scores)
        raise ReportError(f"no committed scores for run {run_id!r} under {where}: run `embedeval score` for this "
                          "run first (or let it finish)")
    return rows_from_table(table)


def load_scores_at(storage: Storage, layout: RunLayout) -> list[ScoreRow]:
    """Rows of the committed scores in ``layout``'s score folder (a common panel's); :class:`ReportError`
    when that folder has none."""
    table = read_committed_score_table(storage, layout.run_id, layout=layout)
    if table is None:
        raise ReportError(f"no committed scores under {storage.uri(layout.scores)}: the score stage did not finish "
                          "there; rerun `embedeval score`")
    return rows_from_table(table)


def rows_from_table(table: pa.Table) -> list[ScoreRow]:
    """Scores-table rows -> :class:`ScoreRow` (tolerant of missing optional columns).

    A table written before score identities had a ``protocol`` (it has a free-text ``variant``) is read
    with the variant as its protocol, so an old run still loads; its rows then match a new run's only
    where the texts agree (the diff lists the rest as added / removed once).
    """
    known = {f.name for f in fields(ScoreRow)}
    keep = [c for c in table.column_names if c in known]
    legacy = "protocol" not in table.column_names and "variant" in table.column_names
    variants = table.column("variant").to_pylist() if legacy else None
    out = []
    for i, rec in enumerate(table.select(keep).to_pylist()):
        if "params" in rec:
            rec["params"] = params_of(rec["params"])
        if variants is not None:
            rec["protocol"] = variants[i] or "standard"
        out.append(ScoreRow(**rec))
    return out


def score_key(row: ScoreRow) -> ScoreKey:
    return (row.model, row.task, row.target, row.metric, row.k, row.split, row.protocol)


def params_text(params: dict | None) -> str:
    """``{"anchors": 1000, "seed": 0}`` -> ``anchors=1000 seed=0`` (tables and the diff)."""
    if not params:
        return ""
    return " ".join(f"{k}={_param_value(v)}" for k, v in sorted(params.items()))


def _param_value(v: object) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, list) else str(v)


def params_change(old: dict | None, new: dict | None) -> str:
    """What changed between two rows' parameters, e.g. ``anchors all→1000, k 12→13`` ('' when equal)."""
    old, new = old or {}, new or {}
    parts = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a != b:
            parts.append(f"{key} {'—' if a is None else _param_value(a)}→{'—' if b is None else _param_value(b)}")
    return ", ".join(parts)


def is_missing(value: float | None) -> bool:
    """True for an undefined score (null or NaN): shown as a dash, never ranked."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def metric_label(metric: str, k: int | None) -> str:
    """``corr_knn`` with k=10 -> ``corr_knn@10``; names that already carry their K (``R@1``) stay as they are."""
    if k is None or "@" in metric:
        return metric
    return f"{metric}@{k}"


def _decimals(*values: float | None) -> int:
    """3 decimals for correlations and fractions, fewer for percentages and sums (rsum ~ 0-600)."""
    magnitude = max((abs(v) for v in values if not is_missing(v)), default=0.0)  # type: ignore[arg-type]
    return 1 if magnitude >= 100 else 2 if magnitude >= 10 else 3


def format_value(value: float | None, *, like: tuple[float | None, ...] = ()) -> str:
    """A score for a table; ``like`` = other numbers shown beside it, so they all get the same decimals."""
    if is_missing(value):
        return "—"
    return f"{value:.{_decimals(value, *like)}f}"


def format_ci(low: float | None, high: float | None, value: float | None = None) -> str:
    """``[0.398, 0.431]`` (decimals matching ``value``), or an empty string when there is no interval."""
    if is_missing(low) or is_missing(high):
        return ""
    like = (value, low, high)
    return f"[{format_value(low, like=like)}, {format_value(high, like=like)}]"


def format_score(value: float | None, low: float | None, high: float | None) -> tuple[str, str]:
    """(value text, CI text) with one number of decimals for all three."""
    return format_value(value, like=(low, high)), format_ci(low, high, value)


def format_delta(delta: float | None, *like: float | None) -> str:
    if delta is None:
        return "—"
    if delta == 0:
        return "0"
    return f"{delta:+.{_decimals(*like)}f}"


def random_models(rows: list[ScoreRow]) -> list[str]:
    """Models scored with random weights (any row flagged), sorted: they must be flagged wherever shown."""
    return sorted({r.model for r in rows if r.weights_random})
