"""The embed job end to end on the demo corpus: local folder and real S3, bad inputs, reruns.

A run killed mid-embed and resumed is ``tests/faults/test_driver_kill.py``: SIGKILLed with a partition
half written, the rerun keeps the committed partitions, redoes the partial one, and ends with exactly the
files its marker lists and the vectors of an undisturbed run.
"""

from __future__ import annotations

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
    """One model after the other in actor pools, against both models at once in plain tasks
    (``embed.models_at_once: 2``): the same rows, the same quarantine and the same vectors."""
    import polars as pl

    corpus = write_demo_corpus(tmp_path / "demo", n_items=16)
    break_corpus(corpus.root, fraction=0.3, huge_side=2100)
    models = ["builtin:pixelstats", {"spec": "torchvision:mobilenet_v3_small:random", "name": "mobilenet"}]
    runs = {}
    for replicas, at_once in (("actors", 1), ("tasks", 2)):
        root = tmp_path / f"out-{replicas}-{at_once}"
        config = _config(str(root), str(corpus.manifest), models,
                         embed={"batch_size": 8, "rows_per_file": 16, "max_image_pixels": 4_000_000,
                                "modalities": ["image"], "replicas": replicas, "models_at_once": at_once})
        summary = embed_run(config, echo=lambda _: None)
        storage = Storage(str(root))
        errors = (pl.read_parquet(storage.path("runs/r1/errors") + "/**/*.parquet")
                  .select("id", "model", "stage", "reason").sort("id", "model", "stage", "reason", nulls_last=True))
        vectors = {m: read_committed(storage, "r1", m, "image") for m in ("builtin-pixelstats", "mobilenet")}
        runs[replicas] = (summary, errors, vectors)
    (sep_summary, sep_errors, sep_vectors), (fused_summary, fused_errors, fused_vectors) = runs["actors"], runs["tasks"]
    assert sep_errors.height > 0 and sep_errors.equals(fused_errors)
    # the summaries in config order, whichever model finished first
    assert [(p.model, p.modality, p.embedded, p.quarantined) for p in sep_summary.partitions] == \
           [(p.model, p.modality, p.embedded, p.quarantined) for p in fused_summary.partitions]
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
