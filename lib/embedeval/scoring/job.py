"""The score job: committed embeddings of a run + the manifest -> ``runs/<run_id>/scores/*.parquet``.

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
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from embedeval.io.embeddings import list_committed, read_commit_marker
from embedeval.io.storage import Storage
from embedeval.scoring.context import CatalogueView, ModalityEmbeddings, ScoringError, TaskContext, stopwatch
from embedeval.scoring.parts import ScoreParts, UnitResult
from embedeval.scoring.prepare import prepare_partition
from embedeval.scoring.schema import SCORES_PATH, scores_table
from embedeval.scoring.settings import EXECUTION_SETTINGS, ScoreSettings
from embedeval.scoring.tags import TagVectors, build_tag_vectors

log = logging.getLogger(__name__)

AMBIGUITY_PATH = "scores/ambiguity.parquet"
PROTOTYPES_PATH = "scores/prototypes.parquet"
WEIGHTS_RANDOM_KEY = "embedeval.model.weights_random"

Progress = Callable[[str], None]


def score_run(storage: Storage, run_id: str, manifest: pa.Table, tag_categories: dict[str, str] | None,
              settings: ScoreSettings, *, category_weights: dict[str, float] | None = None,
              progress: Progress | None = None,
              on_units: Callable[[int, int], None] | None = None) -> pa.Table:
    """Score every committed (model, modality) of ``run_id``; write and return the scores table.

    ``manifest`` is the accepted table of :func:`embedeval.io.manifest.load_manifest`; ``tag_categories``
    maps tag -> category (per-category CorrEmbed); ``category_weights`` maps category -> weight (the
    paper's weighting; else tags are weighed by informativeness, see :mod:`embedeval.scoring.tags`).
    ``progress`` gets one message per unit; ``on_units(done, total)`` is called once the plan is known and
    after every unit (for a progress bar). Also writes ``ambiguity.parquet`` and ``prototypes.parquet`` next to ``scores.parquet``.

    The driver plans and merges: each partition's vectors are prepared once into block files
    (:mod:`embedeval.scoring.prepare`) that tasks read; the driver holds O(N) ids, codes and per-unit
    values. Resumable: every (model, task, target) unit commits its rows as it finishes
    (:class:`embedeval.scoring.parts.ScoreParts`); a rerun after a crash or kill recomputes only the
    units without a commit, and ``scores.parquet`` is assembled and written last.
    """
    say = progress or (lambda msg: log.info(msg))
    catalogue = CatalogueView.from_table(manifest)
    partitions = list_committed(storage, run_id)
    if not partitions:
        raise ScoringError(f"no committed embeddings under {storage.uri(f'runs/{run_id}/embeddings')}: "
                           f"run the embed job for run {run_id!r} first")
    tag_vectors = _tag_vectors(catalogue, tag_categories, category_weights, settings)
    runner = _make_runner(settings)

    models: dict[str, list[str]] = {}
    for model, modality in partitions:
        models.setdefault(model, []).append(modality)

    parts = ScoreParts(storage, run_id)
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
        prepared = {m: prepare_partition(storage, run_id, model, m, catalogue, runner, block_rows=settings.block_rows)
                    for m in sorted({m for u in todo for m in u.modalities})}
        weights_random = any(str(p.model_info.get(WEIGHTS_RANDOM_KEY, "false")).lower() == "true"
                             for p in prepared.values())
        if len(prepared) < len(modalities):
            weights_random |= _weights_random_of_markers(storage, run_id, model, modalities)
        ctx = TaskContext(run_id, model, weights_random, settings, catalogue, runner)
        embeddings = {m: p.embeddings for m, p in prepared.items()}
        for unit in todo:
            result = _run_unit(ctx, unit, embeddings, tag_vectors, say)
            done += 1
            if result is not None:
                parts.commit(model, unit.key, fingerprint, result)
            say(f"score units: {done}/{total} done")
            tick(done, total)

    rows, ambiguity, examples = parts.collect(units_by_model)
    table = scores_table_from(rows)
    # created_at orders runs for the report's "difference from the last run"; file times are unreliable on S3.
    meta = {"embedeval.score.settings": settings.model_dump_json(), "embedeval.run_id": run_id,
            "embedeval.score.created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    from embedeval.scoring.prototypes import AMBIGUITY_SCHEMA, EXAMPLES_SCHEMA

    # scores.parquet goes last: it is the score stage's commit, so a kill never leaves it beside stale siblings.
    storage.write_parquet(f"runs/{run_id}/{AMBIGUITY_PATH}", _concat(ambiguity, AMBIGUITY_SCHEMA), metadata=meta)
    storage.write_parquet(f"runs/{run_id}/{PROTOTYPES_PATH}", _concat(examples, EXAMPLES_SCHEMA), metadata=meta)
    storage.write_parquet(f"runs/{run_id}/{SCORES_PATH}", table, metadata=meta)
    if not settings.keep_blocks:
        storage.delete_dir(f"runs/{run_id}/scores/blocks")
    say(f"scores: {table.num_rows} rows for {len(models)} models written to "
        f"{storage.uri(f'runs/{run_id}/{SCORES_PATH}')}")
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
    keys = ["model", "task", "target", "metric", "k", "split", "variant"]
    return rows.sort_by([(k, "ascending") for k in keys])


def _tag_vectors(catalogue: CatalogueView, tag_categories: dict[str, str] | None,
                 category_weights: dict[str, float] | None, settings: ScoreSettings) -> list[TagVectors] | None:
    if "corrembed" not in settings.tasks or catalogue.tags is None:
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


@dataclass(frozen=True)
class ScoreUnit:
    """One resumable piece of the score stage: a task on a target, with the modalities it reads."""

    task: str
    target: str
    modalities: tuple[str, ...]
    run: Callable[[TaskContext, dict[str, ModalityEmbeddings], list[TagVectors] | None], UnitResult]

    @property
    def key(self) -> str:
        return f"{self.task}/{self.target}"


def plan_units(s: ScoreSettings, modalities: list[str], catalogue: CatalogueView, has_tags: bool) -> list[ScoreUnit]:
    """Every enabled (task, target) that this model's modalities and the manifest's columns allow."""
    from embedeval.scoring import corrembed, modality_gap, prototypes, rankability, retrieval

    have = set(modalities)
    units: list[ScoreUnit] = []
    if "corrembed" in s.tasks:
        for m in s.corr_modalities:
            if m not in have:
                continue
            if not has_tags:
                units.append(ScoreUnit("corrembed", m, (), lambda ctx, e, tv, m=m: UnitResult([ctx.row(
                    "corrembed", "all", "corrembed", None, 0, 0.0,
                    note=f"skipped: the manifest has no 'tags' column ({m})")])))
                continue
            units.append(ScoreUnit("corrembed", m, (m,),
                                   lambda ctx, e, tv, m=m: UnitResult(corrembed.score_corrembed(ctx, e[m], tv))))
    if "rankability" in s.tasks and catalogue.attrs:
        for m in s.rank_modalities:
            if m in have:
                units.append(ScoreUnit("rankability", m, (m,),
                                       lambda ctx, e, tv, m=m: UnitResult(rankability.score_rankability(ctx, e[m]))))
    if "retrieval" in s.tasks:
        if {"image", "text"} <= have:
            units.append(ScoreUnit("retrieval", "image<->text", ("image", "text"), lambda ctx, e, tv: UnitResult(
                retrieval.score_caption_retrieval(ctx, e["image"], e["text"]))))
        for pair in s.label_pairs:
            a, _, b = pair.partition("->")
            if a in have and b in have:
                units.append(ScoreUnit("retrieval", pair, tuple(sorted({a, b})), lambda ctx, e, tv, a=a, b=b: UnitResult(
                    retrieval.score_label_retrieval(ctx, e[a], e[b]))))
    if "prototypes" in s.tasks and catalogue.labels is not None:
        for m in (s.prototype_modalities or sorted(have)):
            if m in have:
                units.append(ScoreUnit("prototypes", m, (m,), lambda ctx, e, tv, m=m: _prototype_result(ctx, e[m])))
    if "modality_gap" in s.tasks and {"image", "text"} <= have:
        units.append(ScoreUnit("modality_gap", "image|text", ("image", "text"), lambda ctx, e, tv: UnitResult(
            modality_gap.score_modality_gap(ctx, e["image"], e["text"]))))
    return units


def _prototype_result(ctx: TaskContext, emb: ModalityEmbeddings) -> UnitResult:
    from embedeval.scoring import prototypes

    result = prototypes.score_prototypes(ctx, emb)
    return UnitResult(result.rows, result.ambiguity, result.examples)


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
