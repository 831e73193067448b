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

from embedeval.io.storage import Storage
from embedeval.scoring.schema import ScoreRow, scores_table

MARKER = "_COMMITTED.json"
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

    def unit_dir(self, model: str, key: str) -> str:
        return f"runs/{self.run_id}/scores/parts/model={model}/unit={unit_slug(key)}"

    def _marker(self, model: str, key: str) -> dict[str, Any] | None:
        rel = f"{self.unit_dir(model, key)}/{MARKER}"
        if not self.storage.exists(rel):
            return None
        try:
            marker = self.storage.read_json(rel)
        except ValueError:
            return None
        return marker if isinstance(marker, dict) else None

    def has(self, model: str, key: str, fingerprint: str) -> bool:
        marker = self._marker(model, key)
        return marker is not None and marker.get("fingerprint") == fingerprint and marker.get("key") == key

    def commit(self, model: str, key: str, fingerprint: str, result: UnitResult) -> None:
        """Write the unit's files, then its marker (the commit). Failed results are kept in memory only."""
        if not result.committed:
            self.pending[(model, key)] = result
            return
        self.pending.pop((model, key), None)
        base = self.unit_dir(model, key)
        files = {}
        for name, table in result.tables().items():
            rel = f"{base}/{name}.parquet"
            self.storage.write_parquet(rel, table)
            files[name] = {"path": rel, "rows": table.num_rows,
                           "sha256": hashlib.sha256(self.storage.read_bytes(rel)).hexdigest()}
        self.storage.write_json(f"{base}/{MARKER}", {"key": key, "model": model, "fingerprint": fingerprint,
                                                     "files": files})

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
                    info = marker["files"].get(name)
                    if info is not None:
                        out[name].append(self.storage.read_parquet([info["path"]]))
        return out
