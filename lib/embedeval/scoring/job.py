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
import logging
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedeval.io.embeddings import (EmbeddingsError, EmbeddingSet, list_committed, partition_dir,
                                     read_commit_marker, read_committed)
from embedeval.io.storage import Storage
from embedeval.scoring.context import CatalogueView, ModalityEmbeddings, ScoringError, TaskContext, stopwatch
from embedeval.scoring.schema import SCORES_PATH, ScoreRow, scores_table
from embedeval.scoring.settings import ScoreSettings
from embedeval.scoring.tags import TagVectors, build_tag_vectors

log = logging.getLogger(__name__)

AMBIGUITY_PATH = "scores/ambiguity.parquet"
PROTOTYPES_PATH = "scores/prototypes.parquet"
WEIGHTS_RANDOM_KEY = "embedeval.model.weights_random"

Progress = Callable[[str], None]


def score_run(storage: Storage, run_id: str, manifest: pa.Table, tag_categories: dict[str, str] | None,
              settings: ScoreSettings, *, category_weights: dict[str, float] | None = None,
              progress: Progress | None = None) -> pa.Table:
    """Score every committed (model, modality) of ``run_id``; write and return the scores table.

    ``manifest`` is the accepted table of :func:`embedeval.io.manifest.load_manifest`; ``tag_categories``
    maps tag -> category (per-category CorrEmbed); ``category_weights`` maps category -> weight (the
    paper's weighting; else tags are weighed by informativeness, see :mod:`embedeval.scoring.tags`).
    Also writes ``ambiguity.parquet`` and ``prototypes.parquet`` next to ``scores.parquet``.
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

    rows: list[ScoreRow] = []
    ambiguity: list[pa.Table] = []
    examples: list[pa.Table] = []
    for model, modalities in models.items():
        embeddings, weights_random = {}, False
        for modality in modalities:
            raw = _read_partition(storage, run_id, model, modality)
            weights_random |= str(raw.model_info.get(WEIGHTS_RANDOM_KEY, "false")).lower() == "true"
            embeddings[modality] = check_embeddings(raw, catalogue, storage.uri(partition_dir(run_id, model, modality)))
        ctx = TaskContext(run_id, model, weights_random, settings, catalogue, runner)
        model_rows, model_amb, model_ex = _score_model(ctx, embeddings, tag_vectors, say)
        rows += model_rows
        ambiguity += model_amb
        examples += model_ex

    table = scores_table(rows)
    # created_at orders runs for the report's "difference from the last run"; file times are unreliable on S3.
    meta = {"embedeval.score.settings": settings.model_dump_json(), "embedeval.run_id": run_id,
            "embedeval.score.created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    from embedeval.scoring.prototypes import AMBIGUITY_SCHEMA, EXAMPLES_SCHEMA

    # scores.parquet goes last: it is the score stage's commit, so a kill never leaves it beside stale siblings.
    storage.write_parquet(f"runs/{run_id}/{AMBIGUITY_PATH}", _concat(ambiguity, AMBIGUITY_SCHEMA), metadata=meta)
    storage.write_parquet(f"runs/{run_id}/{PROTOTYPES_PATH}", _concat(examples, EXAMPLES_SCHEMA), metadata=meta)
    storage.write_parquet(f"runs/{run_id}/{SCORES_PATH}", table, metadata=meta)
    say(f"scores: {table.num_rows} rows for {len(models)} models written to "
        f"{storage.uri(f'runs/{run_id}/{SCORES_PATH}')}")
    return table


def check_embeddings(raw: EmbeddingSet, catalogue: CatalogueView, where: str) -> ModalityEmbeddings:
    """Join a partition to the manifest and drop unusable vectors, counting each reason."""
    in_manifest = np.fromiter((i in catalogue.row_of for i in raw.ids), dtype=bool, count=len(raw.ids))
    if len(raw.ids) and not in_manifest.any():
        raise ScoringError(f"{where}: none of its {len(raw.ids)} ids (e.g. {raw.ids[0]!r}) is in the manifest; "
                           "score with the manifest the run was embedded from")
    vectors = raw.vectors
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], vectors, 0).astype(np.float64), axis=1)
    usable = finite & (norms > 0)
    keep = in_manifest & usable
    excluded = {"ids not in manifest": int((~in_manifest).sum()),
                "NaN/Inf vectors": int((in_manifest & ~finite).sum()),
                "zero vectors": int((in_manifest & finite & (norms == 0)).sum())}
    ids = raw.ids[keep]
    unit = (vectors[keep].astype(np.float64) / norms[keep, None]).astype(np.float32)
    rows = np.fromiter((catalogue.row_of[i] for i in ids), dtype=np.int64, count=len(ids))
    for reason, n in excluded.items():
        if n:
            log.warning("%s: %d rows excluded (%s)", where, n, reason)
    return ModalityEmbeddings(raw.modality, ids, raw.subs[keep], rows, unit, {k: v for k, v in excluded.items() if v})


def _read_partition(storage: Storage, run_id: str, model: str, modality: str) -> EmbeddingSet:
    try:
        return read_committed(storage, run_id, model, modality)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        # pyarrow refuses to concatenate files whose vector types differ: say which files and dims.
        record = read_commit_marker(storage, run_id, model, modality)
        dims = {}
        for f in record.files if record else []:
            vtype = pq.read_schema(storage.path(f.path), filesystem=storage.fs).field("vector").type
            dims[f.path] = getattr(vtype, "list_size", str(vtype))
        raise ScoringError(f"{storage.uri(partition_dir(run_id, model, modality))}: files disagree on the vector "
                           f"dimension ({dims}); the partition is corrupt, delete it and re-embed") from exc
    except EmbeddingsError as exc:
        raise ScoringError(str(exc)) from exc


def _tag_vectors(catalogue: CatalogueView, tag_categories: dict[str, str] | None,
                 category_weights: dict[str, float] | None, settings: ScoreSettings) -> list[TagVectors] | None:
    if "corrembed" not in settings.tasks or catalogue.tags is None:
        return None
    return build_tag_vectors(catalogue.tags, tag_categories, category_weights, settings.tag_weighting)


def _make_runner(settings: ScoreSettings) -> Any:
    """The engine's Ray tile runner when asked for and Ray is up; None runs tiles in-process."""
    from embedeval.engine.runner import LocalRunner, RayRunner

    if not settings.use_ray:
        return LocalRunner()
    import ray

    if not ray.is_initialized():
        log.info("Ray is not initialised: engine tiles run in-process")
        return LocalRunner()
    return RayRunner()


def _is_system_failure(exc: BaseException) -> bool:
    """Ray errors that are not an exception raised by our own code inside a task (node/worker/object loss)."""
    try:
        from ray.exceptions import RayError, RayTaskError
    except ImportError:
        return False
    return isinstance(exc, RayError) and not isinstance(exc, RayTaskError)


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def _score_model(ctx: TaskContext, embeddings: dict[str, ModalityEmbeddings], tag_vectors: list[TagVectors] | None,
                 say: Progress) -> tuple[list[ScoreRow], list[pa.Table], list[pa.Table]]:
    """Run every enabled task for one model; a failing task becomes a 'failed' row and the rest go on."""
    from embedeval.scoring import corrembed, modality_gap, prototypes, rankability, retrieval

    s = ctx.settings
    rows: list[ScoreRow] = []
    ambiguity: list[pa.Table] = []
    examples: list[pa.Table] = []

    def attempt(task: str, target: str, fn: Callable[[], list[ScoreRow]]) -> None:
        with stopwatch() as t:
            try:
                rows.extend(fn())
                failed = None
            except Exception as exc:  # noqa: BLE001 - one task must not lose the others
                if _is_system_failure(exc):
                    # Lost nodes or workers after Ray's retries: the numbers are not wrong, they are missing.
                    # Fail the job so a rerun completes it, instead of recording a permanent 'failed' score.
                    raise
                failed = exc
                log.error("model %s: task %s (%s) failed: %s\n%s", ctx.model, task, target, exc,
                          traceback.format_exc())
        if failed is not None:
            rows.append(ctx.row(task, target, "failed", None, 0, t[0],
                                note=f"failed: {type(failed).__name__}: {failed}"))
            say(f"{ctx.model}: {task} ({target}) FAILED: {failed}")
        else:
            say(f"{ctx.model}: {task} ({target}) done in {t[0]:.2f}s")

    if "corrembed" in s.tasks:
        for modality in s.corr_modalities:
            if modality not in embeddings:
                continue
            if tag_vectors is None:
                rows.append(ctx.row("corrembed", "all", "corrembed", None, 0, 0.0,
                                    note=f"skipped: the manifest has no 'tags' column ({modality})"))
                continue
            attempt("corrembed", modality,
                    lambda m=modality: corrembed.score_corrembed(ctx, embeddings[m], tag_vectors))
    if "rankability" in s.tasks and ctx.catalogue.attrs:
        for modality in s.rank_modalities:
            if modality in embeddings:
                attempt("rankability", modality, lambda m=modality: rankability.score_rankability(ctx, embeddings[m]))
    if "retrieval" in s.tasks:
        if "image" in embeddings and "text" in embeddings:
            attempt("retrieval", "image<->text",
                    lambda: retrieval.score_caption_retrieval(ctx, embeddings["image"], embeddings["text"]))
        for pair in s.label_pairs:
            a, _, b = pair.partition("->")
            if a in embeddings and b in embeddings:
                attempt("retrieval", pair,
                        lambda a=a, b=b: retrieval.score_label_retrieval(ctx, embeddings[a], embeddings[b]))
    if "prototypes" in s.tasks and ctx.catalogue.labels is not None:
        for modality in (s.prototype_modalities or sorted(embeddings)):
            if modality not in embeddings:
                continue

            def run_prototypes(m: str = modality) -> list[ScoreRow]:
                result = prototypes.score_prototypes(ctx, embeddings[m])
                ambiguity.append(result.ambiguity)
                examples.append(result.examples)
                return result.rows

            attempt("prototypes", modality, run_prototypes)
    if "modality_gap" in s.tasks and "image" in embeddings and "text" in embeddings:
        attempt("modality_gap", "image|text",
                lambda: modality_gap.score_modality_gap(ctx, embeddings["image"], embeddings["text"]))
    return rows, ambiguity, examples
