"""The embed job end to end on the demo corpus: local folder and real S3, bad inputs, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedeval.config import parse_config
from embedeval.demo.broken import break_corpus
from embedeval.demo.corpus import write_demo_corpus
from embedeval.io.embeddings import list_committed, read_commit_marker, read_committed
from embedeval.io.storage import Storage
from embedeval.pipeline.embed import EmbedError, embed_run

pytestmark = pytest.mark.usefixtures("ray_local")


def _config(root: str, manifest: str, models: list, **extra):  # noqa: ANN003, ANN202
    data = {"root": root, "run_id": "r1", "manifest": manifest, "models": models,
            "embed": {"batch_size": 8, "rows_per_file": 16, "max_image_pixels": 4_000_000}}
    data.update(extra)
    return parse_config(data)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return write_demo_corpus(tmp_path_factory.mktemp("demo"), n_items=24)


def test_embeds_every_modality_readable_by_polars_and_duckdb(corpus, tmp_path: Path) -> None:  # noqa: ANN001
    import duckdb
    import polars as pl

    config = _config(str(tmp_path / "out"), str(corpus.manifest),
                     ["builtin:pixelstats", {"spec": "open_clip:ViT-S-32-alt:random", "name": "clip"}],
                     embed={"batch_size": 8, "rows_per_file": 16, "modalities": ["image", "text"]})
    summary = embed_run(config, echo=lambda _: None)
    storage = Storage(str(tmp_path / "out"))
    # the demo has labels and zeroshot runs by default: the text tower also embeds the prompt partition
    assert list_committed(storage, "r1") == [("builtin-pixelstats", "image"), ("clip", "image"), ("clip", "prompt"),
                                             ("clip", "text")]
    clip_text = read_committed(storage, "r1", "clip", "text")
    assert len(clip_text) == 24 * 3 and clip_text.dim == 256
    assert sorted(set(clip_text.subs.tolist())) == [0, 1, 2]

    part = storage.path("runs/r1/embeddings/model=clip/modality=image")
    frame = pl.read_parquet(f"{part}/*.parquet")
    assert frame.height == 24 and frame["id"].n_unique() == 24
    assert frame.schema["vector"] == pl.Array(pl.Float32, 256)
    np.testing.assert_allclose(np.linalg.norm(np.stack(frame["vector"].to_numpy()), axis=1), frame["norm"].to_numpy(),
                               rtol=1e-5)
    n, dim = duckdb.sql(f"select count(*), max(len(vector)) from '{part}/*.parquet'").fetchall()[0]
    assert (n, dim) == (24, 256)
    first_file = storage.list_files("runs/r1/embeddings/model=clip/modality=image", ".parquet")[0]
    meta = pq.read_schema(storage.path(first_file)).metadata
    assert meta[b"embedeval.model.weights_random"] == b"true"
    assert all(p.embedded == p.inputs for p in summary.partitions)


def test_bad_inputs_are_quarantined_with_reasons_and_counts_add_up(tmp_path: Path) -> None:
    corpus = write_demo_corpus(tmp_path / "demo", n_items=40)
    broken = break_corpus(corpus.root, fraction=0.3, huge_side=2100)
    config = _config(str(tmp_path / "out"), str(corpus.manifest), ["builtin:pixelstats"],
                     embed={"batch_size": 8, "rows_per_file": 16, "max_image_pixels": 4_000_000,
                            "modalities": ["image"]})
    summary = embed_run(config, echo=lambda _: None)
    storage = Storage(str(tmp_path / "out"))
    import polars as pl

    errors = pl.read_parquet(storage.path("runs/r1/errors") + "/**/*.parquet")
    errors = errors.with_columns(reason=pl.col("stage") + ": " + pl.col("reason"))
    embedded = read_committed(storage, "r1", "builtin-pixelstats", "image")
    embedded_ids = set(embedded.ids.tolist())
    for rid, expected in broken.expected.items():
        kind = broken.kinds[rid]
        if kind in ("empty_caption",):   # only affects text, which this run does not embed
            continue
        if kind == "duplicate_id":
            reasons = errors.filter(pl.col("id") == rid)["reason"].to_list()
            assert any("duplicate id" in r for r in reasons), kind
            assert rid in embedded_ids  # the first occurrence is kept
        elif expected is None:
            assert rid in embedded_ids, f"{kind} item {rid} should embed fine"
        else:
            reasons = errors.filter(pl.col("id") == rid)["reason"].to_list()
            assert reasons and any(expected in r for r in reasons), f"{kind}: {reasons}"
            assert rid not in embedded_ids
    (part,) = summary.partitions
    manifest_q = summary.manifest_quarantined_by_modality["image"]
    assert part.inputs == part.embedded + part.quarantined
    assert summary.manifest_rows == 40 + 1  # one duplicate row was added
    assert part.embedded + part.quarantined + manifest_q == summary.manifest_rows
    image_errors = errors.filter(pl.col("modality").is_null() | (pl.col("modality") == "image"))
    assert image_errors.height == part.quarantined + manifest_q


def test_rerun_skips_committed_and_refuses_changed_inputs(corpus, tmp_path: Path) -> None:  # noqa: ANN001
    lines: list[str] = []
    config = _config(str(tmp_path / "out"), str(corpus.manifest), ["builtin:pixelstats"])
    embed_run(config, echo=lines.append)
    storage = Storage(str(tmp_path / "out"))
    before = read_commit_marker(storage, "r1", "builtin-pixelstats", "image")
    again = embed_run(config, echo=lines.append)
    assert all(p.skipped for p in again.partitions)
    assert read_commit_marker(storage, "r1", "builtin-pixelstats", "image").committed_at == before.committed_at
    import pyarrow as pa

    table = pq.read_table(corpus.manifest)
    smaller = tmp_path / "smaller.parquet"
    pq.write_table(table.slice(0, 10), smaller)
    (tmp_path / "images").symlink_to(corpus.root / "images")
    (tmp_path / "sketches").symlink_to(corpus.root / "sketches")
    changed = _config(str(tmp_path / "out"), str(smaller), ["builtin:pixelstats"],
                      allowed_roots=[str(corpus.root)])
    with pytest.raises(EmbedError, match="different inputs"):
        embed_run(changed, echo=lines.append)
    del pa


def test_embed_to_s3_from_s3_manifest(corpus, s3_options, s3_server) -> None:  # noqa: ANN001
    src = Storage("s3://test/catalogue", s3_options)
    for path in sorted(corpus.root.rglob("*")):
        if path.is_file() and path.suffix in (".png", ".parquet"):
            src.write_bytes(str(path.relative_to(corpus.root)), path.read_bytes())
    config = _config("s3://test/embedeval", "s3://test/catalogue/manifest.parquet", ["builtin:pixelstats"],
                     s3=s3_options.model_dump())
    embed_run(config, echo=lambda _: None)
    out = Storage("s3://test/embedeval", s3_options)
    assert list_committed(out, "r1") == [("builtin-pixelstats", "image"), ("builtin-pixelstats", "sketch")]
    local = read_committed(out, "r1", "builtin-pixelstats", "image")
    assert len(local) == 24
    config_text = out.read_bytes("runs/r1/config.yaml").decode()
    assert s3_server.secret_key not in config_text
    # The same vectors as a local run: storage must not change results.
    local_config = _config(str(Path(corpus.root).parent / "local-out"), str(corpus.manifest), ["builtin:pixelstats"])
    embed_run(local_config, echo=lambda _: None)
    ref = read_committed(Storage(local_config.root), "r1", "builtin-pixelstats", "image")
    np.testing.assert_array_equal(ref.vectors, local.vectors)


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from embedeval.config import parse_config
    from embedeval.pipeline.embed import embed_run
    config = parse_config({"root": sys.argv[1], "run_id": "r1", "manifest": sys.argv[2],
                           "models": ["builtin:pixelstats", "torchvision:resnet18:random"],
                           "embed": {"batch_size": 2, "rows_per_file": 4, "modalities": ["image"]},
                           "ray": {"num_cpus": 2}})
    embed_run(config)
""")


def test_killed_run_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    corpus = write_demo_corpus(tmp_path / "demo", n_items=40)
    root = tmp_path / "out"
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(corpus.manifest)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    storage = Storage(str(root))
    resnet_dir = "runs/r1/embeddings/model=torchvision-resnet18-random/modality=image"
    deadline = time.time() + 240
    try:
        # Kill once the second model has written some files but not committed: a partial partition.
        while time.time() < deadline:
            files = storage.list_files(resnet_dir)
            if any(f.endswith(".parquet") for f in files) and not any("_COMMITTED" in f for f in files):
                break
            if proc.poll() is not None:
                pytest.fail("the job finished before it could be killed")
            time.sleep(0.2)
        else:
            pytest.fail("the job never reached a partial partition")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert read_commit_marker(storage, "r1", "torchvision-resnet18-random", "image") is None
    config = _config(str(root), str(corpus.manifest), ["builtin:pixelstats", "torchvision:resnet18:random"],
                     embed={"batch_size": 2, "rows_per_file": 4, "modalities": ["image"]})
    resumed = embed_run(config, echo=lambda _: None)
    assert [p.skipped for p in resumed.partitions] == [True, False]
    got = read_committed(storage, "r1", "torchvision-resnet18-random", "image")
    assert sorted(got.ids.tolist()) == [f"item-{i:06d}" for i in range(40)]
    # Files on disk are exactly those the marker lists: no leftovers from the killed attempt are readable.
    marker = read_commit_marker(storage, "r1", "torchvision-resnet18-random", "image")
    assert sorted(f.path for f in marker.files) == sorted(storage.list_files(resnet_dir, ".parquet"))
    clean_root = tmp_path / "clean"
    embed_run(_config(str(clean_root), str(corpus.manifest), ["torchvision:resnet18:random"],
                      embed={"batch_size": 2, "rows_per_file": 4, "modalities": ["image"]}), echo=lambda _: None)
    clean = read_committed(Storage(str(clean_root)), "r1", "torchvision-resnet18-random", "image")
    np.testing.assert_allclose(got.vectors, clean.vectors, rtol=1e-5, atol=1e-6)


def test_precomputed_vectors_are_imported_with_quarantine(corpus, tmp_path: Path) -> None:  # noqa: ANN001
    from embedeval.io.embeddings import embeddings_table

    ids = [f"item-{i:06d}" for i in range(24)]
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(24, 16)).astype(np.float32)
    vectors[3] = np.nan
    vectors[5] = 0.0
    table = embeddings_table(ids[:-2] + ["not-in-manifest", "item-000000"], [0] * 24, vectors)
    pq.write_table(table.drop_columns(["norm"]), tmp_path / "vectors.parquet")
    config = _config(str(tmp_path / "out"), str(corpus.manifest),
                     [{"spec": f"precomputed:{tmp_path / 'vectors.parquet'}", "name": "mine"}],
                     embed={"modalities": ["image"], "rows_per_file": 16})
    summary = embed_run(config, echo=lambda _: None)
    (part,) = summary.partitions
    got = read_committed(Storage(config.root), "r1", "mine", "image")
    # item-000000 is duplicated (refused, both copies), 3 is NaN, 5 is zero, 22 and 23 have no vector
    refused = {"item-000000", "item-000003", "item-000005", "item-000022", "item-000023"}
    assert set(got.ids.tolist()) == set(ids) - refused
    assert part.inputs == 24 and part.embedded == 19 and part.quarantined == 5
    np.testing.assert_array_equal(got.vectors[got.ids.tolist().index("item-000001")], vectors[1])


@pytest.mark.slow
def test_task_replicas_give_the_same_vectors_and_quarantine_as_actors(tmp_path: Path) -> None:
    import polars as pl

    corpus = write_demo_corpus(tmp_path / "demo", n_items=16)
    break_corpus(corpus.root, fraction=0.3, huge_side=2100)
    models = ["builtin:pixelstats", {"spec": "torchvision:mobilenet_v3_small:random", "name": "mobilenet"}]
    runs = {}
    for replicas, at_once in (("actors", 1), ("tasks", 1), ("tasks", 2)):
        root = tmp_path / f"out-{replicas}-{at_once}"
        config = _config(str(root), str(corpus.manifest), models,
                         embed={"batch_size": 8, "rows_per_file": 16, "max_image_pixels": 4_000_000,
                                "modalities": ["image"], "replicas": replicas, "models_at_once": at_once})
        summary = embed_run(config, echo=lambda _: None)
        storage = Storage(str(root))
        errors = (pl.read_parquet(storage.path("runs/r1/errors") + "/**/*.parquet")
                  .select("id", "model", "stage", "reason").sort("id", "model", "stage", "reason", nulls_last=True))
        vectors = {m: read_committed(storage, "r1", m, "image") for m in ("builtin-pixelstats", "mobilenet")}
        runs[replicas, at_once] = (summary, errors, vectors)
    # both models embedded at the same time (embed.models_at_once): the same rows, errors and vectors as one
    # after the other, and the summaries in config order
    (one_summary, one_errors, one_vectors), (two_summary, two_errors, two_vectors) = runs["tasks", 1], runs["tasks", 2]
    assert one_errors.equals(two_errors)
    assert [(p.model, p.modality, p.embedded, p.quarantined) for p in one_summary.partitions] == \
           [(p.model, p.modality, p.embedded, p.quarantined) for p in two_summary.partitions]
    for model, one in one_vectors.items():
        two = two_vectors[model]
        order_1, order_2 = np.argsort(one.ids), np.argsort(two.ids)
        assert one.ids[order_1].tolist() == two.ids[order_2].tolist()
        np.testing.assert_allclose(one.vectors[order_1], two.vectors[order_2], rtol=0, atol=1e-6)
    (sep_summary, sep_errors, sep_vectors), (fused_summary, fused_errors, fused_vectors) = \
        runs["actors", 1], runs["tasks", 1]
    assert sep_errors.height > 0 and sep_errors.equals(fused_errors)
    assert [(p.model, p.embedded, p.quarantined) for p in sep_summary.partitions] == \
           [(p.model, p.embedded, p.quarantined) for p in fused_summary.partitions]
    for model, separate in sep_vectors.items():
        fused = fused_vectors[model]
        order_s, order_f = np.argsort(separate.ids), np.argsort(fused.ids)
        assert separate.ids[order_s].tolist() == fused.ids[order_f].tolist()
        if model == "builtin-pixelstats":
            np.testing.assert_array_equal(separate.vectors[order_s], fused.vectors[order_f])
        else:  # a task runs torch on 1 thread, an actor on cores/concurrency: float rounding differs, nothing else
            def unit(v: np.ndarray) -> np.ndarray:
                return v / np.linalg.norm(v, axis=1, keepdims=True)

            np.testing.assert_allclose(unit(separate.vectors[order_s]), unit(fused.vectors[order_f]), atol=1e-5)


def test_small_inputs_are_spread_over_every_cpu_in_whole_batches() -> None:
    """A Ray Data map task takes a whole block: 544 rows in one 1,024-row block ran on one of two CPUs."""
    from embedeval.pipeline.embed import spread_blocks

    table = pa.table({"i": np.arange(544)})
    blocks = spread_blocks(table, batch_size=64, max_rows=1024, cpus=2)
    assert len(blocks) >= 4 and all(b.num_rows % 64 == 0 for b in blocks[:-1])
    assert pa.concat_tables(blocks).column("i").to_pylist() == list(range(544))
    big = spread_blocks(pa.table({"i": np.arange(100_000)}), batch_size=32, max_rows=1024, cpus=2)
    assert {b.num_rows for b in big[:-1]} == {1024}
    assert [b.num_rows for b in spread_blocks(table.slice(0, 10), 32, 1024, cpus=8)] == [10]
