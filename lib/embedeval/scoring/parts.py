"""The score stage's commit protocol: every (model, task, target) unit's rows become visible by a marker.

Layout under a run: ``scores/parts/model=<m>/unit=<slug>/`` holding ``rows.parquet`` (rows in the
scores schema) and, for prototypes, ``ambiguity.parquet`` and ``examples.parquet``; for mean scores
``per_item.parquet`` (:mod:`embedeval.scoring.per_item`); ``_COMMITTED.json``
is written last and lists the files with row counts and checksums plus the inputs fingerprint. A reader
trusts a unit only through its marker and only when the fingerprint matches the current inputs, so a
kill between two writes, a changed setting or re-embedded vectors all mean "recompute this unit".
``scores.parquet`` is assembled from the committed units and written last by the job.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa

from embedeval.io.commit import Commit, CommitError, commit, read_commit, uncommit, write_table
from embedeval.io.layout import RunLayout
from embedeval.io.storage import Storage
from embedeval.scoring.schema import ScoreRow, scores_table

_FILES = ("rows", "ambiguity", "examples", "per_item")


@dataclass
class UnitResult:
    """What one unit produced: score rows, for prototypes the two report tables, and the per-item values
    of its mean scores (for paired model comparison)."""

    rows: list[ScoreRow]
    ambiguity: pa.Table | None = None
    examples: pa.Table | None = None
    per_item: pa.Table | None = None
    committed: bool = True  # False for failed units: shown in this run's table, recomputed next time

    def tables(self) -> dict[str, pa.Table]:
        out = {"rows": scores_table(self.rows)}
        if self.ambiguity is not None:
            out["ambiguity"] = self.ambiguity
        if self.examples is not None:
            out["examples"] = self.examples
        if self.per_item is not None:
            out["per_item"] = self.per_item
        return out


def unit_slug(key: str) -> str:
    """A folder name for a unit key such as ``retrieval/image<->text`` (readable, unique, path-safe)."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)
    return f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@dataclass
class ScoreParts:
    """Committed units of one run; ``pending`` keeps this run's uncommitted (failed) results."""

    storage: Storage
    run_id: str
    pending: dict[tuple[str, str], UnitResult] = field(default_factory=dict)
    out_dir: str | None = None       # the score stage's output folder; default runs/<run_id>/scores

    def unit_dir(self, model: str, key: str) -> str:
        return RunLayout(self.run_id, scores_dir=self.out_dir).score_unit(model, unit_slug(key))

    def _marker(self, model: str, key: str) -> Commit | None:
        try:
            return read_commit(self.storage, self.unit_dir(model, key))
        except CommitError:
            return None   # unreadable (or written by an older format): the unit is recomputed

    def has(self, model: str, key: str, fingerprint: str) -> bool:
        marker = self._marker(model, key)
        return (marker is not None and marker.fields.get("fingerprint") == fingerprint
                and marker.fields.get("key") == key)

    def commit(self, model: str, key: str, fingerprint: str, result: UnitResult) -> None:
        """Write the unit's files, then its marker (the commit). Failed results are kept in memory only."""
        if not result.committed:
            self.pending[(model, key)] = result
            return
        self.pending.pop((model, key), None)
        base = self.unit_dir(model, key)
        uncommit(self.storage, base)
        files = [write_table(self.storage, f"{base}/{name}.parquet", table) for name, table in result.tables().items()]
        commit(self.storage, base, files, key=key, model=model, fingerprint=fingerprint)

    def collect(self, units_by_model: dict[str, Iterable[Any]]) -> dict[str, list[pa.Table]]:
        """Every planned unit's tables by kind (``rows``, ``ambiguity``, ``examples``, ``per_item``):
        committed ones from storage, this run's failed ones (rows only) from memory. A planned unit
        with neither is a bug, raised."""
        out: dict[str, list[pa.Table]] = {name: [] for name in _FILES}
        for model, units in units_by_model.items():
            for unit in units:
                if (model, unit.key) in self.pending:
                    out["rows"].append(self.pending[(model, unit.key)].tables()["rows"])
                    continue
                marker = self._marker(model, unit.key)
                if marker is None:
                    raise RuntimeError(f"score unit {model}/{unit.key} has no committed result")
                for name in _FILES:
                    entry = marker.file(f"{name}.parquet")
                    if entry is not None:
                        out[name].append(self.storage.read_parquet([entry.path]))
        return out
