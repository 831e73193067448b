"""Re-scoring a grown catalogue: only new or changed items are embedded; results equal a from-scratch run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from embedeval.config import parse_config
from embedeval.demo.corpus import write_demo_corpus
from embedeval.io.embeddings import read_committed
from embedeval.io.storage import Storage
from embedeval.pipeline.embed import embed_run

pytestmark = pytest.mark.usefixtures("ray_local")

MODELS = ["builtin:pixelstats", {"spec": "open_clip:ViT-S-32:random", "name": "clip"}]


def _config(root: Path, manifest: Path, run_id: str, use_cache: bool = True, models: list = MODELS,  # noqa: ANN202
            modalities: tuple[str, ...] = ("image", "text")):
    return parse_config({"root": str(root), "run_id": run_id, "manifest": str(manifest), "models": models,
                         "embed": {"batch_size": 16, "modalities": list(modalities), "use_cache": use_cache}})


def _change_pixel(path: Path) -> None:
    img = Image.open(path).convert("RGB")
    img.putpixel((0, 0), (0, 0, 0))
    img.save(path)


def _assert_same_vectors(root: Path, run_id: str, scratch: Path, scratch_run: str, partitions) -> None:  # noqa: ANN001
    for model, modality in partitions:
        cached = read_committed(Storage(str(root)), run_id, model, modality)
        fresh = read_committed(Storage(str(scratch)), scratch_run, model, modality)
        assert cached.ids.tolist() == fresh.ids.tolist() and cached.subs.tolist() == fresh.subs.tolist()
        np.testing.assert_allclose(cached.vectors, fresh.vectors, rtol=1e-5, atol=1e-5)


def test_grown_catalogue_embeds_only_new_and_changed_items(tmp_path: Path) -> None:
    root = tmp_path / "out"
    corpus = write_demo_corpus(tmp_path / "demo", n_items=40)
    first = embed_run(_config(root, corpus.manifest, "r1"), echo=lambda _: None)
    assert all(p.from_cache == 0 for p in first.partitions)

    grown = write_demo_corpus(tmp_path / "demo", n_items=44)   # the same 40 items plus 4 new ones
    changed = grown.root / "images" / "item-000001.png"
    _change_pixel(changed)
    second = embed_run(_config(root, grown.manifest, "r2"), echo=lambda _: None)
    by_key = {(p.model, p.modality): p for p in second.partitions}
    # images: 4 new + 1 changed are embedded, 39 come from the cache. Captions are content-addressed: a new
    # item whose caption text already occurred (e.g. "a small red solid circle") reuses that vector.
    for model in ("builtin-pixelstats", "clip"):
        assert by_key[(model, "image")].embedded == 44 and by_key[(model, "image")].from_cache == 39
    old_captions = {c for caps in pq.read_table(tmp_path / "demo/corpus/manifest.parquet").column("captions")
                    .to_pylist()[:40] for c in caps}
    new_captions = [c for caps in pq.read_table(grown.manifest).column("captions").to_pylist() for c in caps]
    expected_hits = sum(c in old_captions for c in new_captions)
    assert 120 <= expected_hits < 132
    assert by_key[("clip", "text")].embedded == 132 and by_key[("clip", "text")].from_cache == expected_hits

    scratch = embed_run(_config(tmp_path / "scratch", grown.manifest, "r3", use_cache=False), echo=lambda _: None)
    assert all(p.from_cache == 0 for p in scratch.partitions)
    _assert_same_vectors(root, "r2", tmp_path / "scratch", "r3", by_key)
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


def test_images_and_sketches_of_a_grown_catalogue_both_come_from_the_cache(tmp_path: Path) -> None:
    """Images and sketches share the image tower's cache kind; neither may evict the other's entries."""
    root = tmp_path / "out"
    models = ["builtin:pixelstats"]
    corpus = write_demo_corpus(tmp_path / "demo", n_items=40)
    embed_run(_config(root, corpus.manifest, "r1", models=models, modalities=("image", "sketch")),
              echo=lambda _: None)

    grown = write_demo_corpus(tmp_path / "demo", n_items=45)   # the same 40 items plus 5 new ones
    for item in ("item-000001", "item-000007"):
        _change_pixel(grown.root / "images" / f"{item}.png")
    lines: list[str] = []
    second = embed_run(_config(root, grown.manifest, "r2", models=models, modalities=("image", "sketch")),
                       echo=lines.append)
    by_key = {(p.model, p.modality): p for p in second.partitions}
    assert by_key[("builtin-pixelstats", "image")].embedded == 45
    assert by_key[("builtin-pixelstats", "image")].from_cache == 38    # 5 new + 2 changed images embedded
    assert by_key[("builtin-pixelstats", "sketch")].embedded == 45
    assert by_key[("builtin-pixelstats", "sketch")].from_cache == 40   # 5 new sketches embedded
    written = json.loads((root / "runs/r2/embed_summary.json").read_text())
    assert {p["modality"]: p["from_cache"] for p in written["partitions"]} == {"image": 38, "sketch": 40}
    assert any(line.startswith("  builtin-pixelstats / image: 45 read") and ", 38 from cache" in line
               for line in lines), lines
    assert any(line.startswith("  builtin-pixelstats / sketch: 45 read") and ", 40 from cache" in line
               for line in lines), lines

    scratch = tmp_path / "scratch"
    embed_run(_config(scratch, grown.manifest, "r3", use_cache=False, models=models,
                      modalities=("image", "sketch")), echo=lambda _: None)
    _assert_same_vectors(root, "r2", scratch, "r3", by_key)


def test_captions_come_from_the_cache_after_another_caption_set_of_the_same_items(tmp_path: Path) -> None:
    """Two caption sets of the same ids (reworded captions, say) share a cache: neither evicts the other."""
    root = tmp_path / "out"
    models = [{"spec": "open_clip:ViT-S-32:random", "name": "clip"}]
    corpus = write_demo_corpus(tmp_path / "demo", n_items=40)
    embed_run(_config(root, corpus.manifest, "r1", models=models, modalities=("text",)), echo=lambda _: None)
    table = pq.read_table(corpus.manifest)
    reworded = corpus.root / "reworded.parquet"
    captions = [[f"a photo of {c}" for c in caps] for caps in table.column("captions").to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("captions"), "captions",
                                    pa.array(captions, pa.list_(pa.string()))), reworded)
    embed_run(_config(root, reworded, "r2", models=models, modalities=("text",)), echo=lambda _: None)

    grown = write_demo_corpus(tmp_path / "demo", n_items=45)   # the first caption set plus 5 new items
    third = embed_run(_config(root, grown.manifest, "r3", models=models, modalities=("text",)), echo=lambda _: None)
    (part,) = third.partitions
    old_captions = {c for caps in table.column("captions").to_pylist() for c in caps}
    new_captions = [c for caps in pq.read_table(grown.manifest).column("captions").to_pylist() for c in caps]
    assert part.embedded == 45 * 3
    assert part.from_cache == sum(c in old_captions for c in new_captions) >= 40 * 3
    # The first run embedded the 40 items' captions from scratch: the cached vectors are those.
    first = read_committed(Storage(str(root)), "r1", "clip", "text")
    cached = read_committed(Storage(str(root)), "r3", "clip", "text")
    fresh = {(i, s): v for i, s, v in zip(first.ids.tolist(), first.subs.tolist(), first.vectors)}
    reused = [(fresh[(i, s)], v) for i, s, v in zip(cached.ids.tolist(), cached.subs.tolist(), cached.vectors)
              if (i, s) in fresh]
    assert len(reused) == 40 * 3
    np.testing.assert_allclose(np.stack([a for a, _ in reused]), np.stack([b for _, b in reused]), rtol=1e-5, atol=1e-5)
