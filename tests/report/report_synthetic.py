"""Synthetic runs for the report tests: two scores tables that differ in known ways, example tables, images.

(A plainly named module rather than conftest.py: other test folders have their own conftest, so
``from conftest import`` would be ambiguous when the whole suite runs.)

Run ``r2`` (current) vs ``r1`` (previous):
- resnet50 corrembed/all moves 0.30 -> 0.40 with CIs +-0.02: beyond both intervals (significant);
- vit_b_16 corrembed/all moves 0.35 -> 0.36 with CIs +-0.02: inside both (within CI);
- clip_vitb32 is new in r2, old_model is only in r1; corr_knn k=500 is new in r2; pearson_all only in r1;
- random_resnet50 has weights_random=True and the highest NMI of all, to prove a random model is never best.
"""

from __future__ import annotations

import io
import random
from dataclasses import replace

from PIL import Image

from embedeval.io.score_files import commit_scores, read_score_table, read_scores_commit
from embedeval.io.storage import Storage
from embedeval.scoring.prototypes import AMBIGUITY_SCHEMA, EXAMPLES_SCHEMA
from embedeval.scoring.schema import ScoreRow, scores_table

REAL = ["resnet50", "vit_b_16", "clip_vitb32"]
RANDOM = "random_resnet50"
OLD_ONLY = "old_model"
ATTRS = ["age", "price"]


def _row(run_id: str, model: str, task: str, target: str, metric: str, value: float, *, k: int | None = None,
         split: str = "all", protocol: str = "standard", params: dict | None = None, half: float = 0.02, n: int = 500) -> ScoreRow:
    return ScoreRow(run_id=run_id, model=model, task=task, target=target, metric=metric, value=value, n=n,
                    seconds=0.5, weights_random=model == RANDOM, k=k, split=split, ci_low=value - half,
                    ci_high=value + half, protocol=protocol, params=params)


def current_rows(run_id: str = "r2", models: list[str] | None = None) -> list[ScoreRow]:
    """A full synthetic scores table: every task, several models, values with CIs."""
    models = models or [*REAL, RANDOM]
    base = {"resnet50": 0.40, "vit_b_16": 0.36, "clip_vitb32": 0.45, RANDOM: 0.05, OLD_ONLY: 0.2}
    rows: list[ScoreRow] = []
    for m in models:
        rng = random.Random(m)   # per model, so a model's rows do not depend on which other models exist
        b = base[m]
        # protocols and params as the scorer writes them (embedeval.scoring)
        rows.append(_row(run_id, m, "corrembed", "all", "corrembed", b, protocol="per-anchor", params={"anchors": "all"}))
        rows.append(_row(run_id, m, "corrembed", "colour", "corrembed", b * 0.8 + rng.uniform(-0.02, 0.02),
                         protocol="per-anchor", params={"anchors": "all"}))
        for k in (10, 50, 100, 500):
            knn = b * (0.55 + 0.1 * (k ** 0.25)) + rng.uniform(0, 0.01)
            rows.append(_row(run_id, m, "corrembed", "all", "corr_knn", knn, k=k, half=0.03, protocol="per-anchor", params={"anchors": "all"}))
        for a in ATTRS:
            reg = min(0.95, b * 1.6 + rng.uniform(-0.05, 0.05))
            rows.append(_row(run_id, m, "rankability", a, "spearman", reg, split="test", protocol="regression"))
            rows.append(_row(run_id, m, "rankability", a, "spearman", reg * 0.7, split="test", protocol="extremes"))
            for n in (4, 16, 64, 256):
                rows.append(_row(run_id, m, "rankability", a, "spearman", reg * (1 - 1 / (1 + n ** 0.5)), k=n,
                                 split="test", protocol="fewshot", half=0.08 / (n ** 0.25)))
        if m == "clip_vitb32" or m == RANDOM:
            scale = 1.0 if m != RANDOM else 0.02
            for d, r1 in (("image->text", 0.52), ("text->image", 0.38)):
                for k, f in ((1, 1.0), (5, 1.5), (10, 1.7)):
                    rows.append(_row(run_id, m, "retrieval", d, f"R@{k}", min(0.99, r1 * f) * scale, k=k, n=1000))
            rows.append(_row(run_id, m, "retrieval", "image<->text", "rsum", 410.0 * scale, half=6.0, n=1000,
                             params={"ks": [1, 5, 10]}))
        for split, f in (("seen", 1.0), ("unseen", 0.6)):
            for metric, v in (("mAP@all", 0.5), ("mAP@200", 0.55), ("P@100", 0.6), ("P@200", 0.57)):
                k = None if metric.endswith("@all") else int(metric.split("@")[1])
                rows.append(_row(run_id, m, "retrieval", "sketch->image", metric, v * f * b / 0.4, split=split,
                                 n=300, k=k))
        nmi = 0.99 if m == RANDOM else 0.3 + b
        rows.append(_row(run_id, m, "prototypes", "image", "nmi", nmi, half=0.01, protocol="kmeans", params={"k": 8}))
        rows.append(_row(run_id, m, "prototypes", "image", "purity", 0.5 + b / 2, half=0.01,
                         protocol="kmeans", params={"k": 8}))
    return rows


def previous_rows(run_id: str = "r1") -> list[ScoreRow]:
    """r1: r2's table for the shared models, with the known changes (see the module docstring)."""
    rows = []
    for r in current_rows(run_id, models=["resnet50", "vit_b_16", RANDOM, OLD_ONLY]):
        if r.metric == "corr_knn" and r.k == 500:
            continue
        if (r.model, r.task, r.target, r.metric) == ("resnet50", "corrembed", "all", "corrembed"):
            r = replace(r, value=0.30, ci_low=0.28, ci_high=0.32)
        if (r.model, r.task, r.target, r.metric) == ("vit_b_16", "corrembed", "all", "corrembed"):
            r = replace(r, value=0.35, ci_low=0.33, ci_high=0.37)
        rows.append(r)
    rows.append(_row(run_id, "resnet50", "corrembed", "all", "pearson_all", 0.21))
    return rows


def write_scores(storage: Storage, run_id: str, rows: list[ScoreRow], created_at: str | None,
                 comparisons: object = None, per_item: object = None) -> None:
    """Commit a score stage's outputs as the score job does (no example tables)."""
    meta = {"run_id": run_id, **({"created_at": created_at} if created_at else {})}
    extra = {name: t for name, t in (("comparisons", comparisons), ("per_item", per_item)) if t is not None}
    commit_scores(storage, run_id, scores_table(rows), AMBIGUITY_SCHEMA.empty_table(), EXAMPLES_SCHEMA.empty_table(),
                  meta, extra=extra or None)


def populate(storage: Storage) -> None:
    """r1 then r2 in time order (scores metadata ``created_at``)."""
    write_scores(storage, "r1", previous_rows("r1"), "2026-01-01T10:00:00Z")
    write_scores(storage, "r2", current_rows("r2"), "2026-01-02T10:00:00Z")


def color_png(item_id: str) -> bytes:
    """A small solid-colour PNG whose colour depends on the id (a stand-in for a catalogue image)."""
    h = sum(ord(c) * 31 ** i for i, c in enumerate(item_id)) % 0xFFFFFF
    im = Image.new("RGB", (160, 120), ((h >> 16) & 255, (h >> 8) & 255, h & 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


LABELS = ["dress", "shirt", "jeans", "sneaker", "handbag", "a-very-long-label-name-for-wrapping"]


def write_examples(storage: Storage, run_id: str, models: list[str]) -> None:
    """Recommit a run's scores with prototypes.parquet and ambiguity.parquet (what the report's examples read)."""
    import pyarrow as pa

    protos, ambig = [], []
    for m in models:
        for p in range(8):
            for rank in range(1, 11):
                item = f"item{(p * 10 + rank) % 57}"
                protos.append({"model": m, "modality": "image", "prototype": p, "id": item,
                               "label": LABELS[(p + rank // 4) % len(LABELS)], "distance": 0.05 * rank, "rank": rank})
        for rank in range(1, 11):
            ambig.append({"model": m, "modality": "image", "kind": "pair", "id_a": f"item{rank}",
                          "id_b": f"item{rank + 20}", "label_a": LABELS[rank % 6], "label_b": LABELS[(rank + 1) % 6],
                          "similarity": 0.95 - 0.02 * rank, "prototype": rank % 4, "score": None, "rank": rank})
            ambig.append({"model": m, "modality": "image", "kind": "item", "id_a": f"item{rank + 30}", "id_b": None,
                          "label_a": LABELS[rank % 6], "label_b": None, "similarity": None, "prototype": rank % 4,
                          "score": 1.0 - 0.05 * rank, "rank": rank})
    found = read_scores_commit(storage, run_id)
    assert found is not None, "write_scores first"
    commit_scores(storage, run_id, read_score_table(storage, found), pa.Table.from_pylist(ambig),
                  pa.Table.from_pylist(protos), found.fields["metadata"])


def image_loader(item_id: str) -> bytes | None:
    """Images for most ids; none for item7 (missing) and garbage for item8 (undecodable)."""
    if item_id == "item7":
        return None
    if item_id == "item8":
        return b"not an image"
    return color_png(item_id)
