"""The scores contract: one tidy (long) table per run, ``runs/<run_id>/scores/scores.parquet``
(its path: :class:`embedeval.io.layout.RunLayout`; its commit: :mod:`embedeval.io.score_files`).

One row per (model, task, target, metric, k, split). The report stage reads only this table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
        pa.field("variant", pa.string(), nullable=True),     # fit method, AP convention, ...; null where none
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
    variant: str | None = None
    note: str | None = None


def scores_table(rows: list[ScoreRow]) -> pa.Table:
    """Rows -> a table in SCORES_SCHEMA, sorted so that reruns produce identical files."""
    records = [asdict(r) for r in rows]
    table = pa.Table.from_pylist(records, schema=SCORES_SCHEMA)
    keys = ["model", "task", "target", "metric", "k", "split", "variant"]
    return table.sort_by([(k, "ascending") for k in keys])
