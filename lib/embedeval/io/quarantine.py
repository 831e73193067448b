"""Quarantined items: what was set aside, at which stage, and why. Nothing bad is dropped silently.

Errors are written as Parquet under ``runs/<run_id>/errors/``: manifest-stage problems in
``errors/stage=manifest/``, pipeline problems per partition in ``errors/model=<m>/modality=<x>/`` so that
re-embedding a partition replaces exactly its own errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),          # null when the row had no usable id
        pa.field("sub", pa.int16()),          # caption index for text; 0 otherwise
        pa.field("modality", pa.string()),    # image | sketch | text | null (the whole item)
        pa.field("model", pa.string()),       # null for manifest-stage problems
        pa.field("stage", pa.string()),       # manifest | read | decode | embed | import
        pa.field("reason", pa.string()),
        pa.field("row", pa.int64()),          # manifest row (0-based) when known
    ]
)


@dataclass
class QuarantineLog:
    """An append-only list of quarantined items that becomes an Arrow table."""

    rows: list[dict] = field(default_factory=list)

    def add(self, id: str | None, stage: str, reason: str, *, sub: int = 0, modality: str | None = None,
            model: str | None = None, row: int | None = None) -> None:
        self.rows.append({"id": id, "sub": sub, "modality": modality, "model": model, "stage": stage,
                          "reason": reason, "row": row})

    def __len__(self) -> int:
        return len(self.rows)

    def to_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=ERRORS_SCHEMA)

    def for_modality(self, modality: str) -> "QuarantineLog":
        """Entries that remove an item (or one caption) from ``modality``: whole-item ones and its own."""
        return QuarantineLog([r for r in self.rows if r["modality"] in (None, modality)])
