"""The score stage's outputs: ``scores.parquet``, ``ambiguity.parquet`` and ``prototypes.parquet`` under
``runs/<id>/scores/``, made visible together by that folder's ``_COMMITTED.json`` (:mod:`embedeval.io.commit`).

The score job calls :func:`commit_scores` once, at its end; the report and ``runs list``/``runs show``
read only through :func:`read_scores_commit` / :func:`read_score_table`, so a killed or running score stage
(tables half rewritten, the marker not yet there) is "no scores" for them, never a mix of two attempts.
The marker also carries the tables' Parquet metadata (settings, ``embedeval.score.created_at``).
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from embedeval.io.commit import Commit, commit, read_commit, read_committed_table, uncommit, write_table
from embedeval.io.layout import RunLayout
from embedeval.io.storage import Storage

FORMAT_VERSION = 1
ScoreTable = Literal["scores", "ambiguity", "prototypes", "per_item", "comparisons"]
_FILES: dict[str, str] = {"scores": "scores.parquet", "ambiguity": "ambiguity.parquet",
                          "prototypes": "prototypes.parquet", "per_item": "per_item.parquet",
                          "comparisons": "comparisons.parquet"}


def commit_scores(storage: Storage, run_id: str, scores: pa.Table, ambiguity: pa.Table, prototypes: pa.Table,
                  metadata: dict[str, str], *, layout: RunLayout | None = None,
                  extra: dict[str, pa.Table] | None = None) -> None:
    """Write the tables (each stamped with ``metadata``), then the stage marker listing them.
    ``layout`` (default ``RunLayout(run_id)``) may move the folder (a common panel's); ``extra`` adds
    ``per_item`` / ``comparisons`` tables (the paired model comparison)."""
    layout = layout or RunLayout(run_id)
    uncommit(storage, layout.scores)   # a rerun: readers see no scores until the new ones are committed
    files = [write_table(storage, layout.ambiguity_table, ambiguity, metadata),
             write_table(storage, layout.prototypes_table, prototypes, metadata),
             write_table(storage, layout.scores_table, scores, metadata)]
    for name, table in (extra or {}).items():
        files.append(write_table(storage, layout.score_file(_FILES[name]), table, metadata))
    commit(storage, layout.scores, files, format_version=FORMAT_VERSION, run_id=run_id, metadata=metadata)


def read_scores_commit(storage: Storage, run_id: str, *, layout: RunLayout | None = None) -> Commit | None:
    """The score stage's marker of a run (or of the folder ``layout`` names), None when none is committed."""
    return read_commit(storage, (layout or RunLayout(run_id)).scores)


def read_committed_score_table(storage: Storage, run_id: str, which: ScoreTable = "scores", *,
                               layout: RunLayout | None = None,
                               columns: list[str] | None = None) -> pa.Table | None:
    """One table of a run's committed score stage (or of the folder ``layout`` names), or None when the
    stage has not committed or its marker does not list the table."""
    found = read_scores_commit(storage, run_id, layout=layout)
    return None if found is None else read_score_table(storage, found, which, columns)


def read_score_table(storage: Storage, found: Commit, which: ScoreTable = "scores",
                     columns: list[str] | None = None) -> pa.Table | None:
    """One committed table (checked against the marker), or None when the marker does not list it."""
    entry = found.file(_FILES[which])
    return None if entry is None else read_committed_table(storage, entry, columns)
