"""Committed embeddings -> scoring blocks: checked, L2-normalised, (id, sub)-ordered row blocks on storage.

The score stage reads every vector once here and never again through the driver. For one (model,
modality) partition it:

1. reads the ``id`` and ``sub`` columns of the committed files (Arrow, O(N) on the driver), joins them to
   the manifest (a hash join) and orders them by (id, sub);
2. runs one task per file that reads its vectors and reports which are finite and their norms;
3. drops ids missing from the manifest, NaN/Inf vectors and zero vectors, counting each reason;
4. shuffles the kept rows into blocks of ``block_rows`` (one task per file maps its rows to their block,
   one task per block writes ``block-<b>.npy``), in waves of at most ``wave_bytes`` of vectors, so the
   object store never holds more than that;
5. writes ``index.parquet`` (manifest row and sub of every block row) and, last, ``_COMMITTED.json``.

Layout: ``runs/<id>/scores/blocks/model=<m>/modality=<x>/``. A rerun whose embeddings did not change reuses
committed blocks (the marker records the partition's fingerprint). Workers read the embedding files
straight from storage (local folder or S3); the driver holds O(N) ids, integers and masks, never a vector.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedeval.engine.runner import RayRunner, TileRunner
from embedeval.engine.sources import StoredBlocks
from embedeval.engine.tiles import pack_in_order
from embedeval.io.commit import CommitError, commit, read_commit, write_table
from embedeval.io.embeddings import CommitRecord, partition_dir, read_commit_marker, vectors_from_table
from embedeval.io.layout import RunLayout
from embedeval.io.storage import Storage
from embedeval.scoring.context import CatalogueView, ModalityEmbeddings, ScoringError

log = logging.getLogger(__name__)

BLOCKS_FORMAT = 1
DEFAULT_BLOCK_ROWS = 32768
DEFAULT_WAVE_BYTES = 256 * 1024 * 1024


def blocks_dir(run_id: str, model: str, modality: str, out_dir: str | None = None) -> str:
    """Where a partition's prepared blocks go: under the score stage's folder (``out_dir`` moves it)."""
    return RunLayout(run_id, scores_dir=out_dir).partition_blocks(model, modality)


@dataclass(frozen=True)
class PreparedPartition:
    """What the score stage knows of one prepared partition (no vectors)."""

    embeddings: ModalityEmbeddings
    model_info: dict[str, str]


def prepare_partition(storage: Storage, run_id: str, model: str, modality: str, catalogue: CatalogueView,
                      runner: TileRunner, *, block_rows: int = DEFAULT_BLOCK_ROWS,
                      wave_bytes: int = DEFAULT_WAVE_BYTES, out_dir: str | None = None) -> PreparedPartition:
    """Checked unit-vector blocks of one committed partition, reusing committed blocks when unchanged."""
    record = read_commit_marker(storage, run_id, model, modality)
    where = storage.uri(partition_dir(run_id, model, modality))
    if record is None:
        raise ScoringError(f"no committed embeddings at {where}: run `embedeval embed` for run {run_id!r} first")
    prefix = blocks_dir(run_id, model, modality, out_dir)
    fingerprint = _fingerprint(record, catalogue, block_rows)
    reused = _read_blocks_marker(storage, prefix, fingerprint)
    if reused is not None:
        return PreparedPartition(reused, record.model_info)

    files = [f.path for f in record.files]
    keys = _read_keys(storage, files, where)
    if keys.num_rows != record.rows:
        raise ScoringError(f"{where}: marker says {record.rows} rows, files hold {keys.num_rows}")
    manifest_rows = catalogue.rows_of(keys.column("id").combine_chunks())
    in_manifest = manifest_rows >= 0
    if keys.num_rows and not in_manifest.any():
        example = keys.column("id")[0].as_py()
        raise ScoringError(f"{where}: none of its {keys.num_rows} ids (e.g. {example!r}) is in the manifest; "
                           "score with the manifest the run was embedded from")

    file_rows = [f.rows for f in record.files]
    checks = _run_calls(runner, _check_file, [(storage, path, record.dim) for path in files])
    finite = np.concatenate([c[0] for c in checks]) if checks else np.zeros(0, bool)
    usable = finite & np.concatenate([c[1] > 0 for c in checks]) if checks else np.zeros(0, bool)
    excluded = {"ids not in manifest": int((~in_manifest).sum()),
                "NaN/Inf vectors": int((in_manifest & ~finite).sum()),
                "zero vectors": int((in_manifest & finite & ~usable).sum())}
    for reason, count in excluded.items():
        if count:
            log.warning("%s: %d rows excluded (%s)", where, count, reason)
    keep = np.flatnonzero(in_manifest & usable)

    kept = keys.take(pa.array(keep)).append_column("position", pa.array(keep))
    order = pc.sort_indices(kept, sort_keys=[("id", "ascending"), ("sub", "ascending")])
    kept = kept.take(order)
    _check_unique(kept, where)
    position = np.asarray(kept.column("position").to_numpy(), dtype=np.int64)  # global input row of each output row
    n = position.size
    offsets = np.append(np.arange(0, n, block_rows, dtype=np.int64), np.int64(n)) if n else np.zeros(1, np.int64)
    _write_blocks(storage, prefix, files, file_rows, position, offsets, record.dim, runner, wave_bytes)

    rows = manifest_rows[position]
    subs = np.asarray(kept.column("sub").to_numpy(), dtype=np.int16)
    index = write_table(storage, f"{prefix}/index.parquet", pa.table({"manifest_row": rows, "sub": subs}))
    commit(storage, prefix, [index], format_version=BLOCKS_FORMAT, fingerprint=fingerprint, rows=int(n),
           dim=record.dim, offsets=offsets.tolist(), excluded={k: v for k, v in excluded.items() if v})
    source = StoredBlocks(storage, prefix, int(n), record.dim, offsets, tag=fingerprint)
    emb = ModalityEmbeddings(modality, source, rows, subs, {k: v for k, v in excluded.items() if v})
    return PreparedPartition(emb, record.model_info)


def _fingerprint(record: CommitRecord, catalogue: CatalogueView, block_rows: int) -> str:
    """What the blocks depend on: the committed files, the manifest's ids (row numbers), the block size."""
    h = hashlib.sha256()
    h.update(f"block_rows={block_rows};".encode())
    for f in record.files:
        h.update(f"{f.path}:{f.rows}:{f.sha256};".encode())
    h.update(f"dim={record.dim};format={BLOCKS_FORMAT};".encode())
    for chunk in [catalogue.ids]:
        for buf in chunk.buffers():
            if buf is not None:
                h.update(buf)
    return h.hexdigest()[:32]


def _read_blocks_marker(storage: Storage, prefix: str, fingerprint: str) -> ModalityEmbeddings | None:
    try:
        found = read_commit(storage, prefix)
        if found is None:
            return None
        marker = found.fields
        entry = found.file("index.parquet")
        if marker.get("fingerprint") != fingerprint or marker.get("format_version") != BLOCKS_FORMAT or entry is None:
            return None
        index = storage.read_parquet([entry.path])
    except (CommitError, ValueError, KeyError, OSError, pa.ArrowException):
        return None  # unreadable: rebuilt below
    offsets = np.asarray(marker["offsets"], dtype=np.int64)
    source = StoredBlocks(storage, prefix, int(marker["rows"]), int(marker["dim"]), offsets, tag=fingerprint)
    rows = np.asarray(index.column("manifest_row").to_numpy(), dtype=np.int64)
    subs = np.asarray(index.column("sub").to_numpy(), dtype=np.int16)
    modality = prefix.rsplit("modality=", 1)[1]
    return ModalityEmbeddings(modality, source, rows, subs, dict(marker.get("excluded", {})))


def _read_keys(storage: Storage, files: list[str], where: str) -> pa.Table:
    try:
        tables = [storage.read_parquet([path], columns=["id", "sub"]) for path in files]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ScoringError(f"{where}: cannot read the id/sub columns ({exc}); the partition is corrupt, "
                           "delete it and re-embed") from exc
    if not tables:
        return pa.table({"id": pa.array([], pa.string()), "sub": pa.array([], pa.int16())})
    return pa.concat_tables([t.cast(pa.schema([("id", pa.string()), ("sub", pa.int16())])) for t in tables])


def _check_unique(kept: pa.Table, where: str) -> None:
    ids = kept.column("id").combine_chunks()
    subs = kept.column("sub").combine_chunks()
    if len(ids) < 2:
        return
    same = pc.and_(pc.equal(ids[1:], ids[:-1]), pc.equal(subs[1:], subs[:-1]))
    if pc.any(same).as_py():
        first = int(np.flatnonzero(np.asarray(same.to_numpy(zero_copy_only=False)))[0])
        raise ScoringError(f"{where}: duplicate (id, sub) {ids[first].as_py()!r}; the partition is corrupt")


def _read_vectors(storage: Storage, path: str, dim: int) -> np.ndarray:
    table = pq.read_table(storage.path(path), columns=["vector"], filesystem=storage.fs)
    vtype = table.schema.field("vector").type
    if getattr(vtype, "list_size", None) != dim:
        found = getattr(vtype, "list_size", str(vtype))
        raise ScoringError(f"{storage.uri(path)}: files disagree on the vector dimension (this file {found}, the "
                           f"commit marker {dim}); the partition is corrupt, delete it and re-embed")
    return vectors_from_table(table)


def _check_file(storage: Storage, path: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Task: (finite, float64 norm) of every vector in one file (norm 0 where not finite)."""
    vectors = _read_vectors(storage, path, dim)
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], vectors, 0).astype(np.float64), axis=1)
    return finite, norms


def _map_file(storage: Storage, path: str, dim: int, first_row: int, dest: np.ndarray, offsets: np.ndarray,
              wave: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Task: this file's unit rows that belong to each block of ``wave``, with their row in the block.

    ``dest[r]`` is the output row of the file's row r (-1: dropped)."""
    vectors = None
    out = []
    for b in wave:
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        rows = np.flatnonzero((dest >= lo) & (dest < hi))
        if rows.size and vectors is None:
            vectors = _read_vectors(storage, path, dim)
        if rows.size:
            v = vectors[rows].astype(np.float64)
            unit = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
            out.append((dest[rows] - lo, unit))
        else:
            out.append((np.zeros(0, np.int64), np.zeros((0, dim), np.float32)))
    return out


def _map_file_returns(*args: Any) -> Any:
    """``_map_file`` shaped for Ray's ``num_returns``: one object per block of the wave."""
    pieces = _map_file(*args)
    return pieces[0] if len(pieces) == 1 else tuple(pieces)


def _write_block(storage: Storage, prefix: str, b: int, size: int, dim: int, *pieces: tuple[np.ndarray, np.ndarray]
                 ) -> int:
    """Task: assemble block b from the files' pieces and write it; returns its row count."""
    block = np.empty((size, dim), dtype=np.float32)
    filled = 0
    for at, unit in pieces:
        block[at] = unit
        filled += at.size
    if filled != size:
        raise RuntimeError(f"block {b}: {filled} of {size} rows arrived; the embedding files changed while scoring")
    buf = io.BytesIO()
    np.save(buf, block, allow_pickle=False)
    storage.write_bytes(StoredBlocks.block_path(prefix, b), buf.getvalue())
    return size


def _write_blocks(storage: Storage, prefix: str, files: list[str], file_rows: list[int], position: np.ndarray,
                  offsets: np.ndarray, dim: int, runner: TileRunner, wave_bytes: int) -> None:
    """The shuffle: input rows (file order) -> output blocks ((id, sub) order), in memory-bounded waves."""
    total_in = int(sum(file_rows))
    dest_all = np.full(total_in, -1, dtype=np.int64)
    dest_all[position] = np.arange(position.size, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(file_rows)]).astype(np.int64)
    dests = [dest_all[starts[i]:starts[i + 1]] for i in range(len(files))]
    rows_per_wave = max(1, wave_bytes // max(1, 4 * dim))
    for wave in pack_in_order(np.diff(offsets).tolist(), rows_per_wave):
        if isinstance(runner, RayRunner):
            _ray_wave(storage, prefix, files, starts, dests, offsets, dim, wave)
        else:
            mapped = [_map_file(storage, path, dim, int(starts[i]), dests[i], offsets, wave)
                      for i, path in enumerate(files)]
            for j, b in enumerate(wave):
                _write_block(storage, prefix, b, int(offsets[b + 1] - offsets[b]), dim, *(m[j] for m in mapped))


def _ray_wave(storage: Storage, prefix: str, files: list[str], starts: np.ndarray, dests: list[np.ndarray],
              offsets: np.ndarray, dim: int, wave: list[int]) -> None:
    import ray

    map_task = ray.remote(_map_file_returns).options(num_returns=len(wave), num_cpus=1)
    write_task = ray.remote(_write_block).options(num_cpus=1)
    mapped = []
    for i, path in enumerate(files):
        refs = map_task.remote(storage, path, dim, int(starts[i]), dests[i], offsets, wave)
        mapped.append([refs] if len(wave) == 1 else list(refs))
    writes = [write_task.remote(storage, prefix, b, int(offsets[b + 1] - offsets[b]), dim, *(m[j] for m in mapped))
              for j, b in enumerate(wave)]
    ray.get(writes)


def _run_calls(runner: TileRunner, fn: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
    out: list[Any] = [None] * len(calls)
    for i, value in runner.map_calls(fn, calls):
        out[i] = value
    return out
