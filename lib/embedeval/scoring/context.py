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
import pyarrow.compute as pc

from embedeval.engine.runner import TileRunner
from embedeval.engine.sources import BlockSource
from embedeval.errors import EmbedevalError
from embedeval.io.prompts import PromptVectors
from embedeval.scoring.schema import ScoreRow
from embedeval.scoring.settings import ScoreSettings


class ScoringError(EmbedevalError, ValueError):
    """Inputs cannot be scored as asked; the message names the model, modality, column or setting."""


@dataclass(frozen=True)
class Categorical:
    """A string column as integer codes: ``values[codes[i]]``, code -1 where unknown (null or empty)."""

    codes: np.ndarray     # int64 (n,)
    values: list[str]     # sorted distinct known values

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray | pa.Array) -> "Categorical":
        col = pc.cast(column, pa.string())
        col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
        values = sorted(v for v in pc.unique(col).to_pylist() if v is not None)
        idx = pc.index_in(col, value_set=pa.array(values, pa.string()))
        return cls(np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), dtype=np.int64), values)

    def take(self, rows: np.ndarray) -> "Categorical":
        return Categorical(self.codes[rows], self.values)

    def mask(self, value: str) -> np.ndarray:
        """Where the column equals ``value`` (all False when the value never occurs)."""
        code = self.values.index(value) if value in self.values else -2
        return self.codes == code

    @property
    def known(self) -> np.ndarray:
        return self.codes >= 0

    def names(self, rows: np.ndarray) -> list[str | None]:
        """The strings of a few rows (for output tables; not for per-item loops over a catalogue)."""
        return [self.values[c] if c >= 0 else None for c in self.codes[np.asarray(rows, dtype=np.int64)]]


def group_codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """int64 codes of a ``group`` column, 0..G-1: named groups first (sorted names), then one code per row
    whose group is null or empty (a group of its own). O(N), no Python object per row."""
    cat = Categorical.from_arrow(column)
    codes = cat.codes.copy()
    alone = codes < 0
    codes[alone] = len(cat.values) + np.arange(int(alone.sum()), dtype=np.int64)
    return codes


@dataclass
class CatalogueView:
    """The manifest columns the analyses read, as Arrow and numpy columns aligned with the manifest's rows.

    No Python object per item: ids stay an Arrow string array (looked up with hash joins), labels and
    splits are integer codes, tags stay an Arrow list column until they become a sparse matrix.
    Memory O(N) numeric plus the id strings.
    """

    ids: pa.Array                                     # string
    tags: pa.Array | None                             # list<string>; None when the manifest has no tags column
    labels: Categorical | None
    attrs: dict[str, np.ndarray]                      # name (without attr_) -> float64, NaN = unknown
    split: Categorical | None                         # train/test
    class_split: Categorical | None                   # seen/unseen
    groups: np.ndarray | None = None                  # int64 group code per row (see ``group_codes``)

    @classmethod
    def from_table(cls, manifest: pa.Table) -> "CatalogueView":
        if "id" not in manifest.column_names:
            raise ScoringError("manifest has no 'id' column; pass the table from embedeval.io.manifest.load_manifest")
        ids = pc.cast(manifest.column("id"), pa.string()).combine_chunks()
        if len(pc.unique(ids)) != len(ids):
            counts = pc.value_counts(ids)
            dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
            raise ScoringError(f"manifest id {dup!r} appears more than once; load the manifest with load_manifest, "
                               "which keeps the first")

        def categorical(name: str) -> Categorical | None:
            return Categorical.from_arrow(manifest.column(name)) if name in manifest.column_names else None

        attrs = {}
        for name in manifest.column_names:
            if name.startswith("attr_"):
                col = manifest.column(name).cast(pa.float64())
                attrs[name[len("attr_"):]] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        tags = manifest.column("tags").combine_chunks() if "tags" in manifest.column_names else None
        groups = group_codes(manifest.column("group")) if "group" in manifest.column_names else None
        return cls(ids, tags, categorical("label"), attrs, categorical("split"), categorical("class_split"), groups)

    @property
    def group_of(self) -> np.ndarray:
        """int64 group code of every row: the ``group`` column's codes, or each row its own group without it."""
        return self.groups if self.groups is not None else np.arange(len(self.ids), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, ids: pa.Array | list[str]) -> np.ndarray:
        """int64 manifest row of each id, -1 where the id is not in the manifest (a hash join)."""
        found = pc.index_in(pa.array(ids, pa.string()) if isinstance(ids, list) else ids, value_set=self.ids)
        return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)

    def id_of(self, rows: np.ndarray) -> list[str]:
        """The ids of a few rows (output tables, messages)."""
        return self.ids.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()


@dataclass
class ModalityEmbeddings:
    """One (model, modality) partition after checks: only rows that joined the manifest with usable vectors.

    Rows are in (id, sub) order. The unit vectors live in ``source`` (block files written by
    :mod:`embedeval.scoring.prepare`, or an in-memory array for small inputs): tasks read blocks where
    they run, and the driver keeps only ``rows`` and ``subs`` (O(n) integers).
    """

    modality: str
    source: BlockSource        # (n, d) float32 unit rows
    rows: np.ndarray           # int64 manifest row of each embedding row
    subs: np.ndarray           # int16
    excluded: dict[str, int] = field(default_factory=dict)   # reason -> count

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def dim(self) -> int:
        return int(self.source.dim)

    @property
    def unit(self) -> np.ndarray:
        """All unit vectors as one array: O(n x d), for tests and oracles only."""
        return self.source.to_array()

    def select(self, keep: np.ndarray) -> "ModalityEmbeddings":
        """The rows where ``keep`` (a boolean mask or sorted indices) holds; blocks are shared, not copied."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.int64)
        return ModalityEmbeddings(self.modality, self.source.select(idx), self.rows[idx], self.subs[idx],
                                  dict(self.excluded))

    def first_per_item(self) -> "ModalityEmbeddings":
        """One row per item (sub 0, else the smallest sub): image/sketch analyses want one vector per item."""
        keep = np.ones(len(self), dtype=bool)
        if len(self) > 1:
            keep[1:] = self.rows[1:] != self.rows[:-1]
        return self if keep.all() else self.select(keep)

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
    shared: dict[Any, Any] = field(default_factory=dict)  # results two tasks of one model share (computed once)
    prompts: PromptVectors | None = None                  # the model's prompt vectors (modality=prompt), if any

    def place(self, source: BlockSource) -> BlockSource:
        """The source placed once for this task's many engine calls (in-memory blocks -> object store)."""
        return self.runner.place(source) if self.runner is not None else source

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
