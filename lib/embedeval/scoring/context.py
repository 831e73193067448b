"""What every task receives: the catalogue's labels, one model's checked embeddings, and a row maker.

The job builds these once per run/model, so tasks never re-parse the manifest or re-check vectors, and
every task reports exclusions the same way (a counted note on its rows).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from embedeval.engine.runner import TileRunner
from embedeval.errors import EmbedevalError
from embedeval.scoring.schema import ScoreRow
from embedeval.scoring.settings import ScoreSettings


class ScoringError(EmbedevalError, ValueError):
    """Inputs cannot be scored as asked; the message names the model, modality, column or setting."""


@dataclass
class CatalogueView:
    """The manifest columns the analyses read, as numpy arrays aligned with the manifest's rows."""

    ids: np.ndarray                                   # object array of str
    row_of: dict[str, int]                            # id -> manifest row
    tags: list[list[str] | None] | None               # None when the manifest has no tags column
    labels: np.ndarray | None                         # object array (None where unknown)
    attrs: dict[str, np.ndarray]                      # name (without attr_) -> float64, NaN = unknown
    split: np.ndarray | None                          # object array: train/test/None
    class_split: np.ndarray | None                    # object array: seen/unseen/None

    @classmethod
    def from_table(cls, manifest: pa.Table) -> "CatalogueView":
        if "id" not in manifest.column_names:
            raise ScoringError("manifest has no 'id' column; pass the table from embedeval.io.manifest.load_manifest")
        ids = np.asarray(manifest.column("id").to_pylist(), dtype=object)
        row_of: dict[str, int] = {}
        for i, item in enumerate(ids):
            if item in row_of:
                raise ScoringError(f"manifest id {item!r} appears twice (rows {row_of[item]} and {i}); "
                                   "load the manifest with load_manifest, which keeps the first")
            row_of[item] = i

        def strings(name: str) -> np.ndarray | None:
            if name not in manifest.column_names:
                return None
            return np.asarray(manifest.column(name).to_pylist(), dtype=object)

        attrs = {}
        for name in manifest.column_names:
            if name.startswith("attr_"):
                col = manifest.column(name).cast(pa.float64())
                attrs[name[len("attr_"):]] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        tags = manifest.column("tags").to_pylist() if "tags" in manifest.column_names else None
        return cls(ids, row_of, tags, strings("label"), attrs, strings("split"), strings("class_split"))


@dataclass
class ModalityEmbeddings:
    """One (model, modality) partition after checks: only rows that joined the manifest with usable vectors."""

    modality: str
    ids: np.ndarray            # object array of item ids, sorted by (id, sub)
    subs: np.ndarray           # int16
    rows: np.ndarray           # int64 manifest row of each embedding row
    unit: np.ndarray           # (n, d) float32, L2-normalised
    excluded: dict[str, int] = field(default_factory=dict)   # reason -> count

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.unit.shape[1])

    def first_per_item(self) -> "ModalityEmbeddings":
        """One row per item (sub 0, else the smallest sub): image/sketch analyses want one vector per item."""
        keep = np.ones(len(self.ids), dtype=bool)
        if len(self.ids) > 1:
            keep[1:] = self.ids[1:] != self.ids[:-1]
        return ModalityEmbeddings(self.modality, self.ids[keep], self.subs[keep], self.rows[keep],
                                  self.unit[keep], dict(self.excluded))

    def note(self) -> str | None:
        """The counted exclusions of this partition, for the note of every row computed from it."""
        parts = [f"{n} {reason}" for reason, n in sorted(self.excluded.items()) if n]
        return f"{self.modality} rows excluded: " + ", ".join(parts) if parts else None


@dataclass
class TaskContext:
    """Who is being scored and how; ``row`` fills the columns every row of this model shares."""

    run_id: str
    model: str
    weights_random: bool
    settings: ScoreSettings
    catalogue: CatalogueView
    runner: TileRunner | None = None                     # None: the engine picks (Ray when initialised)

    def row(self, task: str, target: str, metric: str, value: float | None, n: int, seconds: float,
            **kw: Any) -> ScoreRow:
        if value is not None:
            value = float(value)
            if not np.isfinite(value):
                value = None
        return ScoreRow(run_id=self.run_id, model=self.model, task=task, target=target, metric=metric,
                        value=value, n=int(n), seconds=float(seconds), weights_random=self.weights_random, **kw)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` is the elapsed wall time in seconds."""
    out = [0.0]
    start = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - start


def join_notes(*notes: str | None) -> str | None:
    parts = [n for n in notes if n]
    return "; ".join(parts) if parts else None
