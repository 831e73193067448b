"""The score job: committed embeddings of a run + the manifest -> ``runs/<run_id>/scores/*.parquet`` + marker.

For every model with committed partitions it loads and checks each modality once, then runs every enabled
task. Checks and what they do (each exclusion is counted in the ``note`` of the rows it affects):

- an embedding id that is not in the manifest: excluded and counted (the manifest may have quarantined
  the row after embedding, or the run was embedded from an older manifest); if *no* id of a partition is
  in the manifest, that is a wrong-manifest error, raised;
- a vector with NaN/Inf or zero norm: excluded and counted (cosine is undefined for it);
- vectors of different dimensions in one partition: raised, naming the partition (it is corrupt).

``seconds`` on a row is the wall time of the computation that produced it; rows computed together (R@1,
R@5 and R@10 of one direction; corr_knn for every k) each carry that shared time, so do not sum them.

A task that fails for one model is logged and recorded as a row with value null, metric ``failed`` and
the error in ``note``; the other tasks and models go on. Configuration errors (a tag category without a
weight, an unknown modality in the settings) are raised before any work starts.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import traceback
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from embedeval.io.embeddings import list_committed, read_commit_marker
from embedeval.io.layout import RunLayout
from embedeval.io.prompts import PROMPT_MODALITY, read_prompt_vectors
from embedeval.io.score_files import commit_scores
from embedeval.io.storage import Storage
from embedeval.scoring.context import CatalogueView, ModalityEmbeddings, ScoringError, TaskContext, stopwatch
from embedeval.scoring import registry
from embedeval.scoring.paired import compare_models
from embedeval.scoring.parts import ScoreParts, UnitResult
from embedeval.scoring.per_item import PER_ITEM_SCHEMA
from embedeval.scoring.registry import PlanInputs, ScoreUnit
from embedeval.scoring.prepare import prepare_partition
from embedeval.scoring.schema import IDENTITY_COLUMNS, scores_table
from embedeval.scoring.settings import EXECUTION_SETTINGS, ScoreSettings
from embedeval.scoring.tags import TagVectors, build_tag_vectors

log = logging.getLogger(__name__)

WEIGHTS_RANDOM_KEY = "embedeval.model.weights_random"

Progress = Callable[[str], None]


def score_run(storage: Storage, run_id: str, manifest: pa.Table, tag_categories: dict[str, str] | None,
              settings: ScoreSettings, *, category_weights: dict[str, float] | None = None,
              progress: Progress | None = None, out_dir: str | None = None,
              on_units: Callable[[int, int], None] | None = None) -> pa.Table:
    """Score every committed (model, modality) of ``run_id``; write and return the scores table.

    ``manifest`` is the accepted table of :func:`embedeval.io.manifest.load_manifest`; ``tag_categories``
    maps tag -> category (per-category CorrEmbed); ``category_weights`` maps category -> weight (the
    paper's weighting; else tags are weighed by informativeness, see :mod:`embedeval.scoring.tags`).
    ``progress`` gets one message per unit; ``on_units(done, total)`` is called once the plan is known and
    after every unit (for a progress bar). Also writes ``ambiguity.parquet`` and ``prototypes.parquet`` next
    to ``scores.parquet``, every mean score's per-item values (``per_item.parquet``) and the paired model
    comparison computed from them (``comparisons.parquet``, :mod:`embedeval.scoring.paired`; driver memory
    O(models x n) per score).

    The driver plans and merges: each partition's vectors are prepared once into block files
    (:mod:`embedeval.scoring.prepare`) that tasks read; the driver holds O(N) ids, codes and per-unit
    values. Resumable: every (model, task, target) unit commits its rows as it finishes
    (:class:`embedeval.scoring.parts.ScoreParts`); a rerun after a crash or kill recomputes only the
    units without a commit, and ``scores.parquet`` is assembled and written last.

    ``out_dir`` (relative to the storage root) replaces ``runs/<run_id>/scores`` as the output folder: the
    common-panel re-scoring (:mod:`embedeval.scoring.panel`) writes there, never into a run's own scores.
    """
    say = progress or (lambda msg: log.info(msg))
    catalogue = CatalogueView.from_table(manifest)
    layout = RunLayout(run_id, scores_dir=out_dir)
    partitions = list_committed(storage, run_id)
    if not partitions:
        raise ScoringError(f"no committed embeddings under {storage.uri(layout.embeddings)}: "
                           f"run the embed job for run {run_id!r} first")
    tag_vectors = _tag_vectors(catalogue, tag_categories, category_weights, settings)
    runner = _make_runner(settings)

    models: dict[str, list[str]] = {}
    for model, modality in partitions:
        models.setdefault(model, []).append(modality)

    parts = ScoreParts(storage, run_id, out_dir=out_dir)
    units_by_model = {model: plan_units(settings, modalities, catalogue, tag_vectors is not None)
                      for model, modalities in models.items()}
    total = sum(len(u) for u in units_by_model.values())
    done = 0
    tick = on_units or (lambda _done, _total: None)
    tick(0, total)
    for model, modalities in models.items():
        fingerprint = _inputs_fingerprint(storage, run_id, model, modalities, settings, tag_categories,
                                          category_weights, catalogue)
        units = units_by_model[model]
        todo = [u for u in units if not parts.has(model, u.key, fingerprint)]
        done += len(units) - len(todo)
        tick(done, total)
        if len(todo) < len(units):
            say(f"{model}: {len(units) - len(todo)} of {len(units)} score units kept from an earlier attempt")
        if not todo:
            continue
        wanted = {m for u in todo for m in u.modalities}
        # prompt vectors are keyed by label, not by manifest id: read whole (labels x templates rows), not prepared
        prepared = {m: prepare_partition(storage, run_id, model, m, catalogue, runner, block_rows=settings.block_rows,
                                         out_dir=out_dir)
                    for m in sorted(wanted - {PROMPT_MODALITY})}
        weights_random = any(str(p.model_info.get(WEIGHTS_RANDOM_KEY, "false")).lower() == "true"
                             for p in prepared.values())
        if len(prepared) < len(modalities):
            weights_random |= _weights_random_of_markers(storage, run_id, model, modalities)
        prompts = read_prompt_vectors(storage, run_id, model) if PROMPT_MODALITY in wanted else None
        ctx = TaskContext(run_id, model, weights_random, settings, catalogue, runner, prompts=prompts)
        embeddings = {m: p.embeddings for m, p in prepared.items()}
        for unit in todo:
            result = _run_unit(ctx, unit, embeddings, tag_vectors, say)
            done += 1
            if result is not None:
                parts.commit(model, unit.key, fingerprint, result)
            say(f"score units: {done}/{total} done")
            tick(done, total)

    collected = parts.collect(units_by_model)
    table = scores_table_from(collected["rows"])
    # created_at orders runs for the report's "difference from the last run"; file times are unreliable on S3.
    meta = {"embedeval.score.settings": settings.model_dump_json(), "embedeval.run_id": run_id,
            "embedeval.score.created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    from embedeval.scoring.prototypes import AMBIGUITY_SCHEMA, EXAMPLES_SCHEMA

    # The stage's marker goes last: readers see the tables together or not at all.
    per_item = _concat(collected["per_item"], PER_ITEM_SCHEMA)
    commit_scores(storage, run_id, table, _concat(collected["ambiguity"], AMBIGUITY_SCHEMA),
                  _concat(collected["examples"], EXAMPLES_SCHEMA), meta, layout=layout,
                  extra={"per_item": per_item, "comparisons": compare_models(per_item, settings)})
    if not settings.keep_blocks:
        storage.delete_dir(layout.blocks)
    say(f"scores: {table.num_rows} rows for {len(models)} models written to {storage.uri(layout.scores_table)}")
    return table


def _weights_random_of_markers(storage: Storage, run_id: str, model: str, modalities: list[str]) -> bool:
    for modality in modalities:
        record = read_commit_marker(storage, run_id, model, modality)
        if record and str(record.model_info.get(WEIGHTS_RANDOM_KEY, "false")).lower() == "true":
            return True
    return False


def _inputs_fingerprint(storage: Storage, run_id: str, model: str, modalities: list[str], settings: ScoreSettings,
                        tag_categories: dict[str, str] | None, category_weights: dict[str, float] | None,
                        catalogue: CatalogueView) -> str:
    """What a unit's rows depend on: the model's committed files, the manifest ids, and every setting
    that changes a number (not the execution knobs: Ray or not, tile and block sizes)."""
    h = hashlib.sha256()
    for modality in sorted(modalities):
        record = read_commit_marker(storage, run_id, model, modality)
        if record is not None:
            h.update(json.dumps([[f.path, f.rows, f.sha256] for f in record.files]).encode())
    h.update(settings.model_dump_json(exclude=EXECUTION_SETTINGS).encode())
    h.update(json.dumps([tag_categories, category_weights], sort_keys=True, default=str).encode())
    for buf in catalogue.ids.buffers():
        if buf is not None:
            h.update(buf)
    return h.hexdigest()[:32]


def scores_table_from(tables: list[pa.Table]) -> pa.Table:
    rows = pa.concat_tables(tables) if tables else scores_table([])
    return rows.sort_by([(k, "ascending") for k in IDENTITY_COLUMNS])


def _tag_vectors(catalogue: CatalogueView, tag_categories: dict[str, str] | None,
                 category_weights: dict[str, float] | None, settings: ScoreSettings) -> list[TagVectors] | None:
    if catalogue.tags is None or not any(registry.get_task(t).uses_tags for t in settings.tasks):
        return None
    return build_tag_vectors(catalogue.tags, tag_categories, category_weights, settings.tag_weighting)


def _make_runner(settings: ScoreSettings) -> Any:
    """The engine's Ray tile runner when asked for and Ray is up, else in-process; GEMMs on the device
    ``score.device`` names (``auto``: a GPU per task when the cluster has GPUs)."""
    from embedeval.engine.kernels import backend_for
    from embedeval.engine.runner import LocalRunner, RayRunner

    ray_up = False
    if settings.use_ray:
        import ray

        ray_up = ray.is_initialized()
        if not ray_up:
            log.info("Ray is not initialised: engine tiles run in-process")
    device = settings.device
    if device == "auto":
        gpus = 0.0
        if ray_up:
            import ray

            gpus = float(ray.cluster_resources().get("GPU", 0))
        else:
            import torch

            gpus = float(torch.cuda.device_count())
        device = "cuda" if gpus > 0 else "cpu"
    backend = backend_for(device, settings.allow_tf32)
    if not ray_up:
        return LocalRunner(backend=backend)
    return RayRunner(num_gpus_per_task=1.0 if device == "cuda" else 0.0, backend=backend)


def _is_system_failure(exc: BaseException) -> bool:
    """Ray errors that are not an exception raised by our own code inside a task (node/worker/object loss)."""
    try:
        from ray.exceptions import RayError, RayTaskError
    except ImportError:
        return False
    return isinstance(exc, RayError) and not isinstance(exc, RayTaskError)


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def plan_units(s: ScoreSettings, modalities: list[str], catalogue: CatalogueView, has_tags: bool) -> list[ScoreUnit]:
    """Every enabled task's units for one model, in the registry's order (see
    :mod:`embedeval.scoring.registry`): the task decides what this model's modalities and the manifest's
    columns allow."""
    inputs = PlanInputs(s, frozenset(modalities), catalogue, has_tags)
    units: list[ScoreUnit] = []
    for task in registry.all_tasks():
        if task.name in s.tasks:
            units.extend(task.plan(inputs))
    return units


def _run_unit(ctx: TaskContext, unit: ScoreUnit, embeddings: dict[str, ModalityEmbeddings],
              tag_vectors: list[TagVectors] | None, say: Progress) -> UnitResult | None:
    """Run one unit; a failure becomes a 'failed' row (not committed: a rerun tries it again)."""
    with stopwatch() as t:
        try:
            result = unit.run(ctx, embeddings, tag_vectors)
            failed = None
        except Exception as exc:  # noqa: BLE001 - one task must not lose the others
            if _is_system_failure(exc):
                # Lost nodes or workers after Ray's retries: the numbers are not wrong, they are missing.
                # Fail the job so a rerun completes it, instead of recording a permanent 'failed' score.
                raise
            if isinstance(exc, ScoringError) and "disagree on the vector dimension" in str(exc):
                raise
            failed = exc
            log.error("model %s: task %s (%s) failed: %s\n%s", ctx.model, unit.task, unit.target, exc,
                      traceback.format_exc())
    if failed is not None:
        say(f"{ctx.model}: {unit.task} ({unit.target}) FAILED: {failed}")
        row = ctx.row(unit.task, unit.target, "failed", None, 0, t[0], note=f"failed: {type(failed).__name__}: {failed}")
        return UnitResult([row], committed=False)
    say(f"{ctx.model}: {unit.task} ({unit.target}) done in {t[0]:.2f}s")
    return result
