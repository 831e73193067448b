"""Like-for-like scores of two runs: both re-scored on the items they share (the *common panel*).

A catalogue that grows changes scores without any model getting worse: R@K falls and median rank rises
when the gallery grows, CorrEmbed's anchors change, k-means gets another label. To tell "the catalogue
changed" from "the model got worse", the score stage scores the current run's embeddings *and* the
previous run's embeddings on the same panel: the ids present in both manifests, with the current
manifest's metadata (tags, labels, attributes, splits) for both, and the current score settings. The two
tables differ only by the vectors, so a significant drop between them is a regression of the model (or
of its inputs), not of the catalogue. Exact, like every score: the panel is a smaller catalogue, scored by
the same tiles.

Layout, under the *current* run (an earlier run's folder is never written)::

    runs/<run>/scores/panel/vs=<previous>/run=<run>/scores.parquet        current vectors on the panel
    runs/<run>/scores/panel/vs=<previous>/run=<previous>/scores.parquet   previous vectors on the panel
    runs/<run>/scores/panel/vs=<previous>/_PANEL.json                     written last: counts, the commit

When both manifests hold the same ids the ordinary scores already are like for like: only the marker is
written (``identical: true``) and nothing is re-scored. Cost: two score stages over the shared items
(O(shared^2 d) for the all-pairs parts, like the run itself); enabled by ``score.common_panel`` or
``embedeval run --fail-on-regression``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from embedeval.io.embeddings import list_committed
from embedeval.io.layout import RunLayout
from embedeval.io.storage import Storage
from embedeval.scoring.settings import ScoreSettings

MIN_SHARED_ITEMS = 3


@dataclass(frozen=True)
class PanelInfo:
    """What ``_PANEL.json`` records."""

    run_id: str
    previous_run_id: str
    shared: int                  # items in both manifests
    current_items: int
    previous_items: int
    identical: bool              # same ids: the run's own scores are the like-for-like comparison
    reason: str | None = None    # why no panel could be scored (then there are no panel tables)

    @property
    def scored(self) -> bool:
        return not self.identical and self.reason is None


def panel_layout(run_id: str, previous_run_id: str, which: str) -> RunLayout:
    """The layout whose score-stage folder holds run ``which``'s vectors scored on the panel of ``run_id``
    against ``previous_run_id`` (``which`` is one of the two)."""
    return RunLayout(which, scores_dir=RunLayout(run_id).panel_scores(previous_run_id, which))


def read_panel(storage: Storage, run_id: str, previous_run_id: str) -> PanelInfo | None:
    """The committed panel of ``run_id`` against ``previous_run_id``, or None when none was made."""
    rel = RunLayout(run_id).panel_marker(previous_run_id)
    if not storage.exists(rel):
        return None
    data = storage.read_json(rel)
    return PanelInfo(**{k: data.get(k) for k in PanelInfo.__dataclass_fields__})


def score_common_panel(storage: Storage, run_id: str, previous_run_id: str, manifest: pa.Table,
                       previous_manifest: pa.Table, tag_categories: dict[str, str] | None, settings: ScoreSettings,
                       *, category_weights: dict[str, float] | None = None,
                       progress: Callable[[str], None] | None = None) -> PanelInfo:
    """Score both runs' embeddings on the ids both manifests hold; commit ``_PANEL.json`` last.

    Driver memory: O(N) ids for the intersection, then whatever :func:`score_run` needs for the panel.
    """
    from embedeval.scoring.job import score_run

    say = progress or (lambda msg: None)
    ids, prev_ids = manifest.column("id").combine_chunks(), previous_manifest.column("id").combine_chunks()
    in_previous = pc.is_in(ids, value_set=prev_ids)
    shared = int(pc.sum(in_previous).as_py() or 0)
    info = dict(run_id=run_id, previous_run_id=previous_run_id, shared=shared, current_items=len(ids),
                previous_items=len(prev_ids))
    identical = shared == len(ids) == len(prev_ids)
    reason = None
    if not identical:
        if shared < MIN_SHARED_ITEMS:
            reason = f"the runs share {shared} items"
        elif not list_committed(storage, previous_run_id):
            reason = f"run {previous_run_id!r} has no committed embeddings any more (pruned?)"
    if not identical and reason is None:
        panel = manifest.filter(in_previous)
        for which in (run_id, previous_run_id):
            say(f"common panel: scoring run {which}'s vectors on the {shared} items both runs share")
            score_run(storage, which, panel, tag_categories, settings, category_weights=category_weights,
                      progress=say, out_dir=panel_layout(run_id, previous_run_id, which).scores)
    elif reason:
        say(f"common panel vs {previous_run_id}: not scored: {reason}")
    record = PanelInfo(**info, identical=identical, reason=reason)
    storage.write_json(RunLayout(run_id).panel_marker(previous_run_id),
                       {**record.__dict__, "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    return record

