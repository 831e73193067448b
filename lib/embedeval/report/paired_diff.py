"""Paired intervals of the night-over-night change, where the two runs scored the same items.

A score that is a mean over units (anchors, queries, test items: the per-item values of
:mod:`embedeval.scoring.per_item`) was computed on many of the same units both nights. Comparing the two
runs' separate intervals ignores that a hard query is hard both nights; the paired interval resamples the
units both runs share with one set of indices and takes the percentile interval of the difference of
means (new - old), like the paired model comparison does for two models of one run
(:func:`embedeval.scoring.paired.paired_bootstrap`).

Memory: both runs' per-item tables (O(units) rows per score), then one score at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedeval.io.layout import RunLayout
from embedeval.io.score_files import read_committed_score_table
from embedeval.io.storage import Storage
from embedeval.report.scores import ScoreKey
from embedeval.scoring.bootstrap import derive_seed
from embedeval.scoring.paired import paired_bootstrap

#: Resamples of a night-over-night paired interval, and its coverage.
RESAMPLES = 1000
CONFIDENCE = 0.95
_KEY = ("model", "task", "target", "metric", "k", "split", "protocol")


@dataclass(frozen=True)
class PairedChange:
    """new - old on the units both runs share: the observed difference and its paired interval."""

    shared: int
    diff: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def load_per_item(storage: Storage, run_id: str, *, layout: RunLayout | None = None) -> pa.Table | None:
    """A run's committed per-item values (or those of the score folder ``layout`` names: a common
    panel's), or None (no marker, or a run scored before they were kept)."""
    return read_committed_score_table(storage, run_id, "per_item", layout=layout)


def paired_changes_between(storage: Storage, new: RunLayout, old: RunLayout) -> dict[ScoreKey, PairedChange] | None:
    """:func:`paired_changes` of two committed score folders (two runs, or both sides of a common panel);
    None when either kept no per-item values."""
    units = [load_per_item(storage, layout.run_id, layout=layout) for layout in (new, old)]
    return paired_changes(*units) if units[0] is not None and units[1] is not None else None


def paired_changes(new: pa.Table, old: pa.Table, *, resamples: int = RESAMPLES,
                   confidence: float = CONFIDENCE) -> dict[ScoreKey, PairedChange]:
    """Per score identity present in both tables: the paired interval of new - old over the (item, sub)
    units both have (at least 2). The seed depends on the identity only, so a rebuilt report is the same."""
    joined = _keyed(new).join(_keyed(old), keys=["key", "item", "sub"], join_type="inner",
                              left_suffix="_new", right_suffix="_old")
    if joined.num_rows == 0:
        return {}
    joined = joined.sort_by([("key", "ascending"), ("item", "ascending"), ("sub", "ascending")])
    keys = joined.column("key").to_pylist()
    new_v = joined.column("value_new").to_numpy()
    old_v = joined.column("value_old").to_numpy()
    out: dict[ScoreKey, PairedChange] = {}
    bounds = np.flatnonzero(np.r_[True, np.array(keys[1:], dtype=object) != np.array(keys[:-1], dtype=object), True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo < 2:
            continue
        identity = _identity(keys[lo])
        result = paired_bootstrap(np.vstack([new_v[lo:hi], old_v[lo:hi]]), resamples,
                                  derive_seed(0, "night-over-night", *map(str, identity)), confidence)
        out[identity] = PairedChange(int(hi - lo), float(result.diff[0, 1]), float(result.diff_low[0, 1]),
                                     float(result.diff_high[0, 1]))
    return out


def _keyed(table: pa.Table) -> pa.Table:
    """(key, item, sub, value) with the identity joined into one string key (k's null as an empty field)."""
    parts = [pc.fill_null(pc.cast(table.column(c), pa.string()), "") for c in _KEY]
    key = pc.binary_join_element_wise(*parts, "\x1f")
    return pa.table({"key": key, "item": table.column("item"), "sub": table.column("sub"),
                     "value": pc.cast(table.column("value"), pa.float64())})


def _identity(key: str) -> ScoreKey:
    model, task, target, metric, k, split, protocol = key.split("\x1f")
    return (model, task, target, metric, int(k) if k else None, split, protocol)
