"""Chaining the stages: score and report from a config, `run` (all three), and the bundled demo.

Every command that writes a run holds the run's lease while it does (:func:`run_lease`, see
:mod:`embedeval.io.lease`): a second command on the same run id is refused instead of interleaving writes.

Each stage reads the previous stage's files under ``<root>/runs/<run_id>/``, never its objects: the score
stage reads the manifest snapshot the embed stage wrote to ``inputs/``, so a run is reproducible even if
the original manifest changes later.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from embedeval.config import ConfigError, RunConfig, load_config
from embedeval.demo.defaults import (DEMO_CAPTIONS, DEMO_EMBED, DEMO_GROWTH, DEMO_IMAGE_PX, DEMO_ITEMS,
                                     DEMO_MODELS, DEMO_REPORT, DEMO_SCORE)
from embedeval.io.layout import RunLayout
from embedeval.io.lease import RunLease, hold_run_lease
from embedeval.io.storage import Storage
from embedeval.pipeline.progress import Progress, ProgressTask



def _storage(config: RunConfig) -> Storage:
    return Storage(config.root, config.s3)


@contextmanager
def run_lease(config: RunConfig, *, purpose: str, force: bool = False, uses_ray: bool = True,
              echo: Callable[[str], None] = print) -> Iterator[RunLease]:
    """Hold the lease of the config's run for a ``with`` block (released however it ends).

    On an S3 server that ignores create-only PUTs, a command that ``uses_ray`` joins Ray first, so the
    cluster's named lease actor decides between drivers on that cluster (see :mod:`embedeval.io.lease_stores`).
    Raises :class:`~embedeval.io.lease.LeaseHeld` when another live process holds it and not ``force``.
    """
    from embedeval.io.lease_stores import conditional_writes_honoured

    storage = _storage(config)
    storage.ensure_bucket()
    if uses_ray and storage.is_s3 and not conditional_writes_honoured(storage):
        from embedeval.pipeline.ray_runtime import ensure_ray

        ensure_ray(config.ray)
    with hold_run_lease(storage, config.resolved_run_id(), settings=config.lease, purpose=purpose, force=force,
                        echo=echo) as lease:
        yield lease


def read_run_inputs(storage: Storage, run_id: str) -> tuple[pa.Table, dict[str, str] | None]:
    """The manifest snapshot and tag categories that the embed stage recorded for a run."""
    from embedeval.io.embeddings import EmbeddingsError

    layout = RunLayout(run_id)
    if not storage.exists(layout.input_manifest):
        raise EmbeddingsError(f"run {run_id!r} under {storage.root} has no {layout.relative(layout.input_manifest)}: "
                              "run `embedeval embed` first")
    manifest = storage.read_parquet([layout.input_manifest])
    categories = None
    if storage.exists(layout.input_tag_categories):
        categories = storage.read_json(layout.input_tag_categories)
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
                  + f" -> {storage.uri(RunLayout(run_id).scores_table)}")
    if config.score.common_panel:
        score_panel(storage, run_id, config, manifest, categories, progress)
    return table


def score_panel(storage: Storage, run_id: str, config: RunConfig, manifest: pa.Table,
                categories: dict[str, str] | None, progress: Progress) -> None:
    """Re-score this run's and the previous run's vectors on the items both share (like for like).

    Its per-unit lines are ``progress`` details (``-v``); its outcome is one line."""
    from embedeval.report.runs import previous_run
    from embedeval.scoring.panel import score_common_panel

    echo = progress.echo
    previous = config.previous_run_id or previous_run(storage, run_id)[0]
    if previous is None:
        echo("common panel: no previous run to compare with")
        return
    previous_manifest, _ = read_run_inputs(storage, previous)
    info = score_common_panel(storage, run_id, previous, manifest, previous_manifest, categories, config.score,
                              category_weights=config.category_weights, progress=progress.detail)
    if info.identical:
        echo(f"common panel vs {previous}: the same {info.shared} items, so the run's own scores compare like for like")
    elif info.scored:
        echo(f"common panel vs {previous}: both runs scored on the {info.shared} items they share")


def image_loader_for(storage: Storage, run_id: str, config: RunConfig) -> Callable[[str], bytes | None]:
    """id -> image bytes (for report thumbnails), from the run's manifest snapshot."""
    from embedeval.pipeline.media import BadItem, MediaReader

    manifest, _ = read_run_inputs(storage, run_id)
    paths = {}
    if "image" in manifest.column_names:
        paths = dict(zip(manifest.column("id").to_pylist(), manifest.column("image").to_pylist()))
    reader = MediaReader(storage)

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


def run_all(config: RunConfig, echo: Callable[[str], None] = print, *, force: bool = False,  # noqa: ANN201
            progress: Progress | None = None):
    """Embed, score and report one run, holding its lease throughout (``force``: take it over), timing each
    stage; ends with a one-line summary. Returns the report's paths (with its like-for-like regressions)."""
    progress = progress or Progress(echo)
    with run_lease(config, purpose="run", force=force, echo=progress.echo) as lease:
        paths = _run_stages(config, progress, lease, report=True)
    progress.echo(progress.timing_line())
    return paths


def _run_stages(config: RunConfig, progress: Progress, lease: RunLease, *, report: bool,  # noqa: ANN202
                label: str = ""):
    """Ray start, embed, score and (``report``) report, each timed in ``progress`` (stage names prefixed
    with ``label``); the lease is checked between stages. Returns the report's paths, or None without a
    report."""
    import ray

    from embedeval.pipeline.embed import embed_run
    from embedeval.pipeline.ray_runtime import ensure_ray

    if not ray.is_initialized():  # a second demo night reuses the first's Ray
        with progress.stage("ray start"):
            ensure_ray(config.ray)
    with progress.stage(f"{label}embed"):
        embed_run(config, progress=progress, echo=progress.echo)
    lease.ensure_held()
    with progress.stage(f"{label}score"):
        score_from_config(config, progress=progress)
    if not report:
        return None
    lease.ensure_held()
    with progress.stage(f"{label}report"):
        return report_from_config(config, progress=progress)


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
             progress: Progress | None = None, grow: int | None = None) -> RunConfig:
    """Write the demo corpus and a config under ``root`` and run it as two nights of a growing catalogue.

    Night 1 (run ``<run_id>-night1``) embeds and scores the first ``items - grow`` items; night 2 (run
    ``run_id``) gets all ``items``: the embed cache answers for night 1's items in every model and
    modality, so only the ``grow`` new ones are embedded, and its report's ``diff.md`` compares the two
    nights. ``grow`` defaults to the same share as the default demo's (``DEMO_GROWTH`` of ``DEMO_ITEMS``);
    ``grow=0`` runs one night (no diff). ``report``: whether night 2 writes its report."""
    from embedeval.demo.corpus import write_demo_corpus

    if grow is None:
        grow = items * DEMO_GROWTH // DEMO_ITEMS
    if not 0 <= grow < items:
        raise ConfigError(f"demo: --grow must be between 0 and --items - 1 ({items - 1}); got {grow}")
    progress = progress or Progress(echo)
    root = root.expanduser().resolve()
    progress.echo(f"demo corpus: {items} items under {root / 'corpus'}")
    with progress.stage("corpus"):
        corpus = write_demo_corpus(root, items, seed, image_px=DEMO_IMAGE_PX, captions_per_item=DEMO_CAPTIONS)
    first_night = f"{run_id}-night1"
    if grow:
        night1_manifest = corpus.manifest.with_name("manifest-night1.parquet")
        pq.write_table(pq.read_table(corpus.manifest).slice(0, items - grow), night1_manifest)
        night1_path = root / "demo-config-night1.yaml"
        night1_path.write_text(yaml.safe_dump(demo_config(root, night1_manifest, corpus.tag_categories, first_night,
                                                          models, local=True), sort_keys=False))
        night1 = load_config(night1_path)
        progress.echo(f"night 1: {items - grow} items (run {first_night})")
        with run_lease(night1, purpose="demo", echo=progress.echo) as lease:
            _run_stages(night1, progress, lease, report=False, label="night 1 ")
        progress.echo(f"night 2: the catalogue grew by {grow} items to {items} (run {run_id}): only the new "
                      f"items are embedded, and diff.md compares the two nights")
    config_dict = demo_config(root, corpus.manifest, corpus.tag_categories, run_id, models, local=True)
    if grow:
        config_dict["previous_run_id"] = first_night
    config_path = root / "demo-config.yaml"
    config_path.write_text(yaml.safe_dump(config_dict, sort_keys=False))
    config = load_config(config_path)
    with run_lease(config, purpose="demo", echo=progress.echo) as lease:
        _run_stages(config, progress, lease, report=report, label="night 2 " if grow else "")
    progress.echo(f"results: {root / RunLayout(run_id).base}  (config: {config_path})")
    progress.echo(progress.timing_line())
    return config
