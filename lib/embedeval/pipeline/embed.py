"""The embed job: manifest -> committed embedding partitions, one per model and modality.

For each partition: if its ``_COMMITTED.json`` exists (and was made from the same inputs) it is kept;
otherwise whatever a killed run left there is deleted and the partition is rebuilt by a Ray Data
pipeline (prepare -> embed in an actor pool -> write), then checked (rows + quarantined = inputs, no
duplicate (id, sub)) and only then committed. So a rerun with the same run id resumes, and readers never
see half a partition.

A modality's inputs are the manifest's media paths or captions; for a ``precomputed:`` model and a
modality the manifest has no column for (a vectors-only manifest), the vectors file's own (id, sub) rows
of manifest items (:func:`vector_only_inputs`).

The ``prompt`` partition (zero-shot prompt vectors, :mod:`embedeval.io.prompts`): a model with a text tower
embeds the run's prompt strings (:func:`embedeval.pipeline.prompts.run_prompt_texts`: labels x templates and
attribute axes from ``score.options``) in the same pipeline as its other modalities; a ``precomputed:``
model imports the ``modality = 'prompt'`` rows of its file, all of them (their ids are labels and axis ids,
not manifest ids). Unlike the manifest partitions, a committed ``prompt`` partition whose inputs changed
(other templates, axes or labels) is rebuilt rather than refused: it is derived from score options, small,
and its unchanged strings come from the embedding cache.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedeval.config import ModelEntry, RunConfig, redacted_yaml
from embedeval.errors import EmbedevalError
from embedeval.io.embeddings import (
    COMMIT_MARKER,
    CommitRecord,
    PartFile,
    partition_dir,
    read_commit_marker,
    write_commit_marker,
)
from embedeval.io.layout import RunLayout
from embedeval.io.manifest import ManifestError, ManifestReadResult, load_manifest, load_tag_categories
from embedeval.io.prompts import PROMPT_MODALITY
from embedeval.io.storage import Storage, StorageError
from embedeval.models.base import ModelInfo
from embedeval.pipeline.cache import EmbeddingCache, cache_kind, text_sha256
from embedeval.pipeline.embed_plan import EmbedPlan, plan_for_model, replicas_on_this_cluster
from embedeval.pipeline.media import MediaLimits
from embedeval.pipeline.model_facts import describe_model, loaded_model, model_embeds, model_modalities
from embedeval.pipeline.progress import Progress
from embedeval.pipeline.prompts import precomputed_prompt_inputs, run_prompt_texts
from embedeval.pipeline.ray_console import filtered_stderr
from embedeval.pipeline.ray_runtime import console_verbose, ensure_ray
from embedeval.pipeline.stages import (
    WRITTEN_SCHEMA,
    Embedder,
    ImagePreparer,
    PartitionTarget,
    default_torch_threads,
    hash_media,
    prepare_and_embed,
    warm_task_workers,
    write_partition_files,
)

log = logging.getLogger(__name__)


class EmbedError(EmbedevalError, RuntimeError):
    """A partition could not be built or its counts do not add up; the message names it."""


@dataclass
class PartitionSummary:
    model: str
    modality: str
    inputs: int          # rows offered to the pipeline (manifest rows with this modality, after manifest checks)
    embedded: int
    quarantined: int     # quarantined by the pipeline (read/decode/embed)
    skipped: bool        # already committed by an earlier attempt of this run
    seconds: float
    weights_random: bool
    from_cache: int = 0  # of the embedded rows, how many came from the embedding cache
    cache_used: bool = False  # built with the embedding cache on (then the summary line says from_cache)


@dataclass
class EmbedSummary:
    run_id: str
    root: str
    manifest_rows: int
    manifest_accepted: int
    manifest_quarantined: int
    partitions: list[PartitionSummary] = field(default_factory=list)
    manifest_quarantined_by_modality: dict[str, int] = field(default_factory=dict)

    @property
    def embeddings_uri(self) -> str:
        """Where the run's embeddings are (``root`` is a storage root: an absolute path or s3://...)."""
        return posixpath.join(self.root, RunLayout(self.run_id).embeddings)

    def lines(self) -> list[str]:
        out = [f"manifest: {self.manifest_rows} rows read = {self.manifest_accepted} accepted + "
               f"{self.manifest_quarantined} quarantined"]
        for p in self.partitions:
            mq = self.manifest_quarantined_by_modality.get(p.modality, 0)
            flag = "  [RANDOM WEIGHTS]" if p.weights_random else ""
            state = " (already committed)" if p.skipped else f" in {p.seconds:.1f}s"
            if p.cache_used:
                state += f", {p.from_cache} from cache"
            out.append(f"  {p.model} / {p.modality}: {p.inputs + mq} read = {p.embedded} embedded + "
                       f"{p.quarantined + mq} quarantined{state}{flag}")
        return out


def partition_inputs(manifest: ManifestReadResult, modality: str) -> pa.Table:
    """(id, sub, source) rows for one modality: a media URI, or one row per non-empty caption."""
    table = manifest.table
    if modality in ("image", "sketch"):
        if modality not in table.column_names:
            return pa.table({"id": pa.array([], pa.string()), "sub": pa.array([], pa.int16()),
                             "source": pa.array([], pa.string())})
        mask = table.column(modality).is_valid()
        sub = table.filter(mask)
        return pa.table({"id": sub.column("id"), "sub": pa.array([0] * sub.num_rows, pa.int16()),
                         "source": sub.column(modality)})
    ids: list[str] = []
    subs: list[int] = []
    texts: list[str] = []
    if "captions" in table.column_names:
        for rid, caps in zip(table.column("id").to_pylist(), table.column("captions").to_pylist()):
            for k, cap in enumerate(caps or []):
                if cap and cap.strip():
                    ids.append(rid)
                    subs.append(k)
                    texts.append(cap)
    return pa.table({"id": pa.array(ids, pa.string()), "sub": pa.array(subs, pa.int16()),
                     "source": pa.array(texts, pa.string())})


def vector_only_inputs(manifest: ManifestReadResult, keys: pa.Table) -> pa.Table:
    """(id, sub, source=null) rows for a modality the manifest has no column for: the precomputed keys.

    ``keys`` are a precomputed model's distinct (id, sub) of that modality; those whose id is a manifest
    item are the inputs (their vectors are then imported or quarantined with the reason), the rest are
    ignored. Manifest items without a key simply have no row in this modality, like a null ``image``.
    """
    known = pc.is_in(keys.column("id"), value_set=manifest.table.column("id").combine_chunks())
    mine = keys.filter(known)
    return pa.table({"id": mine.column("id").cast(pa.string()), "sub": mine.column("sub").cast(pa.int16()),
                     "source": pa.nulls(mine.num_rows, pa.string())})


def inputs_fingerprint(inputs: pa.Table, spec: str) -> str:
    h = hashlib.sha256(spec.encode())
    for rid, sub, src in zip(inputs.column("id").to_pylist(), inputs.column("sub").to_pylist(),
                             inputs.column("source").to_pylist()):
        h.update(f"{rid}\x1f{sub}\x1f{src}\x1e".encode())
    return h.hexdigest()


def model_setup(config: RunConfig, entry: ModelEntry, storage: Storage) -> tuple[EmbedPlan, ModelInfo]:
    """The model's embedding plan (device, precision, decoding) and its description, stamped with the plan."""
    plan = plan_for_model(config.embed, entry.spec, storage)
    return plan, plan.stamp(describe_model(entry.spec, storage))  # precision / GPU decode: other vectors


def embed_model(config: RunConfig, storage: Storage, run_id: str, entry: ModelEntry,
                inputs_by_modality: dict[str, pa.Table], progress: Progress,
                counters: RunCounter | None = None,
                setup: tuple[EmbedPlan, ModelInfo] | None = None) -> list[PartitionSummary]:
    """Build (or keep) a model's committed partitions, one Ray Data pipeline for all that need building.

    See the module docstring for the resume rules. ``counters``: the run's progress counter (one actor
    shared by every model; made here when None). ``setup``: the :func:`model_setup` already made (made
    here when None).
    """
    model = entry.slug()
    summaries: dict[str, PartitionSummary] = {}
    todo: dict[str, pa.Table] = {}
    fingerprints: dict[str, str] = {}
    for modality, inputs in inputs_by_modality.items():
        fingerprints[modality] = fingerprint = inputs_fingerprint(inputs, entry.spec)
        existing = read_commit_marker(storage, run_id, model, modality)
        if existing is None:
            todo[modality] = inputs
            continue
        if existing.inputs_sha256 and existing.inputs_sha256 != fingerprint and modality == PROMPT_MODALITY:
            progress.echo(f"  {model}: the prompts changed (score.options templates / axes, or the labels); "
                          "re-embedding its prompt partition")
            # the marker goes first, so no reader sees it listing files that are being deleted
            storage.delete_file(f"{partition_dir(run_id, model, modality)}/{COMMIT_MARKER}")
            todo[modality] = inputs
            continue
        if existing.inputs_sha256 and existing.inputs_sha256 != fingerprint:
            raise EmbedError(
                f"run {run_id!r} already committed {model}/{modality} from different inputs (the manifest or the "
                f"model spec changed). Use a new run_id, or delete {storage.uri(partition_dir(run_id, model, modality))}"
                " to re-embed it.")
        summaries[modality] = PartitionSummary(
            model, modality, inputs.num_rows, existing.rows, existing.quarantined, True, 0.0,
            existing.model_info.get("embedeval.model.weights_random") == "true")
    if not todo:
        return [summaries[m] for m in inputs_by_modality]

    started = time.time()
    plan, info = setup or model_setup(config, entry, storage)
    metadata = {**info.as_metadata(), "embedeval.run_id": run_id, "embedeval.model": model}
    cache = None
    embeds = model_embeds(entry.spec)
    if config.embed.use_cache and embeds:
        cache = EmbeddingCache(storage, info)
        cache.describe()
    target = PartitionTarget(storage, run_id, model, metadata, cache.layout if cache else None)
    for modality in todo:
        # A partition without a marker does not exist for readers: clear whatever a killed attempt left.
        storage.delete_dir(target.partition_dir(modality))
        storage.delete_dir(target.errors_dir(modality))
    inputs = pa.concat_tables([t.append_column("modality", pa.array([m] * t.num_rows, pa.string()))
                               for m, t in todo.items()])
    written: list[dict] = []
    from_cache: dict[str, int] = {}
    cache_hit_files: dict[str, set[str]] = {}
    if cache is not None and inputs.num_rows:
        inputs, hits, cache_hit_files = split_cache_hits(config, cache, inputs)
        for start in range(0, hits.num_rows, config.embed.rows_per_file):
            written.extend(write_partition_files(hits.slice(start, config.embed.rows_per_file), target).to_pylist())
        for modality in hits.column("modality").to_pylist():
            from_cache[modality] = from_cache.get(modality, 0) + 1
        if hits.num_rows:
            progress.echo(f"  {model}: {hits.num_rows} vectors from the cache, {inputs.num_rows} to embed")
    if not embeds:
        written = import_precomputed(config, entry, inputs, target)
    elif inputs.num_rows:
        own = counters is None
        counters = counters or RunCounter()
        try:
            written.extend(_run_pipeline(config, entry, inputs, target, plan, progress, list(todo), counters))
        finally:
            if own:
                counters.stop()
    seconds = time.time() - started
    for modality, mod_inputs in todo.items():
        mine = [r for r in written if r["modality"] == modality]
        files = [PartFile(r["path"], r["rows"], r["sha256"]) for r in mine if r["path"]]
        rows = sum(f.rows for f in files)
        quarantined = sum(r["errors"] for r in mine)
        if rows + quarantined != mod_inputs.num_rows:
            raise EmbedError(f"{model}/{modality}: {mod_inputs.num_rows} inputs but {rows} embedded + {quarantined} "
                             "quarantined; not committing (rerun with the same run_id to retry)")
        _check_no_duplicates(storage, files, target.partition_dir(modality))
        record = CommitRecord(run_id=run_id, model=model, modality=modality, dim=info.dim, files=files, rows=rows,
                              quarantined=quarantined, model_info={**metadata, "embedeval.modality": modality},
                              inputs_sha256=fingerprints[modality],
                              errors_files=[r["errors_path"] for r in mine if r["errors_path"]],
                              cache_files=sorted(cache_hit_files.get(modality, set())
                                                 | {r["cache_path"] for r in mine if r.get("cache_path")})
                              if cache is not None else [])
        write_commit_marker(storage, record)
        summaries[modality] = PartitionSummary(model, modality, mod_inputs.num_rows, rows, quarantined, False,
                                               seconds, info.weights_random, from_cache.get(modality, 0),
                                               cache is not None)
    return [summaries[m] for m in inputs_by_modality]


class RunCounter:
    """The embed run's :class:`~embedeval.pipeline.counter.RowCounter` (the driver's, shared by its runs),
    looked up on first use; this run counts under keys of its own (:meth:`key`)."""

    def __init__(self) -> None:
        self.actor: object | None = None
        self.prefix = f"{uuid.uuid4().hex[:12]}/"

    def get(self) -> object:
        from embedeval.pipeline.counter import start_row_counter

        if self.actor is None:
            self.actor = start_row_counter()
        return self.actor

    def key(self, model: str) -> str:
        """The counter key of ``model``'s pipeline in this run."""
        return f"{self.prefix}{model}"

    def stop(self) -> None:
        from embedeval.pipeline.counter import stop_row_counter

        if self.actor is not None:
            stop_row_counter(self.actor, self.prefix)
            self.actor = None


def _run_pipeline(config: RunConfig, entry: ModelEntry, inputs: pa.Table, target: PartitionTarget, plan: EmbedPlan,
                  progress: Progress, modalities: list[str], counters: RunCounter) -> list[dict]:
    """Embed and write ``inputs`` with one Ray Data pipeline; one progress bar (items per modality)."""
    from embedeval.pipeline.counter import poller

    model = entry.slug()
    per_modality = inputs.column("modality").to_pylist()
    parts = {m: per_modality.count(m) for m in modalities if m in per_modality}
    counter, counter_key = counters.get(), counters.key(model)
    ds = build_dataset(config, entry, inputs, target.storage, plan, counter=counter, counter_key=counter_key)
    if config.embed.replicas == "tasks":
        # The same resources and whole blocks: Ray Data fuses the write into the embedding task. As a
        # separate 0.25-CPU operator, its resource reservation left a 2-CPU machine one embedding task at
        # a time. Files then hold at most a block (<= 1,024 rows).
        ds = ds.map_batches(write_partition_files, batch_size=None, batch_format="pyarrow",
                            fn_kwargs={"target": target}, num_cpus=1)
    else:
        ds = ds.map_batches(write_partition_files, batch_size=config.embed.rows_per_file, batch_format="pyarrow",
                            fn_kwargs={"target": target}, num_cpus=0.25)
    task = progress.task(f"embed {model}", inputs.num_rows, parts=parts, poll=poller(counter, counter_key))
    written: list[dict] = []
    written_by_modality = {m: 0 for m in parts}
    ok = False
    try:
        with filtered_stderr(enabled=not console_verbose()):
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in batch.cast(WRITTEN_SCHEMA).to_pylist():
                    written.append(row)
                    written_by_modality[row["modality"]] += row["rows"] + row["errors"]
        task.update(sum(written_by_modality.values()), written_by_modality)
        ok = True
    except Exception as exc:
        # A write that failed after its retries ends the Ray job; say which URI, not Ray's stack of wrappers.
        cause = _storage_error_in(exc)
        if cause is None:
            raise
        raise StorageError(f"embedding {model} ({', '.join(modalities)}) stopped, nothing of it committed: {cause}. "
                           "Rerun with the same run_id to resume once the storage answers.") from exc
    finally:
        task.finish(stopped=not ok)
    return written


def split_cache_hits(config: RunConfig, cache: EmbeddingCache,
                     inputs: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, set[str]]]:
    """(rows still to embed, rows whose vector the cache holds in the embedded-rows layout, and per modality
    the cache files those vectors came from)."""
    kinds = [cache_kind(m) for m in inputs.column("modality").to_pylist()]
    if cache.has_entries("image") and any(k == "image" for k in kinds):
        inputs = hash_inputs(config, inputs, cache.storage)
    else:
        hashes = [text_sha256(src) if cache_kind(m) == "text" else None
                  for src, m in zip(inputs.column("source").to_pylist(), inputs.column("modality").to_pylist())]
        inputs = inputs.append_column("content_sha256", pa.array(hashes, pa.string()))
    hashes = inputs.column("content_sha256").to_pylist()
    hit_rows: list[int] = []
    hit_vectors: list[pa.Array] = []
    hit_files: dict[str, set[str]] = {}
    modalities = np.asarray(inputs.column("modality").to_pylist(), dtype=object)
    for kind in ("image", "text"):
        rows = [i for i, k in enumerate(kinds) if k == kind and hashes[i] is not None]
        if not rows or not cache.has_entries(kind):
            continue
        lookup = cache.find(kind, [hashes[i] for i in rows])
        found = lookup.index >= 0
        hit_rows.extend(np.asarray(rows)[found].tolist())
        hit_vectors.append(lookup.vectors.take(pa.array(lookup.index[found])))
        for modality in set(modalities[rows].tolist()):
            files = lookup.files_hit(found & (modalities[rows] == modality))
            if files:
                hit_files.setdefault(modality, set()).update(files)
    hit_mask = np.zeros(inputs.num_rows, bool)
    hit_mask[hit_rows] = True
    if not hit_rows:
        return inputs.drop_columns(["content_sha256"]), inputs.slice(0, 0), hit_files
    hits = inputs.take(pa.array(hit_rows, pa.int64()))
    hits = pa.table({"id": hits.column("id"), "sub": hits.column("sub"), "modality": hits.column("modality"),
                     "content_sha256": pa.nulls(hits.num_rows, pa.string()),  # already cached: not re-added
                     "vector": pa.concat_arrays(hit_vectors),
                     "error_stage": pa.nulls(hits.num_rows, pa.string()),
                     "error_reason": pa.nulls(hits.num_rows, pa.string())})
    misses = inputs.filter(pa.array(~hit_mask)).drop_columns(["content_sha256"])
    return misses, hits, hit_files


def spread_blocks(inputs: pa.Table, batch_size: int, max_rows: int, *, cpus: float | None = None) -> list[pa.Table]:
    """Slice ``inputs`` into the blocks Ray Data hands to its tasks: a map task takes a whole block, so a
    small input in one big block would run on one core however many the cluster has.

    Blocks hold at most ``max_rows`` rows, and fewer where that leaves the cluster's CPUs idle: about four
    blocks per CPU, each a whole number of ``batch_size`` batches (so no batch is split across tasks). A
    catalogue-sized input keeps ``max_rows`` blocks. Holds only slices (views) of ``inputs``.
    """
    if cpus is None:
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1.0))
    wanted = max(1, int(4 * cpus))
    per_block = -(-inputs.num_rows // wanted)
    per_block = -(-per_block // batch_size) * batch_size   # whole batches
    rows = max(batch_size, min(max_rows, per_block))
    return [inputs.slice(i, rows) for i in range(0, inputs.num_rows, rows)] or [inputs]


def hash_inputs(config: RunConfig, inputs: pa.Table, storage: Storage) -> pa.Table:
    """content_sha256 for every row: media files are read and hashed by Ray tasks (no decoding)."""
    import ray

    limits = MediaLimits(config.embed.max_image_pixels, config.embed.max_image_bytes)
    blocks = spread_blocks(inputs, config.embed.batch_size, max(config.embed.batch_size, 256))
    ds = ray.data.from_arrow(blocks).map_batches(hash_media, batch_format="pyarrow", batch_size=None,
                                                 fn_kwargs={"storage": storage, "limits": limits})
    hashed = pa.concat_tables(list(ds.iter_batches(batch_size=None, batch_format="pyarrow")))
    # Ray Data may reorder blocks; restore the input order (id, sub, modality are unique together).
    order = {key: i for i, key in enumerate(zip(inputs.column("id").to_pylist(), inputs.column("sub").to_pylist(),
                                                inputs.column("modality").to_pylist()))}
    positions = [order[key] for key in zip(hashed.column("id").to_pylist(), hashed.column("sub").to_pylist(),
                                           hashed.column("modality").to_pylist())]
    return hashed.take(pa.array(np.argsort(positions), pa.int64()))


def import_precomputed(config: RunConfig, entry: ModelEntry, inputs: pa.Table,
                       target: PartitionTarget) -> list[dict]:
    """Vectors computed elsewhere: validated and written like embedded ones (same files, same quarantine).

    Manifest rows without a usable vector are quarantined (stage ``import``) with the reason; vectors for
    ids that are not in the manifest are ignored and counted in the log.
    """
    model = loaded_model(entry.spec, target.storage)
    results: list[dict] = []
    for modality in sorted(set(inputs.column("modality").to_pylist())):
        wanted = inputs.filter(pc.equal(inputs.column("modality"), modality))
        rows = model.load_vectors(modality)
        vectors = {(i, int(s)): k for k, (i, s) in enumerate(zip(rows.good.column("id").to_pylist(),
                                                                   rows.good.column("sub").to_pylist()))}
        refused = {(i, int(s)): r for i, s, r in zip(rows.bad.column("id").to_pylist(),
                                                     rows.bad.column("sub").to_pylist(),
                                                     rows.bad.column("reason").to_pylist())}
        take: list[int] = []
        stages: list[str | None] = []
        reasons: list[str | None] = []
        for rid, sub in zip(wanted.column("id").to_pylist(), wanted.column("sub").to_pylist()):
            key = (rid, int(sub))
            if key in vectors:
                take.append(vectors[key])
                stages.append(None)
                reasons.append(None)
            else:
                take.append(-1)
                stages.append("import")
                reasons.append(refused.get(key, "no vector for this item in the precomputed file"))
        known = {(i, int(s)) for i, s in zip(wanted.column("id").to_pylist(), wanted.column("sub").to_pylist())}
        ignored = sum(1 for key in vectors if key not in known)
        if ignored:
            log.warning("%s/%s: ignored %d precomputed vectors whose ids are not in the manifest",
                        target.model, modality, ignored)
        vec_col = rows.good.column("vector").combine_chunks()
        picked = vec_col.take(pa.array([t if t >= 0 else None for t in take], pa.int64()))
        batch = pa.table({"id": wanted.column("id"), "sub": wanted.column("sub"), "modality": wanted.column("modality"),
                          "vector": picked, "error_stage": pa.array(stages, pa.string()),
                          "error_reason": pa.array(reasons, pa.string())})
        for start in range(0, batch.num_rows, config.embed.rows_per_file):
            results.extend(write_partition_files(batch.slice(start, config.embed.rows_per_file), target).to_pylist())
    return results


def _storage_error_in(exc: BaseException) -> StorageError | None:
    """The StorageError behind an exception that Ray raised for a failed task, or None.

    Ray does not carry a task's exception chain to the driver, only its formatted traceback, so the
    StorageError's message (one line, naming the URI) is taken from there.
    """
    if isinstance(exc, StorageError):
        return exc
    found = re.findall(r"embedeval\.io\.storage\.StorageError: (.+)", str(exc))
    return StorageError(found[-1].strip()) if found else None


def _check_no_duplicates(storage: Storage, files: list[PartFile], where: str) -> None:
    if not files:
        return
    keys = storage.read_parquet([f.path for f in files], columns=["id", "sub"])
    if keys.num_rows != len(set(zip(keys.column("id").to_pylist(), keys.column("sub").to_pylist()))):
        raise EmbedError(f"{storage.uri(where)}: duplicate (id, sub) rows; not committing")


def build_dataset(config: RunConfig, entry: ModelEntry, inputs: pa.Table, storage: Storage,  # noqa: ANN201
                  plan: EmbedPlan | None = None, *, counter: object | None = None, counter_key: str = ""):
    """The Ray Data pipeline up to embedded rows (prepare -> embed) for one model, all its modalities.

    ``plan`` (default: :func:`plan_for_model`) sets the device, precision, JPEG decoding and decoders, on
    both paths: ``embed.replicas: actors`` (a prepare actor pool, then an embed actor pool) and ``tasks``
    (:func:`~embedeval.pipeline.stages.prepare_and_embed`, the same two stages in one pooled task);
    ``config.embed.replicas`` is already resolved from ``auto`` (:func:`embed_run` decides it once per run).
    ``counter``: a :class:`~embedeval.pipeline.counter.RowCounter` actor the embedders report rows to,
    under ``counter_key``.
    """
    import ray
    from ray.data import ActorPoolStrategy

    settings = config.embed
    plan = plan or plan_for_model(settings, entry.spec, storage)
    ds = ray.data.from_arrow(spread_blocks(inputs, entry.batch_size or settings.batch_size,
                                           max(settings.batch_size, min(settings.rows_per_file, 1024))))
    device = plan.device
    batch_size = entry.batch_size or settings.batch_size
    limits = MediaLimits(settings.max_image_pixels, settings.max_image_bytes)
    threads = settings.torch_threads or (None if device == "cuda" else default_torch_threads(settings.concurrency))
    embed_kwargs = {"spec": entry.spec, "storage": storage, "device": device, "torch_threads": threads,
                    "precision": plan.precision, "limits": limits, "counter": counter, "counter_key": counter_key}
    if settings.replicas == "tasks":
        return ds.map_batches(prepare_and_embed, batch_size=batch_size, batch_format="pyarrow",
                              fn_kwargs={**embed_kwargs, "torch_threads": settings.torch_threads,
                                         "device_jpeg": plan.gpu_jpeg_decode, "keep": settings.models_at_once},
                              num_gpus=settings.gpus_per_actor if device == "cuda" else 0, num_cpus=1)
    ds = ds.map_batches(ImagePreparer, batch_size=batch_size, batch_format="pyarrow",
                        fn_constructor_kwargs={"spec": entry.spec, "storage": storage, "limits": limits,
                                               "device_jpeg": plan.gpu_jpeg_decode},
                        compute=ActorPoolStrategy(size=plan.decode_workers), num_cpus=1)
    ds = ds.map_batches(
        Embedder, batch_size=batch_size, batch_format="pyarrow",
        fn_constructor_kwargs=embed_kwargs,
        compute=ActorPoolStrategy(size=settings.concurrency),
        num_gpus=settings.gpus_per_actor if device == "cuda" else 0,
        num_cpus=0.5 if device == "cpu" else 1,
    )
    return ds


def embed_models(config: RunConfig, storage: Storage, run_id: str, jobs: list[tuple[ModelEntry, dict[str, pa.Table]]],
                 progress: Progress, counters: RunCounter) -> list[list[PartitionSummary]]:
    """:func:`embed_model` for every (model, inputs) of ``jobs``, their summaries in the same order.

    One model after another, or ``embed.models_at_once`` of them at a time (``replicas: tasks``): each
    model's pipeline then runs in a driver thread, and their fixed costs (pipeline start, the workers'
    model builds and imports) overlap instead of adding up. Every model runs to its end; the first
    error (in config order) is raised after all have finished, so a failing model stops no other's commit.
    """
    at_once = min(config.embed.models_at_once, len(jobs)) if config.embed.replicas == "tasks" else 1
    if at_once <= 1:
        return [embed_model(config, storage, run_id, entry, inputs, progress, counters) for entry, inputs in jobs]
    from concurrent.futures import ThreadPoolExecutor

    counters.get()   # one counter actor, made before the threads share it
    # Described here, one model after another: that imports the models' libraries in this thread (two
    # threads importing torchvision and open_clip at once can deadlock on Python's module locks).
    setups = [model_setup(config, entry, storage) for entry, _ in jobs]
    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="embed-model") as pool:
        futures = [pool.submit(embed_model, config, storage, run_id, entry, inputs, progress, counters, setup)
                   for (entry, inputs), setup in zip(jobs, setups)]
    return [future.result() for future in futures]


def check_media_models(config: RunConfig) -> None:
    """Raise a ManifestError naming the first model that embeds media: a vectors-only manifest has none."""
    for entry in config.models:
        if model_embeds(entry.spec):
            raise ManifestError(
                f"manifest {config.manifest} has no image, sketch or captions column, but model {entry.slug()!r} "
                f"({entry.spec}) embeds media; add a media column, or list only precomputed: models "
                "for a vectors-only manifest")


def embed_run(config: RunConfig, *, progress: Progress | None = None,
              echo: Callable[[str], None] = print) -> EmbedSummary:
    """Embed every model x modality of a config into ``<root>/runs/<run_id>/embeddings``. Resumable."""
    progress = progress or Progress(echo)
    run_id = config.resolved_run_id()
    layout = RunLayout(run_id)
    storage = Storage(config.root, config.s3)
    storage.ensure_bucket()
    storage.write_bytes(layout.config, redacted_yaml(config).encode())

    # A manifest without media is fine when every model is precomputed; a model that embeds needs media.
    manifest = load_manifest(config.manifest, storage, allowed_roots=config.allowed_roots, require_media=False)
    if not manifest.modalities():
        check_media_models(config)
    storage.write_parquet(layout.manifest_errors, manifest.quarantine.to_table())
    storage.write_parquet(layout.input_manifest, manifest.table)
    if config.tag_categories:
        storage.write_json(layout.input_tag_categories, load_tag_categories(config.tag_categories, storage))
    summary = EmbedSummary(run_id, storage.root, manifest.rows_read, manifest.table.num_rows, len(manifest.quarantine))
    for modality in ("image", "sketch", "text"):
        # Whole-item problems count against every modality the manifest offers; empty captions only against text.
        summary.manifest_quarantined_by_modality[modality] = len(manifest.quarantine.for_modality(modality))
    summary.manifest_quarantined_by_modality[PROMPT_MODALITY] = 0   # prompts are no manifest rows
    echo(summary.lines()[0])

    ensure_ray(config.ray)
    # embed.replicas: auto is decided once, here, from the cluster this run got
    replicas = replicas_on_this_cluster(config.embed)
    log.debug("embed.replicas: %s (configured: %s)", replicas, config.embed.replicas)
    config = config.model_copy(update={"embed": config.embed.model_copy(update={"replicas": replicas})})
    if config.embed.replicas == "tasks":
        warm_task_workers([entry.spec for entry in config.models])
    available = manifest.modalities()
    prompts = run_prompt_texts(config, manifest)
    counters = RunCounter()
    jobs: list[tuple[ModelEntry, dict[str, pa.Table]]] = []
    try:
        for entry in config.models:
            supported = model_modalities(entry.spec)
            inputs = {m: partition_inputs(manifest, m) for m in config.embed.modalities
                      if m in supported and m in available}
            if not model_embeds(entry.spec):
                # Modalities the manifest has no column for: the file's own (id, sub) rows of manifest items.
                model = loaded_model(entry.spec, storage)
                for m in config.embed.modalities:
                    if m not in available and m in model.info.modalities:
                        inputs[m] = vector_only_inputs(manifest, model.keys(m))
                inputs = {m: inputs[m] for m in config.embed.modalities if m in inputs}
                if PROMPT_MODALITY in model.info.modalities:
                    inputs[PROMPT_MODALITY] = precomputed_prompt_inputs(model.keys(PROMPT_MODALITY))
            elif "text" in supported and prompts.num_rows:
                inputs[PROMPT_MODALITY] = prompts
            jobs.append((entry, inputs))
        for partitions in embed_models(config, storage, run_id, jobs, progress, counters):
            summary.partitions.extend(partitions)
    finally:
        counters.stop()
    storage.write_json(layout.embed_summary, {
        "run_id": run_id, "manifest_rows": summary.manifest_rows, "manifest_accepted": summary.manifest_accepted,
        "manifest_quarantined": summary.manifest_quarantined,
        "partitions": [p.__dict__ for p in summary.partitions],
    })
    for line in summary.lines()[1:]:
        echo(line)
    return summary
