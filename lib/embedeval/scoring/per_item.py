"""Per-item values: the units a mean score averages over, kept so that models can be compared pairwise.

A score that is a mean over units (CorrEmbed's per-anchor r, R@K's per-query hit, mAP's per-query AP,
a probe's per-test-item correctness) can hand its unit values to :func:`per_item_table`; the unit commits
them with its rows (``per_item.parquet`` in the unit's folder) and the job writes every model's values to
``runs/<id>/scores/per_item.parquet``. :mod:`embedeval.scoring.paired` then resamples the items all
models share with one set of bootstrap indices. Every value here is higher-is-better (hits, AP, r,
correctness).

Schema (:data:`PER_ITEM_SCHEMA`): the score identity (model, task, target, metric, k, split, protocol)
plus ``item`` (the manifest id), ``sub`` (the embedding row's sub: a caption's index; 0 for one
vector per item) and ``value`` (float64). Memory: O(units) per score.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from embedeval.scoring.schema import ScoreRow, identity_fields


PER_ITEM_SCHEMA = pa.schema([
    *identity_fields(),
    pa.field("item", pa.string(), nullable=False),      # manifest id of the unit (anchor, query, test item)
    pa.field("sub", pa.int16(), nullable=False),        # embedding sub of the unit (caption index), else 0
    pa.field("value", pa.float64(), nullable=False),
])


def per_item_table(row: ScoreRow, ids: pa.Array | list[str], values: np.ndarray,
                   subs: np.ndarray | None = None) -> pa.Table:
    """The per-item values of the score ``row``: one line per unit, in the order given.

    ``ids`` are the units' manifest ids (``CatalogueView.ids.take(rows)``), ``values`` their finite
    values (the ones the score's mean is over), ``subs`` their embedding subs (default 0).
    """
    values = np.asarray(values, dtype=np.float64)
    ids = pa.array(ids, pa.string()) if isinstance(ids, list) else ids.cast(pa.string())
    n = values.size
    if len(ids) != n:
        raise ValueError(f"per_item_table: {len(ids)} ids for {n} values")
    if not np.all(np.isfinite(values)):
        raise ValueError("per_item_table: values must be finite (drop and count undefined units first)")
    sub = np.zeros(n, dtype=np.int16) if subs is None else np.asarray(subs, dtype=np.int16)

    def repeat(value: object, type_: pa.DataType) -> pa.Array:
        return pa.array([value] * n, type_)

    return pa.table({
        "model": repeat(row.model, pa.string()), "task": repeat(row.task, pa.string()),
        "target": repeat(row.target, pa.string()), "metric": repeat(row.metric, pa.string()),
        "k": repeat(row.k, pa.int64()), "split": repeat(row.split, pa.string()),
        "protocol": repeat(row.protocol, pa.string()), "item": ids, "sub": pa.array(sub, pa.int16()),
        "value": pa.array(values, pa.float64()),
    }, schema=PER_ITEM_SCHEMA)


def ids_of(ctx_catalogue_ids: pa.Array, manifest_rows: np.ndarray) -> pa.Array:
    """The manifest ids of ``manifest_rows`` (an Arrow take; O(len(rows)))."""
    return ctx_catalogue_ids.take(pa.array(np.asarray(manifest_rows, dtype=np.int64)))


def concat_per_item(tables: list[pa.Table]) -> pa.Table | None:
    """One unit's per-item tables as one (None when there are none)."""
    return pa.concat_tables(tables) if tables else None
