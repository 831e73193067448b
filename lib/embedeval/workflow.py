"""Chaining the stages: score and report from a config, `run` (all three), and the bundled demo.

Each stage reads the previous stage's files under ``<root>/runs/<run_id>/``, never its objects: the score
stage reads the manifest snapshot the embed stage wrote to ``inputs/``, so a run is reproducible even if
the original manifest changes later.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from embedeval.config import RunConfig, load_config
from embedeval.demo.defaults import DEMO_IMAGE_PX, DEMO_ITEMS, DEMO_EMBED, DEMO_MODELS, DEMO_REPORT, DEMO_SCORE
from embedeval.io.storage import Storage
from embedeval.pipeline.progress import Progress, ProgressTask

INPUT_MANIFEST = "inputs/manifest.parquet"
INPUT_TAG_CATEGORIES = "inputs/tag_categories.json"



def _storage(config: RunConfig) -> Storage:
    return Storage(config.root, config.s3)


def read_run_inputs(storage: Storage, run_id: str) -> tuple[pa.Table, dict[str, str] | None]:
    """The manifest snapshot and tag categories that the embed stage recorded for a run."""
    from embedeval.io.embeddings import EmbeddingsError

    if not storage.exists(f"runs/{run_id}/{INPUT_MANIFEST}"):
        raise EmbeddingsError(f"run {run_id!r} under {storage.root} has no {INPUT_MANIFEST}: run `embedeval embed` first")
    manifest = storage.read_parquet([f"runs/{run_id}/{INPUT_MANIFEST}"])
    categories = None
    if storage.exists(f"runs/{run_id}/{INPUT_TAG_CATEGORIES}"):
        categories = storage.read_json(f"runs/{run_id}/{INPUT_TAG_CATEGORIES}")
    return manifest, categories


def score_from_config(config: RunConfig, echo: Callable[[str], None] = print,
                      progress: Progress | None = None) -> pa.Table:
    """Score a run's committed embeddings; one progress bar (units done of total), then one line.

    Per-unit timings are :meth:`~embedeval.pipeline.progress.Progress.detail` lines (shown with ``-v``).
    """
    from embedeval.pipeline.ray_runtime import ensure_ray
    from embedeval.scoring.job import score_run

    progress = progress or Progress(echo)
    run_id = config.resolved_run_id()
    storage = _storage(config)
    manifest, categories = read_run_inputs(storage, run_id)
    ensure_ray(config.ray)
    started = time.time()
    bar: list[ProgressTask] = []

    def on_units(done: int, total: int) -> None:
        if not bar:
            bar.append(progress.task("score", total, unit="units"))
        bar[0].update(done)

    ok = False
    try:
        table = score_run(storage, run_id, manifest, categories, config.score,
                          category_weights=config.category_weights, progress=progress.detail, on_units=on_units)
        ok = True
    finally:
        if bar:
            bar[0].finish(stopped=not ok)
    failed = table.filter(pc.equal(table.column("metric"), "failed")).num_rows if table.num_rows else 0
    progress.echo(f"scores: {table.num_rows} rows in {time.time() - started:.1f}s"
                  + (f", {failed} units FAILED (their rows say why in `note`)" if failed else "")
                  + f" -> {storage.uri(f'runs/{run_id}/scores/scores.parquet')}")
    return table


def image_loader_for(storage: Storage, run_id: str, config: RunConfig) -> Callable[[str], bytes | None]:
    """id -> image bytes (for report thumbnails), from the run's manifest snapshot."""
    from embedeval.pipeline.media import BadItem, MediaReader

    manifest, _ = read_run_inputs(storage, run_id)
    paths = {}
    if "image" in manifest.column_names:
        paths = dict(zip(manifest.column("id").to_pylist(), manifest.column("image").to_pylist()))
    reader = MediaReader(config.s3)

    def load(item_id: str) -> bytes | None:
        uri = paths.get(item_id)
        if not uri:
            return None
        try:
            return reader.read_bytes(uri)
        except BadItem:
            return None

    return load


def report_from_config(config: RunConfig, echo: Callable[[str], None] = print,
                       progress: Progress | None = None):  # noqa: ANN201
    """Build the run's report (leaderboard, report.html, plots, diff); print where they are."""
    from embedeval.report.build import build_report

    progress = progress or Progress(echo)
    run_id = config.resolved_run_id()
    storage = _storage(config)
    settings = config.report
    columns: dict[str, dict[str, float]] = {}
    for m in config.models:
        for column, value in m.columns.items():
            columns.setdefault(column, {})[m.slug()] = value
    if columns and not settings.model_columns:
        settings = settings.model_copy(update={"model_columns": columns})
    paths = build_report(storage, run_id, previous_run_id=config.previous_run_id, settings=settings,
                         image_loader=image_loader_for(storage, run_id, config))
    for note in paths.notes:
        progress.detail(f"  report note: {note}")
    progress.echo(f"report: {paths.html}")
    progress.echo(f"leaderboard: {paths.leaderboard}")
    progress.echo(f"diff: {paths.diff}" + (f" (against run {paths.previous_run_id})" if paths.previous_run_id
                                          else " (no earlier run to compare with)"))
    return paths


def run_all(config: RunConfig, echo: Callable[[str], None] = print, progress: Progress | None = None) -> None:
    """Embed, score and report one config, timing each stage; ends with a one-line summary."""
    progress = progress or Progress(echo)
    _run_stages(config, progress, report=True)
    progress.echo(progress.timing_line())


def _run_stages(config: RunConfig, progress: Progress, report: bool) -> None:
    from embedeval.pipeline.embed import embed_run
    from embedeval.pipeline.ray_runtime import ensure_ray

    with progress.stage("ray start"):
        ensure_ray(config.ray)
    with progress.stage("embed"):
        embed_run(config, progress=progress, echo=progress.echo)
    with progress.stage("score"):
        score_from_config(config, progress=progress)
    if report:
        with progress.stage("report"):
            report_from_config(config, progress=progress)


def demo_config(root: Path | str, corpus_manifest: Path | str, tag_categories: Path | str, run_id: str,
                models: list[str] | None, *, local: bool = False) -> dict:
    """The demo's run config. ``local``: sized for one small machine (in-process score tiles, a lighter
    report); infra/local_cluster.sh submits it to a cluster without."""
    config = {
        "root": str(root),
        "run_id": run_id,
        "manifest": str(corpus_manifest),
        "tag_categories": str(tag_categories),
        "models": [{"spec": m} for m in models] if models else DEMO_MODELS,
        "embed": {"batch_size": 32},
    }
    if local:
        config["embed"].update(DEMO_EMBED)
        config.update(score=dict(DEMO_SCORE), report=dict(DEMO_REPORT))
    return config


def run_demo(root: Path, *, items: int = DEMO_ITEMS, seed: int = 0, run_id: str = "demo",
             models: list[str] | None = None, report: bool = True, echo: Callable[[str], None] = print,
             progress: Progress | None = None) -> RunConfig:
    """Write the demo corpus and a config under ``root`` and run embed, score and (optionally) report."""
    from embedeval.demo.corpus import write_demo_corpus

    progress = progress or Progress(echo)
    root = root.expanduser().resolve()
    progress.echo(f"demo corpus: {items} items under {root / 'corpus'}")
    with progress.stage("corpus"):
        corpus = write_demo_corpus(root, items, seed, image_px=DEMO_IMAGE_PX)
    config_path = root / "demo-config.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(root, corpus.manifest, corpus.tag_categories, run_id, models,
                                                      local=True), sort_keys=False))
    config = load_config(config_path)
    _run_stages(config, progress, report)
    progress.echo(f"results: {root / 'runs' / run_id}  (config: {config_path})")
    progress.echo(progress.timing_line())
    return config
