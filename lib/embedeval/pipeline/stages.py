"""The three Ray Data stages of embedding: prepare (read, decode, preprocess), embed, write.

Batches are Arrow tables. A row that fails carries ``error_stage``/``error_reason`` to the writer, which
puts it in the partition's errors file instead of its embeddings file: Ray Data fails the whole job on
one exception in a UDF, so no per-item problem may escape as an exception here.

Row columns through the stages:
  input    id, sub, modality, source (a media URI, or the text for modalities text and prompt)
  prepared input + content_sha256, pixels (bytes; null for text), shape (list<int32>, CHW; null for
           jpeg), pixel_format (uint8: the geometric half of the model's preprocessing, normalised
           on the embed actor's device; float32: the whole transform, for models whose transform
           does not split; jpeg: the file's bytes, decoded by the embed actor on its GPU), error_stage,
           error_reason
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
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedeval.io.embeddings import embeddings_table, table_checksum
from embedeval.io.layout import CacheLayout, RunLayout
from embedeval.io.prompts import TEXT_MODALITIES
from embedeval.io.quarantine import ERRORS_SCHEMA
from embedeval.io.storage import Storage
from embedeval.pipeline.cache import bytes_sha256, text_sha256, write_entries
from embedeval.pipeline.embed_plan import autocast_for
from embedeval.pipeline.media import BadItem, MediaLimits, MediaReader, decode_image, device_decodable_jpeg

log = logging.getLogger(__name__)

WRITTEN_SCHEMA = pa.schema([
    ("modality", pa.string()), ("path", pa.string()), ("rows", pa.int64()), ("sha256", pa.string()),
    ("errors_path", pa.string()), ("errors", pa.int64()), ("cache_path", pa.string()),
])


def _error_columns(stages: list[str | None], reasons: list[str | None]) -> dict[str, pa.Array]:
    return {"error_stage": pa.array(stages, pa.string()), "error_reason": pa.array(reasons, pa.string())}


def _previous_errors(batch: pa.Table) -> tuple[list[str | None], list[str | None]]:
    if "error_stage" in batch.column_names:
        return batch.column("error_stage").to_pylist(), batch.column("error_reason").to_pylist()
    return [None] * batch.num_rows, [None] * batch.num_rows


class ImagePreparer:
    """Read, decode and apply the model's own preprocessing. One instance per Ray actor.

    Where the model's transform splits (``models.inference.split_transform``) only its geometric half
    runs here and rows carry uint8 pixels, a quarter of the float32 bytes; with ``device_jpeg`` the
    complete RGB/greyscale JPEGs within the limits are not decoded here at all but shipped as bytes.
    """

    def __init__(self, spec: str, storage: Storage | None, limits: MediaLimits, cache_dir: str | None = None,
                 *, uint8: bool = True, device_jpeg: bool = False, model: Any | None = None) -> None:
        """``model``: a replica of ``spec`` already loaded in this process; its preprocessing (split or
        whole, the same the registry would load) is reused instead of loading the model again."""
        from embedeval.pipeline.model_facts import load_preprocessor, load_split

        if model is not None:
            self.split = getattr(model, "split_preprocess", None) if uint8 else None
            self.preprocess = None if self.split else model.preprocess_image
        else:
            self.split = load_split(spec, storage=storage, cache_dir=cache_dir) if uint8 else None
            self.preprocess = None if self.split else load_preprocessor(spec, storage=storage, cache_dir=cache_dir)
        self.device_jpeg = device_jpeg and self.split is not None
        self.reader = MediaReader(storage, limits)

    def _prepare(self, data: bytes) -> tuple[bytes, list[int] | None, str]:
        max_pixels = self.reader.limits.max_pixels
        if self.device_jpeg and device_decodable_jpeg(data, max_pixels):
            return data, None, "jpeg"
        if self.split is not None:
            from embedeval.models.inference import uint8_chw

            array = uint8_chw(self.split, decode_image(data, max_pixels))
            return array.tobytes(), list(array.shape), "uint8"
        array = np.ascontiguousarray(self.preprocess(decode_image(data, max_pixels)), dtype=np.float32)
        return array.tobytes(), list(array.shape), "float32"

    def __call__(self, batch: pa.Table) -> pa.Table:
        stages, reasons = _previous_errors(batch)
        pixels: list[bytes | None] = []
        shapes: list[list[int] | None] = []
        formats: list[str | None] = []
        hashes: list[str | None] = []
        for i, (source, modality) in enumerate(zip(batch.column("source").to_pylist(),
                                                   batch.column("modality").to_pylist())):
            payload, shape, fmt, digest = None, None, None, None
            if modality in TEXT_MODALITIES:
                digest = text_sha256(source)
            elif stages[i] is None:
                try:
                    data = self.reader.read_bytes(source)
                    digest = bytes_sha256(data)
                    payload, shape, fmt = self._prepare(data)
                except BadItem as bad:
                    stages[i], reasons[i] = bad.stage, bad.reason
                except Exception as exc:  # noqa: BLE001 - any other per-item failure is quarantined, never raised
                    stages[i], reasons[i] = "decode", f"preprocessing failed: {type(exc).__name__}: {str(exc)[:200]}"
            if stages[i] is not None:
                payload, shape, fmt = None, None, None
            hashes.append(digest)
            pixels.append(payload)
            shapes.append(shape)
            formats.append(fmt)
        return pa.table({
            "id": batch.column("id"), "sub": batch.column("sub"), "modality": batch.column("modality"),
            "source": batch.column("source"), "content_sha256": pa.array(hashes, pa.string()),
            "pixels": pa.array(pixels, pa.binary()), "shape": pa.array(shapes, pa.list_(pa.int32())),
            "pixel_format": pa.array(formats, pa.string()),
            **_error_columns(stages, reasons),
        })


class Embedder:
    """One model replica (one per Ray actor). Embeds the good rows of a batch; isolates rows that fail.

    uint8 rows are normalised on the replica's device; jpeg rows are decoded there first
    (``pipeline.device_decode``: the device's decoder, Pillow per image where it fails, quarantined
    with the CPU path's reasons). ``precision`` is a resolved ``embed.precision`` (autocast on CUDA).
    """

    def __init__(self, spec: str, storage: Storage | None, device: str,
                 torch_threads: int | None, cache_dir: str | None = None, *, precision: str = "fp32",
                 limits: MediaLimits = MediaLimits(), counter: Any | None = None, counter_key: str = "") -> None:
        """``counter``: a :class:`~embedeval.pipeline.counter.RowCounter` actor told each batch's rows per
        modality under ``counter_key`` (for the driver's progress bar; fire and forget)."""
        from embedeval.models.registry import load_model

        self.model = load_model(spec, device=device, storage=storage, cache_dir=cache_dir)
        if torch_threads and "torch" in sys.modules:  # models without torch (builtin) do not pay its import
            sys.modules["torch"].set_num_threads(torch_threads)
        self.dim = self.model.info.dim
        self.device = device
        self.precision = precision
        self.limits = limits
        self.counter, self.counter_key = counter, counter_key

    def _decode_jpegs(self, batch: pa.Table, stages: list[str | None], reasons: list[str | None]) -> dict:
        """Row -> uint8 CHW tensor on the device for the good jpeg rows; failures marked in stages/reasons."""
        if "pixel_format" not in batch.column_names:
            return {}
        formats = batch.column("pixel_format").to_pylist()
        rows = [i for i, f in enumerate(formats) if f == "jpeg" and stages[i] is None]
        if not rows:
            return {}
        from embedeval.pipeline.device_decode import decode_jpegs

        datas = batch.column("pixels").take(pa.array(rows, pa.int64())).to_pylist()
        ready = {}
        for i, out in zip(rows, decode_jpegs(datas, self.model.split_preprocess, self.device, self.limits.max_pixels)):
            if isinstance(out, BadItem):
                stages[i], reasons[i] = out.stage, out.reason
            else:
                ready[i] = out
        return ready

    def _embed(self, batch: pa.Table, rows: list[int], text: bool, ready: dict) -> np.ndarray:
        if text:
            texts = batch.column("source").take(pa.array(rows, pa.int64())).to_pylist()
            return np.asarray(self.model.embed_texts(texts), dtype=np.float32)
        take = pa.array(rows, pa.int64())
        pix = batch.column("pixels").take(take).to_pylist()
        shapes = batch.column("shape").take(take).to_pylist()
        formats = (batch.column("pixel_format").take(take).to_pylist() if "pixel_format" in batch.column_names
                   else ["float32"] * len(rows))
        if all(f == "float32" for f in formats):
            stack = np.stack([np.frombuffer(p, dtype=np.float32).reshape(s) for p, s in zip(pix, shapes)])
            return np.asarray(self.model.embed_images(stack), dtype=np.float32)
        if "jpeg" not in formats:  # one host-to-device copy of the stacked batch, in run_batch
            stack = np.stack([np.frombuffer(p, dtype=np.uint8).reshape(s) for p, s in zip(pix, shapes)])
            return np.asarray(self.model.embed_uint8_images(stack), dtype=np.float32)
        import torch

        from embedeval.pipeline.device_decode import pixels_from_row

        tensors = [ready[i] if f == "jpeg" else pixels_from_row(p, s).to(self.device)
                   for i, p, s, f in zip(rows, pix, shapes, formats)]
        return np.asarray(self.model.embed_uint8_images(torch.stack(tensors)), dtype=np.float32)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        stages, reasons = _previous_errors(batch)
        is_text = [m in TEXT_MODALITIES for m in batch.column("modality").to_pylist()]
        vectors = np.zeros((n, self.dim), np.float32)
        ready = self._decode_jpegs(batch, stages, reasons)
        for text in (False, True):
            good = [i for i in range(n) if stages[i] is None and is_text[i] == text]
            if not good:
                continue
            try:
                with autocast_for(self.precision, self.device):
                    vectors[good] = self._embed(batch, good, text, ready)
            except Exception as exc:  # noqa: BLE001 - find the row(s) at fault, keep the rest
                log.warning("batch of %d failed (%s); embedding its rows one by one", len(good), exc)
                for i in good:
                    try:
                        with autocast_for(self.precision, self.device):
                            vectors[i] = self._embed(batch, [i], text, ready)[0]
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


# The model replicas this worker process built for `prepare_and_embed`, most recently used last: at most
# `keep` of them (embed.models_at_once), so consecutive batches of a model reuse its replica and models
# embedded at the same time do not rebuild each other's.
_task_replicas: "OrderedDict[tuple, Embedder]" = OrderedDict()


def import_families(specs: list[str]) -> None:
    """Import what embedding ``specs`` needs (each family's module and the libraries it declares in
    :attr:`~embedeval.models.family.ModelFamily.imports`), so the first batch a process embeds does not wait
    for them. Errors are left for the real call to report. Call it from one thread only: two threads
    importing torchvision and open_clip at once can deadlock on Python's module locks."""
    import importlib

    from embedeval.pipeline.model_facts import model_family

    for spec in specs:
        try:
            for module in model_family(spec).imports:
                importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the embedding call that follows says what is wrong
            log.debug("warm-up import for %s failed", spec, exc_info=True)


def warm_task_workers(specs: list[str]) -> list[Any]:
    """With ``embed.replicas: tasks``, the pooled worker processes embed every batch: import the models'
    families in each of them (one task per CPU) while the driver builds the prompts and describes the
    models. Returns the tasks' refs; nothing waits on them. Ray reuses those processes for the embedding
    tasks."""
    import ray

    slots = max(1, int(float(ray.cluster_resources().get("CPU", 1.0))))
    warm = ray.remote(num_cpus=1, max_retries=0)(import_families)
    return [warm.remote(list(specs)) for _ in range(slots)]


def prepare_and_embed(batch: pa.Table, spec: str, storage: Storage | None, limits: MediaLimits, device: str,
                      torch_threads: int | None, *, precision: str = "fp32", device_jpeg: bool = False,
                      counter: Any | None = None, counter_key: str = "", keep: int = 1) -> pa.Table:
    """Prepare and embed one batch as a plain Ray task (``embed.replicas: tasks``): the cluster's pooled
    worker processes serve every model in turn, so no actor process starts (and imports torch) per model.

    The same rows out as :class:`ImagePreparer` then :class:`Embedder` with the same arguments: the
    preparer reuses the cached replica's own preprocessing (its uint8 split where it has one, the device
    decoding JPEGs with ``device_jpeg``), and ``precision`` is the plan's, as on the actor path. The process
    keeps its ``keep`` most recently used replicas."""
    key = (spec, device, torch_threads)
    embedder = _task_replicas.pop(key, None)
    if embedder is None:
        while len(_task_replicas) >= max(1, keep):
            _task_replicas.popitem(last=False)   # free the least recently used before building the next
        embedder = Embedder(spec, storage, device, torch_threads)
    _task_replicas[key] = embedder
    # this call's, not those of the call that built the replica
    embedder.precision, embedder.limits = precision, limits
    embedder.counter, embedder.counter_key = counter, counter_key
    preparer = ImagePreparer(spec, storage, limits, device_jpeg=device_jpeg, model=embedder.model)
    return embedder(preparer(batch))


@dataclass(frozen=True)
class PartitionTarget:
    """Where one model's partitions go (one folder per modality), and what to stamp on the files."""

    storage: Storage
    run_id: str
    model: str
    metadata: dict[str, str]
    cache: CacheLayout | None = None     # new vectors are added to this cache key too

    def partition_dir(self, modality: str) -> str:
        return RunLayout(self.run_id).partition(self.model, modality)

    def errors_dir(self, modality: str) -> str:
        return RunLayout(self.run_id).partition_errors(self.model, modality)


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
    path = errors_path = sha = cache_path = ""
    if good.num_rows:
        vectors = good.column("vector").combine_chunks()
        dim = vectors.type.list_size
        matrix = np.asarray(vectors.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)
        table = embeddings_table(good.column("id"), good.column("sub").to_numpy(), matrix)
        path = f"{target.partition_dir(modality)}/{name}"
        target.storage.write_parquet(path, table, metadata={**target.metadata, "embedeval.modality": modality})
        sha = table_checksum(table)
        if target.cache is not None and "content_sha256" in good.column_names:
            fresh = pc.is_valid(good.column("content_sha256"))
            if pc.any(fresh).as_py():
                cache_path = write_entries(target.storage, target.cache, modality,
                                           good.column("content_sha256").filter(fresh), table.column("vector").filter(fresh))
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
            "errors_path": errors_path, "errors": bad.num_rows, "cache_path": cache_path}


def hash_media(batch: pa.Table, storage: Storage | None, limits: MediaLimits) -> pa.Table:
    """Add content_sha256 (null when unreadable: the embed pass will quarantine it with its reason)."""
    reader = MediaReader(storage, limits)
    hashes: list[str | None] = []
    for uri, modality in zip(batch.column("source").to_pylist(), batch.column("modality").to_pylist()):
        if modality in TEXT_MODALITIES:
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
