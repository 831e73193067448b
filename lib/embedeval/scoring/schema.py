"""The scores contract: one tidy (long) table per run, ``runs/<run_id>/scores/scores.parquet``
(its path: :class:`embedeval.io.layout.RunLayout`; its commit: :mod:`embedeval.io.score_files`).

One row per score identity (model, task, target, metric, k, split, protocol). ``protocol`` names the
*definition* of the number (``per-anchor``, ``all-pairs``, ``regression``, ``zs-sbir``...) and never a count
or a seed, so a catalogue that grows, gains a label or changes its sample size keeps every score's identity
and a nightly diff compares like with like. The parameters that produced the value (anchors, seeds, sample
sizes, k-means k, K lists) are in ``params``: a JSON object with sorted keys, which polars
(``str.json_decode``) and DuckDB (``params::JSON``, ``json_extract``) read as is. The report stage reads
only this table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

SCORES_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),      # model slug (partition name)
        pa.field("task", pa.string(), nullable=False),       # corrembed | rankability | retrieval | prototypes | modality_gap
        pa.field("target", pa.string(), nullable=False),     # tag category / 'all' / attribute / 'image->text' / modality
        pa.field("metric", pa.string(), nullable=False),     # corrembed, corr_knn, pearson_all, spearman, R@1, mAP@all, nmi...
        pa.field("k", pa.int64(), nullable=True),            # k of corr_knn / R@K / fewshot n; null where none
        pa.field("split", pa.string(), nullable=False),      # all | test | seen | unseen
        pa.field("value", pa.float64(), nullable=True),      # null only when undefined (see 'note')
        pa.field("ci_low", pa.float64(), nullable=True),     # bootstrap 95% interval
        pa.field("ci_high", pa.float64(), nullable=True),
        pa.field("n", pa.int64(), nullable=False),           # anchors / queries / items the value is over
        pa.field("seconds", pa.float64(), nullable=False),   # wall time of the computation
        pa.field("weights_random", pa.bool_(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),   # the definition: per-anchor, all-pairs, regression...
        pa.field("params", pa.string(), nullable=True),      # JSON object: anchors, seed, sample sizes, k-means k...
        pa.field("note", pa.string(), nullable=True),        # counted skips and why, conventions used
    ]
)


@dataclass
class ScoreRow:
    run_id: str
    model: str
    task: str
    target: str
    metric: str
    value: float | None
    n: int
    seconds: float
    weights_random: bool
    k: int | None = None
    split: str = "all"
    ci_low: float | None = None
    ci_high: float | None = None
    protocol: str = "standard"
    params: dict[str, Any] | None = None
    note: str | None = None


#: The columns that identify a score; the table holds at most one row per identity.
IDENTITY_COLUMNS = ("model", "task", "target", "metric", "k", "split", "protocol")


def identity_fields(*, model: bool = True) -> list[pa.Field]:
    """The identity columns as the scores table types them, for the tables keyed by a score
    (per-item values; comparisons, which leave the model out)."""
    return [SCORES_SCHEMA.field(c) for c in IDENTITY_COLUMNS if model or c != "model"]


def params_json(params: dict[str, Any] | None) -> str | None:
    """The ``params`` cell: compact JSON with sorted keys (byte-identical for equal parameters)."""
    if not params:
        return None
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=_plain)


def params_of(text: str | None) -> dict[str, Any] | None:
    """Inverse of :func:`params_json`."""
    return json.loads(text) if text else None


def _plain(value: Any) -> Any:
    """numpy scalars and tuples in params become JSON numbers and lists."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"params value {value!r} is not JSON")


def scores_table(rows: list[ScoreRow]) -> pa.Table:
    """Rows -> a table in SCORES_SCHEMA, sorted so that reruns produce identical files."""
    records = [asdict(r) for r in rows]
    for rec in records:
        rec["params"] = params_json(rec["params"])
    table = pa.Table.from_pylist(records, schema=SCORES_SCHEMA)
    return table.sort_by([(k, "ascending") for k in IDENTITY_COLUMNS])



#: Paired model comparison (:mod:`embedeval.scoring.paired`), one table per run. Per mean score identity
#: (less the model), over the items every compared model has a value for (``n``), all models resampled
#: with the *same* bootstrap indices:
#:
#: - ``kind = "pair"``: one row per ordered pair (model_a, model_b), a != b. ``diff`` = mean_a - mean_b on
#:   the shared items, ``diff_low`` / ``diff_high`` its paired percentile interval, ``p_a_better`` the
#:   share of resamples where mean_a > mean_b (strictly; equal means count for neither), ``separable``
#:   whether the interval excludes 0.
#: - ``kind = "rank"``: one row per model (``model_b`` null): ``rank`` = 1 + the number of models with a
#:   larger mean (1 = best; ties share the better rank), ``rank_low`` / ``rank_high`` the interval of the
#:   resampled ranks (lower / higher percentile, so they are whole ranks).
#:
#: ``params``: JSON ``{"resamples", "seed", "confidence"}``; the seed is derived from the run seed and the
#: score identity only, so every model of a score sees the same resamples.
COMPARISONS_SCHEMA = pa.schema(
    [
        *identity_fields(model=False),
        pa.field("kind", pa.string(), nullable=False),          # pair | rank
        pa.field("model_a", pa.string(), nullable=False),
        pa.field("model_b", pa.string(), nullable=True),        # null on rank rows
        pa.field("n", pa.int64(), nullable=False),              # shared items
        pa.field("mean_a", pa.float64(), nullable=False),
        pa.field("mean_b", pa.float64(), nullable=True),
        pa.field("diff", pa.float64(), nullable=True),
        pa.field("diff_low", pa.float64(), nullable=True),
        pa.field("diff_high", pa.float64(), nullable=True),
        pa.field("p_a_better", pa.float64(), nullable=True),
        pa.field("separable", pa.bool_(), nullable=True),
        pa.field("rank", pa.int64(), nullable=True),
        pa.field("rank_low", pa.int64(), nullable=True),
        pa.field("rank_high", pa.int64(), nullable=True),
        pa.field("params", pa.string(), nullable=True),
    ]
)
