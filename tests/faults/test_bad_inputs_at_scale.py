"""A catalogue broken in every way we know (5%, and at least one item of every kind): quarantined with
reasons, counts add up, the job finishes and scores; the untouched items' vectors equal those of a run on
untouched items alone.

200 items (15 broken, one of each kind), one caption per item and open_clip's ViT-S-32-alt (the demo's, with
a narrower text tower): the embedding of the items was most of this test's CPU time, and the broken kinds
need a caption each, not three.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from embedeval.config import parse_config
from embedeval.demo.broken import KINDS, break_corpus
from embedeval.demo.corpus import write_demo_corpus
from embedeval.io.embeddings import read_committed
from embedeval.io.storage import Storage
from embedeval.pipeline.embed import embed_run
from embedeval.workflow import score_from_config

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

MODELS = ["builtin:pixelstats", {"spec": "open_clip:ViT-S-32-alt:random", "name": "clip"}]


def _config(root: Path, manifest: Path, run_id: str):  # noqa: ANN202
    return parse_config({"root": str(root), "run_id": run_id, "manifest": str(manifest), "models": MODELS,
                         "tag_categories": str(manifest.parent / "tag_categories.csv"),
                         "embed": {"batch_size": 32, "max_image_pixels": 4_000_000, "use_cache": False}})


def test_broken_five_percent(tmp_path: Path) -> None:
    n = 200
    corpus = write_demo_corpus(tmp_path / "demo", n_items=n, captions_per_item=1)
    broken = break_corpus(corpus.root, fraction=0.05, huge_side=2100)
    assert set(broken.kinds.values()) == set(KINDS)   # every kind is present at least once
    broken_summary = embed_run(_config(tmp_path / "out", corpus.manifest, "broken"), echo=lambda _: None)
    scores = score_from_config(_config(tmp_path / "out", corpus.manifest, "broken"), echo=lambda _: None)
    assert scores.num_rows > 0
    errors_by_id = (pl.read_parquet(str(tmp_path / "out/runs/broken/errors") + "/**/*.parquet")
                    .with_columns(reason=pl.col("stage") + ": " + pl.col("reason")))

    # Every broken item is quarantined with its reason (for every model that reads it); valid-odd ones embed.
    storage = Storage(str(tmp_path / "out"))
    pix = set(read_committed(storage, "broken", "builtin-pixelstats", "image").ids.tolist())
    for rid, kind in broken.kinds.items():
        expected = KINDS[kind]
        reasons = errors_by_id.filter(pl.col("id") == rid)["reason"].to_list()
        if kind in ("empty_caption",):
            assert any("empty caption" in r for r in reasons)
        elif kind == "duplicate_id":
            assert any("duplicate id" in r for r in reasons) and rid in pix
        elif expected is None:
            assert rid in pix, f"{kind} should embed"
        else:
            assert rid not in pix and any(expected in r for r in reasons), (kind, reasons)

    # Counts add up per model and modality: read = embedded + quarantined.
    for part in broken_summary.partitions:
        manifest_q = broken_summary.manifest_quarantined_by_modality[part.modality]
        assert part.inputs == part.embedded + part.quarantined
        if part.modality not in ("text", "prompt"):   # captions per item; prompts are no manifest rows
            assert part.embedded + part.quarantined + manifest_q == broken_summary.manifest_rows

    # A run on untouched items alone (a seeded third of them: each item's vector depends on its own input
    # only, whatever shares its batch) gives the same vectors for them.
    clean = pq.read_table(corpus.root / "manifest.clean.parquet")
    good = clean.filter(pc.invert(pc.is_in(clean.column("id"), value_set=pl.Series(list(broken.kinds)).to_arrow())))
    good = good.take(np.sort(np.random.default_rng(0).choice(good.num_rows, size=good.num_rows // 3, replace=False)))
    pq.write_table(good, corpus.root / "manifest.good.parquet")
    good_summary = embed_run(_config(tmp_path / "out", corpus.root / "manifest.good.parquet", "good"),
                             echo=lambda _: None)
    assert good_summary.manifest_quarantined == 0
    assert all(p.quarantined == 0 for p in good_summary.partitions), good_summary.lines()
    for model, modality in (("builtin-pixelstats", "image"), ("builtin-pixelstats", "sketch"),
                            ("clip", "image"), ("clip", "text")):
        a = read_committed(storage, "broken", model, modality)
        b = read_committed(storage, "good", model, modality)
        keys_b = {(i, s): k for k, (i, s) in enumerate(zip(b.ids.tolist(), b.subs.tolist()))}
        shared = [(k, keys_b[(i, s)]) for k, (i, s) in enumerate(zip(a.ids.tolist(), a.subs.tolist()))
                  if (i, s) in keys_b]
        assert len(shared) == len(b), (model, modality)
        rows_a, rows_b = zip(*shared)
        np.testing.assert_allclose(a.vectors[list(rows_a)], b.vectors[list(rows_b)], rtol=1e-5, atol=1e-5)
