"""The three Ray Data stages of embedding: prepare (read, decode, preprocess), embed, write.

Batches are Arrow tables. A row that fails carries ``error_stage``/``error_reason`` to the writer, which
puts it in the partition's errors file instead of its embeddings file: Ray Data fails the whole job on
one exception in a UDF, so no per-item problem may escape as an exception here.

Row columns through the stages:
  input    id, sub, modality, source (a media URI, or the caption text for modality text)
  prepared input + content_sha256, pixels (float32 CHW bytes; null for text), shape (list<int32>),
           error_stage, error_reason
  embedded id, sub, modality, content_sha256, vector (fixed_size_list<float32>[d], null on error),
           error_stage, error_reason
  written  one row per (file, modality): modality, path, rows, sha256, errors_path, errors

One pipeline serves all of a model's modalities, so its replicas load once per model, not per partition.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from embedeval.io.embeddings import embeddings_table, table_checksum
from embedeval.io.quarantine import ERRORS_SCHEMA
from embedeval.io.storage import S3Options, Storage
from embedeval.pipeline.cache import bytes_sha256, text_sha256, write_entries
from embedeval.pipeline.media import BadItem, MediaLimits, MediaReader, decode_image

log = logging.getLogger(__name__)

WRITTEN_SCHEMA = pa.schema([
    ("modality", pa.string()), ("path", pa.string()), ("rows", pa.int64()), ("sha256", pa.string()),
    ("errors_path", pa.string()), ("errors", pa.int64()),
])


def _error_columns(stages: list[str | None], reasons: list[str | None]) -> dict[str, pa.Array]:
    return {"error_stage": pa.array(stages, pa.string()), "error_reason": pa.array(reasons, pa.string())}


def _previous_errors(batch: pa.Table) -> tuple[list[str | None], list[str | None]]:
    if "error_stage" in batch.column_names:
        return batch.column("error_stage").to_pylist(), batch.column("error_reason").to_pylist()
    return [None] * batch.num_rows, [None] * batch.num_rows


class ImagePreparer:
    """Read, decode and apply the model's own preprocessing. One instance per Ray actor."""

    def __init__(self, spec: str, s3: S3Options | None, limits: MediaLimits, cache_dir: str | None = None,
                 preprocess: Callable[[Image.Image], np.ndarray] | None = None) -> None:
        """``preprocess``: the model's own (from a replica already loaded in this process); else loaded."""
        from embedeval.pipeline.model_facts import load_preprocessor

        self.preprocess = preprocess or load_preprocessor(spec, s3=s3, cache_dir=cache_dir)
        self.reader = MediaReader(s3, limits)

    def __call__(self, batch: pa.Table) -> pa.Table:
        stages, reasons = _previous_errors(batch)
        pixels: list[bytes | None] = []
        shapes: list[list[int] | None] = []
        hashes: list[str | None] = []
        for i, (source, modality) in enumerate(zip(batch.column("source").to_pylist(),
                                                   batch.column("modality").to_pylist())):
            array, digest = None, None
            if modality == "text":
                digest = text_sha256(source)
            elif stages[i] is None:
                try:
                    data = self.reader.read_bytes(source)
                    digest = bytes_sha256(data)
                    array = np.ascontiguousarray(self.preprocess(decode_image(data, self.reader.limits.max_pixels)),
                                                 dtype=np.float32)
                except BadItem as bad:
                    stages[i], reasons[i] = bad.stage, bad.reason
                except Exception as exc:  # noqa: BLE001 - any other per-item failure is quarantined, never raised
                    stages[i], reasons[i] = "decode", f"preprocessing failed: {type(exc).__name__}: {str(exc)[:200]}"
            hashes.append(digest)
            pixels.append(None if array is None else array.tobytes())
            shapes.append(None if array is None else list(array.shape))
        return pa.table({
            "id": batch.column("id"), "sub": batch.column("sub"), "modality": batch.column("modality"),
            "source": batch.column("source"), "content_sha256": pa.array(hashes, pa.string()),
            "pixels": pa.array(pixels, pa.binary()), "shape": pa.array(shapes, pa.list_(pa.int32())),
            **_error_columns(stages, reasons),
        })


class Embedder:
    """One model replica (one per Ray actor). Embeds the good rows of a batch; isolates rows that fail."""

    def __init__(self, spec: str, s3: S3Options | None, device: str,
                 torch_threads: int | None, cache_dir: str | None = None, counter: Any | None = None,
                 counter_key: str = "") -> None:
        """``counter``: a :class:`~embedeval.pipeline.counter.RowCounter` actor told each batch's rows per
        modality under ``counter_key`` (for the driver's progress bar; fire and forget)."""
        from embedeval.models.registry import load_model

        self.model = load_model(spec, device=device, s3=s3, cache_dir=cache_dir)
        if torch_threads and "torch" in sys.modules:  # models without torch (builtin) do not pay its import
            sys.modules["torch"].set_num_threads(torch_threads)
        self.dim = self.model.info.dim
        self.counter, self.counter_key = counter, counter_key

    def _embed(self, batch: pa.Table, rows: list[int], text: bool) -> np.ndarray:
        if text:
            texts = batch.column("source").take(pa.array(rows, pa.int64())).to_pylist()
            return np.asarray(self.model.embed_texts(texts), dtype=np.float32)
        pix = batch.column("pixels").take(pa.array(rows, pa.int64())).to_pylist()
        shapes = batch.column("shape").take(pa.array(rows, pa.int64())).to_pylist()
        stack = np.stack([np.frombuffer(p, dtype=np.float32).reshape(s) for p, s in zip(pix, shapes)])
        return np.asarray(self.model.embed_images(stack), dtype=np.float32)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        stages, reasons = _previous_errors(batch)
        is_text = [m == "text" for m in batch.column("modality").to_pylist()]
        vectors = np.zeros((n, self.dim), np.float32)
        for text in (False, True):
            good = [i for i in range(n) if stages[i] is None and is_text[i] == text]
            if not good:
                continue
            try:
                vectors[good] = self._embed(batch, good, text)
            except Exception as exc:  # noqa: BLE001 - find the row(s) at fault, keep the rest
                log.warning("batch of %d failed (%s); embedding its rows one by one", len(good), exc)
                for i in good:
                    try:
                        vectors[i] = self._embed(batch, [i], text)[0]
                    except Exception as row_exc:  # noqa: BLE001
                        stages[i] = "embed"
                        reasons[i] = f"model failed on this item: {type(row_exc).__name__}: {str(row_exc)[:200]}"
        finite = np.isfinite(vectors).all(axis=1)
        nonzero = np.abs(vectors).sum(axis=1) > 0
        for i in range(n):
            if stages[i] is None and not finite[i]:
                stages[i], reasons[i] = "embed", "model produced a NaN or Inf vector"
            elif stages[i] is None and not nonzero[i]:
                stages[i], reasons[i] = "embed", "model produced a zero vector (no direction for cosine similarity)"
        valid = np.array([s is None for s in stages])
        flat = pa.array(vectors.reshape(-1), pa.float32())
        vec = pa.FixedSizeListArray.from_arrays(flat, self.dim, mask=pa.array(~valid))
        if self.counter is not None:
            modalities = batch.column("modality").to_pylist()
            self.counter.add.remote(self.counter_key, {m: modalities.count(m) for m in set(modalities)})
        return pa.table({"id": batch.column("id"), "sub": batch.column("sub"),
                         "modality": batch.column("modality"), "content_sha256": batch.column("content_sha256"),
                         "vector": vec,
                         **_error_columns(stages, reasons)})


class PreparingEmbedder:
    """Prepare and embed in one process: one model load (its preprocessing reused) and no pixel arrays
    through the object store. :func:`prepare_and_embed` runs it as a task (``embed.replicas: tasks``)."""

    def __init__(self, spec: str, s3: S3Options | None, limits: MediaLimits, device: str,
                 torch_threads: int | None, cache_dir: str | None = None, counter: Any | None = None,
                 counter_key: str = "") -> None:
        self.embedder = Embedder(spec, s3, device, torch_threads, cache_dir, counter, counter_key)
        self.preparer = ImagePreparer(spec, s3, limits, cache_dir, preprocess=self.embedder.model.preprocess_image)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.embedder(self.preparer(batch))


# The last model replica this worker process built for `prepare_and_embed`: (key, embedder). One only,
# so a worker never holds more than one model, and consecutive batches of a model reuse it.
_task_replica: tuple[tuple, Embedder] | None = None


def prepare_and_embed(batch: pa.Table, spec: str, s3: S3Options | None, limits: MediaLimits, device: str,
                      torch_threads: int | None, counter: Any | None = None, counter_key: str = "") -> pa.Table:
    """Prepare and embed one batch as a plain Ray task (``embed.replicas: tasks``): the cluster's pooled
    worker processes serve every model in turn, so no actor process starts (and imports torch) per model.
    The same rows out as :class:`ImagePreparer` then :class:`Embedder`."""
    global _task_replica
    key = (spec, device, torch_threads)
    if _task_replica is None or _task_replica[0] != key:
        _task_replica = None   # free the previous model before building the next
        _task_replica = (key, Embedder(spec, s3, device, torch_threads))
    embedder = _task_replica[1]
    embedder.counter, embedder.counter_key = counter, counter_key   # this run's, not the one that built it
    preparer = ImagePreparer(spec, s3, limits, preprocess=embedder.model.preprocess_image)
    return embedder(preparer(batch))


@dataclass(frozen=True)
class PartitionTarget:
    """Where one model's partitions go (one folder per modality), and what to stamp on the files."""

    storage: Storage
    run_id: str
    model: str
    metadata: dict[str, str]
    cache_dir: str | None = None     # cache/<key>: new vectors are added there too

    def partition_dir(self, modality: str) -> str:
        return f"runs/{self.run_id}/embeddings/model={self.model}/modality={modality}"

    def errors_dir(self, modality: str) -> str:
        return f"runs/{self.run_id}/errors/model={self.model}/modality={modality}"


def part_name(ids: list[str], subs: list[int]) -> str:
    """A file name that depends only on the rows, so a retried task overwrites instead of duplicating."""
    h = hashlib.sha1()
    for i, s in zip(ids, subs):
        h.update(f"{i}\x1f{s}\x1e".encode())
    return f"part-{h.hexdigest()[:20]}.parquet"


def write_partition_files(batch: pa.Table, target: PartitionTarget) -> pa.Table:
    """Per modality in the batch: good rows to an embeddings file, bad rows to an errors file."""
    out = []
    for modality in sorted(set(batch.column("modality").to_pylist())):
        part = batch.filter(pc.equal(batch.column("modality"), modality))
        out.append(_write_modality(part, modality, target))
    return pa.Table.from_pylist(out, schema=WRITTEN_SCHEMA)


def _write_modality(batch: pa.Table, modality: str, target: PartitionTarget) -> dict:
    ok = pc.is_null(batch.column("error_stage"))
    good = batch.filter(ok)
    bad = batch.filter(pc.invert(ok))
    name = part_name(batch.column("id").to_pylist(), batch.column("sub").to_pylist())
    path = errors_path = sha = ""
    if good.num_rows:
        vectors = good.column("vector").combine_chunks()
        dim = vectors.type.list_size
        matrix = np.asarray(vectors.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)
        table = embeddings_table(good.column("id"), good.column("sub").to_numpy(), matrix)
        path = f"{target.partition_dir(modality)}/{name}"
        target.storage.write_parquet(path, table, metadata={**target.metadata, "embedeval.modality": modality})
        sha = table_checksum(table)
        if target.cache_dir and "content_sha256" in good.column_names:
            fresh = pc.is_valid(good.column("content_sha256"))
            if pc.any(fresh).as_py():
                write_entries(target.storage, target.cache_dir, modality, good.column("content_sha256").filter(fresh),
                              table.column("vector").filter(fresh))
    if bad.num_rows:
        errors = pa.table({
            "id": bad.column("id"), "sub": bad.column("sub").cast(pa.int16()),
            "modality": pa.array([modality] * bad.num_rows, pa.string()),
            "model": pa.array([target.model] * bad.num_rows, pa.string()),
            "stage": bad.column("error_stage"), "reason": bad.column("error_reason"),
            "row": pa.nulls(bad.num_rows, pa.int64()),
        }, schema=ERRORS_SCHEMA)
        errors_path = f"{target.errors_dir(modality)}/{name}"
        target.storage.write_parquet(errors_path, errors)
    return {"modality": modality, "path": path, "rows": good.num_rows, "sha256": sha,
            "errors_path": errors_path, "errors": bad.num_rows}


def hash_media(batch: pa.Table, s3: S3Options | None, limits: MediaLimits) -> pa.Table:
    """Add content_sha256 (null when unreadable: the embed pass will quarantine it with its reason)."""
    reader = MediaReader(s3, limits)
    hashes: list[str | None] = []
    for uri, modality in zip(batch.column("source").to_pylist(), batch.column("modality").to_pylist()):
        if modality == "text":
            hashes.append(text_sha256(uri))
            continue
        try:
            hashes.append(bytes_sha256(reader.read_bytes(uri)))
        except BadItem:
            hashes.append(None)
    return batch.append_column("content_sha256", pa.array(hashes, pa.string()))


def default_torch_threads(concurrency: int) -> int:
    """Threads per CPU replica: share this node's cores between the replicas (Ray would give each one)."""
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))
