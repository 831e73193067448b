"""The embeddings contract: Parquet partitions per model/modality, made visible by ``_COMMITTED.json``.

Layout under a run: ``embeddings/model=<slug>/modality=<m>/part-*.parquet`` and ``_COMMITTED.json`` in the
same folder, written last. Readers see only partitions with a marker and only the files the marker lists,
so a killed writer's leftovers are never read. Vectors are a plain Arrow ``fixed_size_list<float32>[d]`` so
polars, DuckDB and pyarrow read the files as they are.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from embedeval.errors import EmbedevalError
from embedeval.io.commit import CommitError, CommittedFile, commit, read_commit
from embedeval.io.layout import COMMIT_MARKER, RunLayout, partition_of
from embedeval.io.storage import Storage

__all__ = ["COMMIT_MARKER", "CommitRecord", "EmbeddingSet", "EmbeddingsError", "PartFile", "embeddings_schema",
           "embeddings_table", "list_committed", "partition_dir", "read_commit_marker", "read_committed",
           "table_checksum", "vectors_from_table", "write_commit_marker"]

FORMAT_VERSION = 1
#: One written file of a partition as its marker lists it; ``sha256`` is :func:`table_checksum` of its rows.
PartFile = CommittedFile


class EmbeddingsError(EmbedevalError, ValueError):
    """Embeddings are missing, uncommitted or inconsistent; the message names the partition."""


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("sub", pa.int16(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("norm", pa.float32(), nullable=False),
        ]
    )


def embeddings_table(ids: list[str] | pa.Array, subs: list[int] | np.ndarray | pa.Array,
                     vectors: np.ndarray) -> pa.Table:
    """Build a table in the contract's schema from ids, subs and an (n, d) float32 matrix."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    vec = pa.FixedSizeListArray.from_arrays(flat, dim)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1).astype(np.float32) if n else np.zeros(0, np.float32)
    return pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(np.asarray(subs, dtype=np.int16), pa.int16()), vec, pa.array(norms)],
        schema=embeddings_schema(dim),
    )


def partition_dir(run_id: str, model: str, modality: str) -> str:
    return RunLayout(run_id).partition(model, modality)


def table_checksum(table: pa.Table) -> str:
    """A content checksum of id, sub and vector bytes (stable across Parquet encodings)."""
    h = hashlib.sha256()
    for col in ("id", "sub"):
        for chunk in table.column(col).chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(buf)
    vec = table.column("vector").combine_chunks()
    values = vec.flatten() if len(vec) else pa.array([], pa.float32())
    h.update(np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).tobytes())
    return h.hexdigest()


@dataclass
class CommitRecord:
    run_id: str
    model: str
    modality: str
    dim: int
    files: list[PartFile]
    rows: int
    quarantined: int
    model_info: dict[str, str] = field(default_factory=dict)
    inputs_sha256: str = ""          # fingerprint of the (id, sub, source) rows this partition was made from
    errors_files: list[str] = field(default_factory=list)
    committed_at: float = field(default_factory=time.time)
    # The embedding-cache files this partition took vectors from or added (relative to the root); [] when
    # built without the cache; None in markers written before this was recorded (then unknown).
    cache_files: list[str] | None = None

    def fields(self) -> dict[str, Any]:
        """The marker's fields besides ``files`` and ``committed_at`` (which :func:`commit` writes)."""
        return {
            "format_version": FORMAT_VERSION,
            "run_id": self.run_id,
            "model": self.model,
            "modality": self.modality,
            "dim": self.dim,
            "rows": self.rows,
            "quarantined": self.quarantined,
            "model_info": self.model_info,
            "inputs_sha256": self.inputs_sha256,
            "errors_files": self.errors_files,
            "cache_files": self.cache_files,
        }

    @classmethod
    def from_fields(cls, files: list[PartFile], d: dict[str, Any]) -> "CommitRecord":
        return cls(
            run_id=d["run_id"], model=d["model"], modality=d["modality"], dim=int(d["dim"]),
            files=files, rows=int(d["rows"]), quarantined=int(d["quarantined"]),
            model_info=dict(d.get("model_info", {})), inputs_sha256=str(d.get("inputs_sha256", "")),
            errors_files=list(d.get("errors_files", [])), committed_at=float(d.get("committed_at", 0.0)),
            cache_files=None if d.get("cache_files") is None else [str(f) for f in d["cache_files"]],
        )


def write_commit_marker(storage: Storage, record: CommitRecord) -> None:
    """Make a partition visible. Call only after every listed file is durably written."""
    commit(storage, partition_dir(record.run_id, record.model, record.modality), record.files,
           committed_at=record.committed_at, **record.fields())


def read_commit_marker(storage: Storage, run_id: str, model: str, modality: str) -> CommitRecord | None:
    folder = partition_dir(run_id, model, modality)
    try:
        found = read_commit(storage, folder)
        return None if found is None else CommitRecord.from_fields(found.files, found.fields)
    except (CommitError, KeyError, ValueError, TypeError) as exc:
        raise EmbeddingsError(f"commit marker of {storage.uri(folder)} is malformed ({exc}); "
                              "delete it to re-embed") from exc


def list_committed(storage: Storage, run_id: str) -> list[tuple[str, str]]:
    """(model, modality) pairs with a commit marker in a run, sorted."""
    found = (partition_of(rel) for rel in storage.list_files(RunLayout(run_id).embeddings, suffix=COMMIT_MARKER))
    return sorted(p for p in found if p is not None)


@dataclass
class EmbeddingSet:
    """A committed partition in memory: rows sorted by (id, sub)."""

    model: str
    modality: str
    ids: np.ndarray          # object array of str
    subs: np.ndarray         # int16
    vectors: np.ndarray      # (n, d) float32, as the model produced them
    model_info: dict[str, str]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)


def vectors_from_table(table: pa.Table) -> np.ndarray:
    """The (n, d) float32 matrix of a ``vector`` column (fixed_size_list), without a Python loop."""
    col = table.column("vector").combine_chunks()
    if len(col) == 0:
        dim = col.type.list_size if hasattr(col.type, "list_size") else 0
        return np.zeros((0, dim), np.float32)
    dim = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(-1, dim)


def read_committed(storage: Storage, run_id: str, model: str, modality: str) -> EmbeddingSet:
    """Read one committed partition, checking it against its marker (row counts, dims, no duplicates)."""
    record = read_commit_marker(storage, run_id, model, modality)
    where = storage.uri(partition_dir(run_id, model, modality))
    if record is None:
        raise EmbeddingsError(f"no committed embeddings at {where}: run `embedeval embed` for run {run_id!r} first")
    table = storage.read_parquet([f.path for f in record.files], columns=["id", "sub", "vector"])
    if table.num_rows != record.rows:
        raise EmbeddingsError(f"{where}: marker says {record.rows} rows, files hold {table.num_rows}")
    if table.num_rows and table.column("vector").type.list_size != record.dim:
        raise EmbeddingsError(f"{where}: vectors have dim {table.column('vector').type.list_size}, marker {record.dim}")
    table = table.sort_by([("id", "ascending"), ("sub", "ascending")])
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    subs = table.column("sub").to_numpy().astype(np.int16)
    if len(ids) > 1:
        dup = (ids[1:] == ids[:-1]) & (subs[1:] == subs[:-1])
        if dup.any():
            raise EmbeddingsError(f"{where}: duplicate (id, sub) {ids[1:][dup][0]!r}; the partition is corrupt")
    return EmbeddingSet(model, modality, ids, subs, vectors_from_table(table), record.model_info)
