"""Re-scoring a grown catalogue: only new or changed items are embedded; results equal a from-scratch run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from embedeval.config import parse_config
from embedeval.demo.corpus import write_demo_corpus
from embedeval.io.embeddings import read_commit_marker, read_committed
from embedeval.io.manifest import load_manifest
from embedeval.io.storage import Storage
from embedeval.models.base import ModelInfo
from embedeval.pipeline.cache import EmbeddingCache, text_sha256
from embedeval.pipeline.embed import embed_run, partition_inputs
from embedeval.pipeline.media import MediaLimits
from embedeval.pipeline.model_facts import describe_model
from embedeval.pipeline.stages import Embedder, ImagePreparer, PartitionTarget, write_partition_files

MODELS = ["builtin:pixelstats", {"spec": "open_clip:ViT-S-32-alt:random", "name": "clip"}]


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


@pytest.mark.usefixtures("ray_local")
def test_grown_catalogue_embeds_only_new_and_changed_items(tmp_path: Path) -> None:
    root = tmp_path / "out"
    corpus = write_demo_corpus(tmp_path / "demo", n_items=40, captions_per_item=2)
    first = embed_run(_config(root, corpus.manifest, "r1"), echo=lambda _: None)
    assert all(p.from_cache == 0 for p in first.partitions)

    grown = write_demo_corpus(tmp_path / "demo", n_items=44, captions_per_item=2)   # the same 40 plus 4 new
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
    assert 80 <= expected_hits < 88
    assert by_key[("clip", "text")].embedded == 88 and by_key[("clip", "text")].from_cache == expected_hits

    # Each marker lists the cache files its partition took vectors from or added (what `runs prune` keeps).
    storage = Storage(str(root))
    entries = set(storage.list_files("cache", ".parquet"))
    for model, modality in by_key:
        r1 = set(read_commit_marker(storage, "r1", model, modality).cache_files)  # type: ignore[union-attr]
        r2 = set(read_commit_marker(storage, "r2", model, modality).cache_files)  # type: ignore[union-attr]
        if modality == "prompt":   # the same labels and templates both nights: nothing new to add
            assert r1 and r1 == r2 <= entries, (model, modality)
            continue
        assert r1 and r1 <= r2 <= entries and r2 - r1, (model, modality)
        assert all(f"/part-{modality}-" in f for f in r2)
    assert entries == {f for m, x in by_key
                       for f in read_commit_marker(storage, "r2", m, x).cache_files}  # type: ignore[union-attr]

    scratch = embed_run(_config(tmp_path / "scratch", grown.manifest, "r3", use_cache=False), echo=lambda _: None)
    assert all(p.from_cache == 0 for p in scratch.partitions)
    assert read_commit_marker(Storage(str(tmp_path / "scratch")), "r3", "clip", "image").cache_files == []  # type: ignore[union-attr]
    _assert_same_vectors(root, "r2", tmp_path / "scratch", "r3", by_key)
    # ...and so do the scores of the re-scored grown catalogue.
    from embedeval.workflow import score_from_config

    keys = ["model", "task", "target", "metric", "k", "split", "protocol"]
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


def _embedded_in_process(manifest_path: Path, spec: str, modalities: tuple[str, ...]) -> pa.Table:
    """The pipeline's prepare and embed stages over a manifest, from scratch, in this process (no Ray)."""
    manifest = load_manifest(str(manifest_path))
    parts = {m: partition_inputs(manifest, m) for m in modalities}
    inputs = pa.concat_tables([t.append_column("modality", pa.array([m] * t.num_rows)) for m, t in parts.items()])
    embedded = Embedder(spec, None, "cpu", None)(ImagePreparer(spec, None, MediaLimits())(inputs))
    assert embedded.column("error_stage").null_count == embedded.num_rows
    return embedded


@pytest.mark.usefixtures("ray_local")
def test_images_and_sketches_of_a_grown_catalogue_both_come_from_the_cache(tmp_path: Path) -> None:
    """Images and sketches share the image tower's cache kind; neither may evict the other's entries.

    The first catalogue's vectors are cached by the writer stage from one batch holding both modalities, as a
    run writes them (computed by the pipeline's stages in this process: a Ray run would only cost time); the
    grown catalogue's run must take every unchanged image and sketch from there and match a from-scratch run.
    """
    root = tmp_path / "out"
    spec = "builtin:pixelstats"
    corpus = write_demo_corpus(tmp_path / "demo", n_items=12)
    storage = Storage(str(root))
    cache = EmbeddingCache(storage, describe_model(spec))
    write_partition_files(_embedded_in_process(corpus.manifest, spec, ("image", "sketch")),
                          PartitionTarget(storage, "r1", "builtin-pixelstats", {}, cache.layout))

    grown = write_demo_corpus(tmp_path / "demo", n_items=15)   # the same 12 items plus 3 new ones
    for item in ("item-000001", "item-000007"):
        _change_pixel(grown.root / "images" / f"{item}.png")
    lines: list[str] = []
    second = embed_run(_config(root, grown.manifest, "r2", models=[spec], modalities=("image", "sketch")),
                       echo=lines.append)
    by_key = {(p.model, p.modality): p for p in second.partitions}
    assert by_key[("builtin-pixelstats", "image")].embedded == 15
    assert by_key[("builtin-pixelstats", "image")].from_cache == 10    # 3 new + 2 changed images embedded
    assert by_key[("builtin-pixelstats", "sketch")].embedded == 15
    assert by_key[("builtin-pixelstats", "sketch")].from_cache == 12   # 3 new sketches embedded
    written = json.loads((root / "runs/r2/embed_summary.json").read_text())
    assert {p["modality"]: p["from_cache"] for p in written["partitions"]} == {"image": 10, "sketch": 12}
    assert any(line.startswith("  builtin-pixelstats / image: 15 read") and ", 10 from cache" in line
               for line in lines), lines
    assert any(line.startswith("  builtin-pixelstats / sketch: 15 read") and ", 12 from cache" in line
               for line in lines), lines

    fresh = _embedded_in_process(grown.manifest, spec, ("image", "sketch"))
    for modality in ("image", "sketch"):
        rows = fresh.filter(pc.equal(fresh.column("modality"), modality))
        expected = {(i, s): v for i, s, v in zip(rows.column("id").to_pylist(), rows.column("sub").to_pylist(),
                                                 rows.column("vector").to_pylist())}
        cached = read_committed(storage, "r2", "builtin-pixelstats", modality)
        keys = list(zip(cached.ids.tolist(), cached.subs.tolist()))
        assert sorted(keys) == sorted(expected)
        np.testing.assert_allclose(cached.vectors, np.array([expected[k] for k in keys]), rtol=1e-5, atol=1e-5)


def _unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _embedded_rows(ids: list[str], subs: list[int], modality: str, hashes: list[str], vectors: np.ndarray) -> pa.Table:
    """A batch as the embed stage hands it to the writer (all rows good)."""
    n, dim = vectors.shape
    return pa.table({
        "id": pa.array(ids, pa.string()), "sub": pa.array(subs, pa.int16()), "modality": pa.array([modality] * n),
        "content_sha256": pa.array(hashes, pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        "error_stage": pa.nulls(n, pa.string()), "error_reason": pa.nulls(n, pa.string())})


def _lookup(cache: EmbeddingCache, kind: str, hashes: list[str]) -> np.ndarray:
    index, vectors = cache.lookup(kind, hashes)
    assert (index >= 0).all(), f"{int((index < 0).sum())} of {len(hashes)} entries missing from the cache"
    return np.asarray(vectors.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, cache.info.dim)[index]


def test_the_cache_writer_keeps_entries_of_every_batch_and_modality_with_the_same_rows(tmp_path: Path) -> None:
    """Unit level (no model, no Ray): the writer stage's cache files, read back through EmbeddingCache.lookup.

    Batches of the same (id, sub) rows with other content (a reworded caption set, a later run) and the image
    and sketch rows of one batch (one cache kind) all keep their entries; a retried batch adds no file.
    """
    dim = 8
    info = ModelInfo(spec="test:unit", family="test", architecture="unit", weights_source="random",
                     weights_sha256=None, weights_random=True, preprocessing="none", dim=dim,
                     modalities=("image", "sketch", "text"))
    storage = Storage(str(tmp_path / "out"))
    cache = EmbeddingCache(storage, info)
    ids = [f"item-{i:06d}" for i in range(4) for _ in range(3)]
    subs = [s for _ in range(4) for s in range(3)]
    captions = [f"caption {s} of {i}" for i, s in zip(ids, subs)]
    sets = {"first": [text_sha256(c) for c in captions],
            "reworded": [text_sha256(f"a photo of {c}") for c in captions]}
    vectors = {name: _unit_vectors(len(ids), dim, seed) for seed, name in enumerate(sets)}
    for run, name in (("r1", "first"), ("r2", "reworded")):
        target = PartitionTarget(storage, run, "m", {}, cache.layout)
        write_partition_files(_embedded_rows(ids, subs, "text", sets[name], vectors[name]), target)
    for name, hashes in sets.items():
        np.testing.assert_array_equal(_lookup(cache, "text", hashes), vectors[name])

    # Images and sketches of one batch: same (id, sub) rows, same cache kind.
    item_ids = [f"item-{i:06d}" for i in range(4)]
    media = {m: ([f"{m}-{i}" for i in range(4)], _unit_vectors(4, dim, 10 + k))
             for k, m in enumerate(("image", "sketch"))}
    batch = pa.concat_tables([_embedded_rows(item_ids, [0] * 4, m, hashes, v) for m, (hashes, v) in media.items()])
    target = PartitionTarget(storage, "r3", "m", {}, cache.layout)
    write_partition_files(batch, target)
    for hashes, v in media.values():
        np.testing.assert_array_equal(_lookup(cache, "image", hashes), v)

    # A retried task rewrites its own files instead of adding duplicates.
    files = {kind: storage.list_files(cache.layout.kind_dir(kind), ".parquet") for kind in ("image", "text")}
    write_partition_files(batch, target)
    assert {kind: storage.list_files(cache.layout.kind_dir(kind), ".parquet") for kind in ("image", "text")} == files


@pytest.mark.usefixtures("ray_local")
def test_captions_come_from_the_cache_after_another_caption_set_of_the_same_items(tmp_path: Path) -> None:
    """End to end: a run takes every caption from the cache after another caption set of the same rows was cached.

    The writer stage (write_partition_files, as a run calls it) stores both caption sets under the model's own
    cache key, for the same (id, sub) rows; then a run over each set must find all its captions there. No model
    run is needed to fill the cache (only the cache's files matter, so the vectors are random): on the old
    naming, the second set's file replaced the first's and the first run re-embedded every caption.
    """
    root = tmp_path / "out"
    spec = "open_clip:ViT-S-32-alt:random"
    models = [{"spec": spec, "name": "clip"}]
    corpus = write_demo_corpus(tmp_path / "demo", n_items=3)
    table = pq.read_table(corpus.manifest)
    reworded_manifest = corpus.root / "reworded.parquet"
    reworded = [[f"a photo of {c}" for c in caps] for caps in table.column("captions").to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("captions"), "captions",
                                    pa.array(reworded, pa.list_(pa.string()))), reworded_manifest)

    storage = Storage(str(root))
    cache = EmbeddingCache(storage, describe_model(spec))
    inputs = partition_inputs(load_manifest(str(corpus.manifest)), "text")
    ids, subs = inputs.column("id").to_pylist(), inputs.column("sub").to_pylist()
    sets = {"r1": (corpus.manifest, inputs.column("source").to_pylist()),
            "r2": (reworded_manifest, [f"a photo of {c}" for c in inputs.column("source").to_pylist()])}
    vectors = {run: _unit_vectors(len(ids), cache.info.dim, seed) for seed, run in enumerate(sets)}
    for run, (_, texts) in sets.items():
        write_partition_files(_embedded_rows(ids, subs, "text", [text_sha256(t) for t in texts], vectors[run]),
                              PartitionTarget(storage, f"fill-{run}", "clip", {}, cache.layout))

    for run, (manifest, _) in sets.items():
        lines: list[str] = []
        summary = embed_run(_config(root, manifest, run, models=models, modalities=("text",)), echo=lines.append)
        (part,) = [p for p in summary.partitions if p.modality == "text"]   # besides: the prompt partition
        assert part.embedded == part.from_cache == 3 * 3
        assert any(line.startswith("  clip / text: 9 read") and ", 9 from cache" in line for line in lines), lines
        committed = read_committed(storage, run, "clip", "text")
        assert committed.ids.tolist() == ids and committed.subs.tolist() == subs
        np.testing.assert_allclose(committed.vectors, vectors[run], rtol=1e-6, atol=1e-6)
