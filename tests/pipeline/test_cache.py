"""Re-scoring a grown catalogue: only new or changed items are embedded; results equal a from-scratch run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedeval.config import parse_config
from embedeval.demo.corpus import write_demo_corpus
from embedeval.io.embeddings import read_committed
from embedeval.io.storage import Storage
from embedeval.pipeline.embed import embed_run

pytestmark = pytest.mark.usefixtures("ray_local")

MODELS = ["builtin:pixelstats", {"spec": "open_clip:ViT-S-32:random", "name": "clip"}]


def _config(root: Path, manifest: Path, run_id: str, use_cache: bool = True):  # noqa: ANN202
    return parse_config({"root": str(root), "run_id": run_id, "manifest": str(manifest), "models": MODELS,
                         "embed": {"batch_size": 16, "modalities": ["image", "text"], "use_cache": use_cache}})


def test_grown_catalogue_embeds_only_new_and_changed_items(tmp_path: Path) -> None:
    root = tmp_path / "out"
    corpus = write_demo_corpus(tmp_path / "demo", n_items=40)
    first = embed_run(_config(root, corpus.manifest, "r1"), echo=lambda _: None)
    assert all(p.from_cache == 0 for p in first.partitions)

    grown = write_demo_corpus(tmp_path / "demo", n_items=44)   # the same 40 items plus 4 new ones
    changed = grown.root / "images" / "item-000001.png"
    img = Image.open(changed).convert("RGB")
    img.putpixel((0, 0), (0, 0, 0))
    img.save(changed)
    second = embed_run(_config(root, grown.manifest, "r2"), echo=lambda _: None)
    by_key = {(p.model, p.modality): p for p in second.partitions}
    # images: 4 new + 1 changed are embedded, 39 come from the cache. Captions are content-addressed: a new
    # item whose caption text already occurred (e.g. "a small red solid circle") reuses that vector.
    for model in ("builtin-pixelstats", "clip"):
        assert by_key[(model, "image")].embedded == 44 and by_key[(model, "image")].from_cache == 39
    import pyarrow.parquet as pq

    old_captions = {c for caps in pq.read_table(tmp_path / "demo/corpus/manifest.parquet").column("captions")
                    .to_pylist()[:40] for c in caps}
    new_captions = [c for caps in pq.read_table(grown.manifest).column("captions").to_pylist() for c in caps]
    expected_hits = sum(c in old_captions for c in new_captions)
    assert 120 <= expected_hits < 132
    assert by_key[("clip", "text")].embedded == 132 and by_key[("clip", "text")].from_cache == expected_hits

    scratch = embed_run(_config(tmp_path / "scratch", grown.manifest, "r3", use_cache=False), echo=lambda _: None)
    assert all(p.from_cache == 0 for p in scratch.partitions)
    for model, modality in by_key:
        cached = read_committed(Storage(str(root)), "r2", model, modality)
        fresh = read_committed(Storage(str(tmp_path / "scratch")), "r3", model, modality)
        assert cached.ids.tolist() == fresh.ids.tolist() and cached.subs.tolist() == fresh.subs.tolist()
        np.testing.assert_allclose(cached.vectors, fresh.vectors, rtol=1e-5, atol=1e-5)
    # ...and so do the scores of the re-scored grown catalogue.
    from embedeval.workflow import score_from_config

    keys = ["model", "task", "target", "metric", "k", "split", "variant"]
    cached_scores = score_from_config(_config(root, grown.manifest, "r2"), echo=lambda _: None).to_pandas()
    fresh_scores = score_from_config(_config(tmp_path / "scratch", grown.manifest, "r3", use_cache=False),
                                     echo=lambda _: None).to_pandas()
    joined = cached_scores.merge(fresh_scores, on=keys, suffixes=("_cached", "_fresh"))
    assert len(joined) == len(cached_scores) == len(fresh_scores) > 50
    for column in ("value", "ci_low", "ci_high"):
        np.testing.assert_allclose(joined[f"{column}_cached"].astype(float), joined[f"{column}_fresh"].astype(float),
                                   rtol=0, atol=1e-6, equal_nan=True)
    old = read_committed(Storage(str(root)), "r1", "builtin-pixelstats", "image")
    new = read_committed(Storage(str(root)), "r2", "builtin-pixelstats", "image")
    assert not np.array_equal(old.vectors[1], new.vectors[1])   # the changed image was re-embedded
