"""Where everything lives under a root: the one module that knows the paths of ``runs/<id>/`` and ``cache/``.

Every other module asks :class:`RunLayout` (one run) or :class:`CacheLayout` (one embedding-cache key)
for a path and passes it to :class:`~embedeval.io.storage.Storage`; none builds one itself. Paths are
relative to the storage root and use ``/``. The layout is an on-disk contract read by other tools and
by older runs, so names here change only with a migration::

    runs/<id>/_LEASE.json                          the run lease: holder, heartbeat, expiry (io/lease.py)
    runs/<id>/config.yaml                          the resolved config, secrets redacted
    runs/<id>/embed_summary.json
    runs/<id>/inputs/manifest.parquet              the manifest snapshot the later stages read
    runs/<id>/inputs/tag_categories.json
    runs/<id>/errors/stage=manifest/part-0.parquet
    runs/<id>/errors/model=<m>/modality=<x>/part-*.parquet
    runs/<id>/embeddings/model=<m>/modality=<x>/part-*.parquet + _COMMITTED.json
    runs/<id>/scores/blocks/model=<m>/modality=<x>/block-*.npy, index.parquet + _COMMITTED.json
    runs/<id>/scores/parts/model=<m>/unit=<slug>/*.parquet + _COMMITTED.json
    runs/<id>/scores/scores.parquet, ambiguity.parquet, prototypes.parquet,
                     per_item.parquet, comparisons.parquet + _COMMITTED.json
    runs/<id>/scores/panel/vs=<prev>/_PANEL.json   the common panel against run <prev> (scoring/panel.py)
    runs/<id>/scores/panel/vs=<prev>/run=<r>/...   a score stage's folder (as scores/ above) for run r's vectors
    runs/<id>/report/leaderboard.md, report.html, diff.md, plots/*.png + _COMMITTED.json
    cache/<key>/key.json
    cache/<key>/<kind>/part-<modality>-<digest>.parquet
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

RUNS_DIR = "runs"
CACHE_DIR = "cache"
#: Written last in a folder: it lists the folder's files, and readers trust nothing else (see io/commit.py).
COMMIT_MARKER = "_COMMITTED.json"


def _join(*parts: str) -> str:
    return posixpath.join(*parts)


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run, relative to the storage root.

    ``scores_dir`` moves the score stage's folder (blocks, parts, tables, marker) elsewhere: the common
    panel scores a run's vectors into a folder of another run (:meth:`panel_scores`)."""

    run_id: str
    scores_dir: str | None = None

    @property
    def base(self) -> str:
        return _join(RUNS_DIR, self.run_id)

    @property
    def lease(self) -> str:
        """The run lease record (:mod:`embedeval.io.lease`)."""
        return _join(self.base, "_LEASE.json")

    # --- embed stage ------------------------------------------------------------------------------
    @property
    def config(self) -> str:
        return _join(self.base, "config.yaml")

    @property
    def embed_summary(self) -> str:
        return _join(self.base, "embed_summary.json")

    @property
    def input_manifest(self) -> str:
        return _join(self.base, "inputs", "manifest.parquet")

    @property
    def input_tag_categories(self) -> str:
        return _join(self.base, "inputs", "tag_categories.json")

    @property
    def errors(self) -> str:
        return _join(self.base, "errors")

    @property
    def manifest_errors(self) -> str:
        return _join(self.errors, "stage=manifest", "part-0.parquet")

    def partition_errors(self, model: str, modality: str) -> str:
        return _join(self.errors, f"model={model}", f"modality={modality}")

    @property
    def embeddings(self) -> str:
        return _join(self.base, "embeddings")

    def partition(self, model: str, modality: str) -> str:
        return _join(self.embeddings, f"model={model}", f"modality={modality}")

    # --- score stage ------------------------------------------------------------------------------
    @property
    def scores(self) -> str:
        """The score stage's folder; its ``_COMMITTED.json`` lists the three tables below."""
        return self.scores_dir or _join(self.base, "scores")

    @property
    def scores_table(self) -> str:
        return _join(self.scores, "scores.parquet")

    @property
    def ambiguity_table(self) -> str:
        return _join(self.scores, "ambiguity.parquet")

    @property
    def prototypes_table(self) -> str:
        return _join(self.scores, "prototypes.parquet")

    def score_file(self, name: str) -> str:
        """A table of the score stage's folder by file name (``per_item.parquet``, ``comparisons.parquet``)."""
        return _join(self.scores, name)

    @property
    def blocks(self) -> str:
        return _join(self.scores, "blocks")

    def partition_blocks(self, model: str, modality: str) -> str:
        return _join(self.blocks, f"model={model}", f"modality={modality}")

    def score_unit(self, model: str, unit_slug: str) -> str:
        return _join(self.scores, "parts", f"model={model}", f"unit={unit_slug}")

    def panel(self, previous_run_id: str) -> str:
        """This run's common panel against ``previous_run_id``; its ``_PANEL.json`` is written last."""
        return _join(self.base, "scores", "panel", f"vs={previous_run_id}")

    def panel_marker(self, previous_run_id: str) -> str:
        return _join(self.panel(previous_run_id), "_PANEL.json")

    def panel_scores(self, previous_run_id: str, which: str) -> str:
        """The score-stage folder of run ``which``'s vectors on that panel (``which``: this run or the previous)."""
        return _join(self.panel(previous_run_id), f"run={which}")

    # --- report stage -----------------------------------------------------------------------------
    @property
    def report(self) -> str:
        return _join(self.base, "report")

    def report_file(self, name: str) -> str:
        """``leaderboard.md``, ``report.html``, ``diff.md`` or ``plots/<name>.png`` under the report folder."""
        return _join(self.report, name)

    @property
    def plots(self) -> str:
        return _join(self.report, "plots")

    def plot(self, name: str) -> str:
        return _join(self.plots, f"{name}.png")

    # --- reading paths back -----------------------------------------------------------------------
    def relative(self, rel: str) -> str:
        """A root-relative path of this run as a path inside the run folder (``runs/x/a/b`` -> ``a/b``)."""
        return posixpath.relpath(rel, self.base)


def marker_in(folder: str) -> str:
    """The commit marker of a folder."""
    return _join(folder, COMMIT_MARKER)


def partition_of(rel: str) -> tuple[str, str] | None:
    """(model, modality) of a path inside a ``model=<m>/modality=<x>/`` folder, or None."""
    parts = rel.split("/")
    model = next((p[len("model="):] for p in parts if p.startswith("model=")), None)
    modality = next((p[len("modality="):] for p in parts if p.startswith("modality=")), None)
    return (model, modality) if model is not None and modality is not None else None


@dataclass(frozen=True)
class CacheLayout:
    """The paths of one embedding-cache key (see :mod:`embedeval.pipeline.cache` for what a key pins)."""

    key: str

    @property
    def base(self) -> str:
        return _join(CACHE_DIR, self.key)

    @property
    def key_file(self) -> str:
        return _join(self.base, "key.json")

    def kind_dir(self, kind: str) -> str:
        """``image`` (images and sketches share the image tower) or ``text``."""
        return _join(self.base, kind)

    def entries_file(self, kind: str, modality: str, digest: str) -> str:
        return _join(self.kind_dir(kind), f"part-{modality}-{digest}.parquet")
