"""What runs a root holds and what state each is in: ``embedeval runs list`` and ``embedeval runs show RUN``.

Everything is read through the stages' commit markers (:mod:`embedeval.io.commit`): a partition, the
scores or the report count only once committed, and their rows and files are the ones the markers list.

Also the one definition of *when* a run happened, which the diff uses to find "the previous run":

1. a timestamp in the committed scores' metadata (keys :data:`TIME_KEYS`, epoch seconds or ISO 8601,
   first found wins) — the scorer's own record, unaffected by copies between buckets;
2. else the modification time of the run's ``config.yaml`` (written when the run starts);
3. else the time the scores were committed.
Runs are ordered by that time, ties broken by run id.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timezone

from embedeval.io.commit import read_commit
from embedeval.io.embeddings import COMMIT_MARKER, read_commit_marker
from embedeval.io.layout import RUNS_DIR, RunLayout, partition_of
from embedeval.io.score_files import read_committed_score_table, read_scores_commit
from embedeval.io.storage import Storage
from embedeval.report.scores import ReportError, has_scores

_TIME_NAMES = ("created_at", "scored_at", "finished_at", "started_at", "run_started_at", "timestamp")
#: Accepted as they are or namespaced the way the scorer names its metadata (``embedeval.score.created_at``).
TIME_KEYS = tuple(f"{prefix}{name}" for name in _TIME_NAMES for prefix in ("", "embedeval.", "embedeval.score."))


@dataclass
class RunTime:
    """When a run happened (epoch seconds, None if nothing tells) and where that came from."""

    timestamp: float | None
    source: str

    def text(self) -> str:
        if self.timestamp is None:
            return "unknown time"
        return datetime.fromtimestamp(self.timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _parse_time(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _mtime(storage: Storage, rel: str) -> float | None:
    info = storage.fs.get_file_info(storage.path(rel))
    if info.mtime is None:
        return None
    return info.mtime.timestamp()


def run_time(storage: Storage, run_id: str) -> RunTime:
    """The time a run is ordered by (see the module docstring for the order of sources)."""
    scores = read_scores_commit(storage, run_id)
    meta = dict(scores.fields.get("metadata") or {}) if scores is not None else {}
    for key in TIME_KEYS:
        raw = meta.get(key)
        if raw is not None:
            ts = _parse_time(str(raw))
            if ts is not None:
                return RunTime(ts, f"scores metadata '{key}'")
    config = RunLayout(run_id).config
    if storage.exists(config):
        ts = _mtime(storage, config)
        if ts is not None:
            return RunTime(ts, "config.yaml modification time")
    if scores is not None and scores.fields.get("committed_at") is not None:
        return RunTime(float(scores.fields["committed_at"]), "scores commit time")
    return RunTime(None, "no scores metadata, config.yaml or committed scores")


def run_ids(storage: Storage) -> list[str]:
    """Folder names under ``runs/`` (unordered: sort by :func:`run_time` where order matters)."""
    return storage.list_dirs(RUNS_DIR)


def previous_run(storage: Storage, run_id: str) -> tuple[str | None, str]:
    """The latest run before ``run_id`` that has a scores table, and a sentence saying how it was chosen."""
    current = run_time(storage, run_id)
    earlier: list[tuple[float, str]] = []
    for other in run_ids(storage):
        if other == run_id or not has_scores(storage, other):
            continue
        t = run_time(storage, other)
        if t.timestamp is None or current.timestamp is None:
            continue
        if (t.timestamp, other) < (current.timestamp, run_id):
            earlier.append((t.timestamp, other))
    how = ("the latest earlier run with committed scores, runs ordered by the time in "
           "their scores metadata, else config.yaml's modification time, else the scores' commit time "
           f"(this run: {current.text()}, from {current.source})")
    if not earlier:
        return None, how
    return max(earlier)[1], how


@dataclass
class PartitionSummary:
    """One committed embeddings partition, as its ``_COMMITTED.json`` describes it."""

    model: str
    modality: str
    rows: int
    quarantined: int
    dim: int
    committed_at: float | None


@dataclass
class RunSummary:
    run_id: str
    time: RunTime
    has_config: bool
    partitions: list[PartitionSummary] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)        # partition folders with files but no marker
    error_rows: int = 0
    errors_by_stage: dict[str, int] = field(default_factory=dict)
    score_rows: int | None = None                            # None: no scores table
    score_models: list[str] = field(default_factory=list)
    random_models: list[str] = field(default_factory=list)
    report_files: list[str] = field(default_factory=list)    # committed, relative to runs/<run_id>/report/

    @property
    def models(self) -> list[str]:
        return sorted({p.model for p in self.partitions} | set(self.score_models))

    @property
    def has_scores(self) -> bool:
        return self.score_rows is not None

    @property
    def has_report(self) -> bool:
        return "leaderboard.md" in self.report_files or "report.html" in self.report_files


def summarize_run(storage: Storage, run_id: str) -> RunSummary:
    """Everything ``runs show`` prints: one listing of the run folder, then only what the markers commit.

    Partitions, their quarantined rows (the errors files their markers list, plus the manifest's), the
    scores and the report count once committed; partition folders with files but no marker are pending.
    """
    layout = RunLayout(run_id)
    files = storage.list_files(layout.base)
    if not files:
        known = ", ".join(run_ids(storage)) or "none"
        raise ReportError(f"run {run_id!r} not found under {storage.uri(RUNS_DIR)} (runs there: {known})")
    summary = RunSummary(run_id, run_time(storage, run_id), has_config=layout.config in files)
    seen: set[tuple[str, str]] = set()
    error_files = [layout.manifest_errors] if layout.manifest_errors in files else []
    for f in files:
        part = partition_of(f) if f.startswith(layout.embeddings + "/") else None
        if part is None:
            continue
        seen.add(part)
        if posixpath.basename(f) == COMMIT_MARKER:
            record = read_commit_marker(storage, run_id, *part)
            if record is None:
                continue
            summary.partitions.append(PartitionSummary(part[0], part[1], record.rows, record.quarantined,
                                                       record.dim, record.committed_at or None))
            error_files += record.errors_files
    committed = {(p.model, p.modality) for p in summary.partitions}
    summary.pending = [f"model={m}/modality={x}" for m, x in sorted(seen - committed)]
    summary.partitions.sort(key=lambda p: (p.model, p.modality))
    if error_files:
        stages = storage.read_parquet(error_files, columns=["stage"]).column("stage").to_pylist()
        summary.error_rows = len(stages)
        for s in stages:
            summary.errors_by_stage[str(s)] = summary.errors_by_stage.get(str(s), 0) + 1
    table = read_committed_score_table(storage, run_id, columns=["model", "weights_random"])
    if table is not None:
        summary.score_rows = table.num_rows
        models = table.column("model").to_pylist()
        summary.score_models = sorted(set(models))
        summary.random_models = sorted({m for m, w in zip(models, table.column("weights_random").to_pylist()) if w})
    report = read_commit(storage, layout.report)
    if report is not None:
        summary.report_files = sorted(posixpath.relpath(f.path, layout.report) for f in report.files)
    return summary


def list_runs(storage: Storage) -> list[RunSummary]:
    """Every run under ``runs/``, oldest first (by :func:`run_time`; runs with no time last, by id)."""
    out = [summarize_run(storage, r) for r in run_ids(storage) if storage.list_files(RunLayout(r).base)]
    return sorted(out, key=lambda s: (s.time.timestamp is None, s.time.timestamp or 0.0, s.run_id))


def format_run_list(summaries: list[RunSummary]) -> str:
    """The ``runs list`` table: one line per run, fixed-width columns."""
    header = ("run", "time", "models", "partitions", "quarantined", "scores", "report")
    lines = [header]
    for s in summaries:
        quarantined = sum(p.quarantined for p in s.partitions)
        models = str(len(s.models)) + (f" ({len(s.random_models)} random)" if s.random_models else "")
        lines.append((s.run_id, s.time.text(), models, str(len(s.partitions)) + (
            f" (+{len(s.pending)} pending)" if s.pending else ""), str(quarantined),
            f"{s.score_rows} rows" if s.has_scores else "-", "yes" if s.has_report else "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines) + "\n"


def _when(ts: float | None) -> str:
    return RunTime(ts, "").text() if ts is not None else "?"


def _lease_text(storage: Storage, run_id: str) -> str:
    from embedeval.io.lease import describe_holder, is_held, read_lease

    record = read_lease(storage, run_id)
    if record is None:
        return "none"
    return ("held by " if is_held(record) else "left by (expired or dead) ") + describe_holder(record)


def show_run(storage: Storage, run_id: str) -> str:
    """A human-readable account of one run: partitions, quarantine, errors, scores, report."""
    s = summarize_run(storage, run_id)
    out = [f"run {s.run_id}", f"  root:        {storage.uri(RunLayout(s.run_id).base)}",
           f"  time:        {s.time.text()} ({s.time.source})",
           f"  config.yaml: {'present' if s.has_config else 'missing'}", f"  lease:       {_lease_text(storage, run_id)}"]
    models = ", ".join(m + (" ⚠ RANDOM WEIGHTS" if m in s.random_models else "") for m in s.models)
    out.append(f"  models:      {models or '-'}")
    if s.partitions:
        out.append(f"  embeddings:  {len(s.partitions)} committed partitions")
        rows = [("model", "modality", "rows", "quarantined", "dim", "committed")]
        rows += [(p.model, p.modality, str(p.rows), str(p.quarantined), str(p.dim), _when(p.committed_at))
                 for p in s.partitions]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        out += ["    " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    else:
        out.append("  embeddings:  no committed partitions")
    if s.pending:
        out.append(f"  pending:     {', '.join(s.pending)} (files but no {COMMIT_MARKER}: invisible to readers; "
                   "rerun embed with the same run id to finish them)")
    if s.error_rows:
        by_stage = ", ".join(f"{k}: {v}" for k, v in sorted(s.errors_by_stage.items()))
        out.append(f"  errors:      {s.error_rows} quarantined rows ({by_stage})")
    else:
        out.append("  errors:      none")
    if s.has_scores:
        out.append(f"  scores:      {s.score_rows} rows over {len(s.score_models)} models")
    else:
        out.append("  scores:      none (run `embedeval score`)")
    if s.has_report:
        plots = sum(1 for f in s.report_files if f.startswith("plots/"))
        others = [f for f in s.report_files if not f.startswith("plots/")]
        out.append(f"  report:      {', '.join(others)}, {plots} plots")
    else:
        out.append("  report:      none (run `embedeval report`)")
    return "\n".join(out) + "\n"
