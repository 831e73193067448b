"""score_run end to end on a tiny run written to a tmp folder, read back with polars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from pydantic import ValidationError

from embedeval.io.embeddings import (CommitRecord, PartFile, embeddings_table, partition_dir, table_checksum,
                                     write_commit_marker)
from embedeval.io.storage import Storage
from embedeval.scoring.context import ScoringError
from embedeval.scoring.job import score_run
from embedeval.scoring.settings import ScoreSettings

from .synthetic import CATEGORIES, COLOURS, SHAPES, colour_embeddings

RUN = "r1"
N = 60


def write_partition(storage: Storage, model: str, modality: str, ids: list[str], subs: list[int],
                    vectors: np.ndarray, weights_random: bool = False, n_files: int = 2) -> None:
    table = embeddings_table(ids, subs, vectors)
    files = []
    bounds = np.linspace(0, table.num_rows, n_files + 1).astype(int)
    for k in range(n_files):
        part = table.slice(bounds[k], bounds[k + 1] - bounds[k])
        rel = f"{partition_dir(RUN, model, modality)}/part-{k:05d}.parquet"
        storage.write_parquet(rel, part)
        files.append(PartFile(rel, part.num_rows, table_checksum(part)))
    write_commit_marker(storage, CommitRecord(RUN, model, modality, vectors.shape[1], files, table.num_rows, 0,
                                              {"embedeval.model.weights_random": str(weights_random).lower()}))


def make_manifest(rng: np.random.Generator) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    colour = rng.integers(0, len(COLOURS), N)
    shape = rng.integers(0, len(SHAPES), N)
    size = rng.uniform(0, 1, N)
    ids = [f"item{i:03d}" for i in range(N)]
    table = pa.table({
        "id": ids,
        "tags": [[COLOURS[c], SHAPES[s]] for c, s in zip(colour, shape)],
        "label": [SHAPES[s] for s in shape],
        "captions": [[f"a {COLOURS[c]} {SHAPES[s]}"] * 2 for c, s in zip(colour, shape)],
        "attr_size": size,
        "split": ["train" if i % 3 else "test" for i in range(N)],
        "class_split": ["unseen" if s == 2 else "seen" for s in shape],
    })
    return table, colour, shape, size


def write_run(root: Path, rng: np.random.Generator) -> tuple[Storage, pa.Table]:
    storage = Storage(str(root))
    table, colour, shape, size = make_manifest(rng)
    ids = table.column("id").to_pylist()
    good = colour_embeddings(colour, rng, d=16, strength=5.0)
    good[np.arange(N), 8 + shape] += 8.0          # shape dominates, for prototypes and sketches
    good[:, 12] += 12 * size                      # and size, for rankability
    write_partition(storage, "good", "image", ids, [0] * N, good)
    text_ids = [i for i in ids for _ in range(2)]
    text = np.repeat(good, 2, axis=0) + 0.05 * rng.normal(size=(2 * N, 16))
    write_partition(storage, "good", "text", text_ids, [0, 1] * N, text)
    sketch = good + 0.5 * rng.normal(size=good.shape)
    write_partition(storage, "good", "sketch", ids, [0] * N, sketch)
    write_partition(storage, "rand", "image", ids, [0] * N, rng.normal(size=(N, 8)), weights_random=True)
    return storage, table


def small_settings(**kw: object) -> ScoreSettings:
    base = dict(corr_ks=[5, 10], corr_anchors=40, fewshot_ns=[5], fewshot_repeats=3, bootstrap_resamples=20,
                map_cutoffs=[20], precision_ks=[10], spearman_max_pairs=500, use_ray=False, block_size=32,
                block_rows=16)
    base.update(kw)
    return ScoreSettings(**base)


def test_score_run_end_to_end(tmp_path: Path, rng: np.random.Generator, ray_local: None) -> None:
    storage, manifest = write_run(tmp_path, rng)
    messages: list[str] = []
    table = score_run(storage, RUN, manifest, CATEGORIES, small_settings(use_ray=True), progress=messages.append)
    df = pl.read_parquet(tmp_path / "runs" / RUN / "scores" / "scores.parquet")
    assert df.height == table.num_rows > 0
    assert df.filter(pl.col("metric") == "failed").height == 0, df.filter(pl.col("metric") == "failed")["note"].to_list()
    assert set(df["task"].unique()) == {"corrembed", "rankability", "retrieval", "prototypes", "modality_gap",
                                      "zeroshot", "probes"}
    assert set(df.filter(pl.col("model") == "rand")["weights_random"].unique()) == {True}
    assert set(df.filter(pl.col("model") == "good")["weights_random"].unique()) == {False}
    assert (df["seconds"] >= 0).all() and (df["run_id"] == RUN).all()
    with_ci = df.filter(pl.col("ci_low").is_not_null())
    assert with_ci.height > 50
    outside = with_ci.filter((pl.col("value") < pl.col("ci_low") - 1e-9) | (pl.col("value") > pl.col("ci_high") + 1e-9))
    assert outside.height == 0, outside.select("model", "task", "target", "metric", "value", "ci_low", "ci_high")

    def value(model: str, task: str, target: str, metric: str, k: int | None = None, split: str = "all",
              protocol: str | None = None) -> float:
        sel = df.filter((pl.col("model") == model) & (pl.col("task") == task) & (pl.col("target") == target)
                        & (pl.col("metric") == metric) & (pl.col("split") == split))
        if protocol is not None:
            sel = sel.filter(pl.col("protocol") == protocol)
        sel = sel.filter(pl.col("k").is_null() if k is None else pl.col("k") == k)
        assert sel.height == 1, (model, task, target, metric, sel)
        return sel["value"][0]

    assert value("good", "corrembed", "colour", "corrembed", protocol="per-anchor") > \
        value("rand", "corrembed", "colour", "corrembed", protocol="per-anchor") + 0.15
    assert value("good", "corrembed", "all", "corrembed", protocol="paper-code") > \
        value("good", "corrembed", "all", "control_shuffled_embeddings", protocol="paper-code") + 0.15
    assert value("good", "retrieval", "image->text", "R@1", k=1) == 1.0
    assert value("good", "rankability", "size", "spearman", split="test", protocol="regression") > 0.5
    assert value("good", "prototypes", "image", "purity") > 0.8
    assert value("good", "modality_gap", "image|text", "centroid_distance") >= 0
    assert value("good", "retrieval", "sketch->image", "mAP@all", split="unseen") > 0
    assert df.filter(pl.col("model") == "rand").filter(pl.col("task") == "retrieval").height == 0
    amb = pl.read_parquet(tmp_path / "runs" / RUN / "scores" / "ambiguity.parquet")
    protos = pl.read_parquet(tmp_path / "runs" / RUN / "scores" / "prototypes.parquet")
    assert set(amb["kind"].unique()) <= {"pair", "item"} and amb.height > 0
    assert set(protos["model"].unique()) == {"good", "rand"}
    assert any("corrembed" in m for m in messages)
    assert value("good", "probes", "image", "linear_probe", split="test") > 0.8
    # per-item values of every mean score, and the paired comparison of the two models from them
    per_item = pl.read_parquet(tmp_path / "runs" / RUN / "scores" / "per_item.parquet")
    probe = df.filter((pl.col("model") == "good") & (pl.col("metric") == "linear_probe"))
    mine = per_item.filter((pl.col("model") == "good") & (pl.col("metric") == "linear_probe"))
    assert mine.height == probe["n"][0] and mine["value"].mean() == pytest.approx(probe["value"][0], abs=1e-12)
    comparisons = pl.read_parquet(tmp_path / "runs" / RUN / "scores" / "comparisons.parquet")
    pair = comparisons.filter((pl.col("kind") == "pair") & (pl.col("metric") == "linear_probe")
                              & (pl.col("model_a") == "good"))
    assert pair.height == 1 and pair["model_b"][0] == "rand" and pair["separable"][0]
    assert {"corrembed", "retrieval", "probes"} <= set(per_item["task"].unique())
    assert {"corrembed", "probes"} == set(comparisons["task"].unique())   # 'rand' has no text or sketches

    # recomputed from scratch in-process with other query chunks: the same bits, the same row order
    storage.delete_dir(f"runs/{RUN}/scores")
    again = score_run(storage, RUN, manifest, CATEGORIES, small_settings(block_size=7))
    assert again.drop_columns(["seconds"]).equals(table.drop_columns(["seconds"]))
    # another block layout: float64 sums regroup (1e-15), every rank-based number is the same bits
    storage.delete_dir(f"runs/{RUN}/scores")
    other = score_run(storage, RUN, manifest, CATEGORIES, small_settings(block_rows=5)).to_pylist()
    for a, b in zip(table.to_pylist(), other):
        assert [a[c] for c in ("model", "task", "target", "metric", "k", "split")] == \
            [b[c] for c in ("model", "task", "target", "metric", "k", "split")]
        for col in ("value", "ci_low", "ci_high"):
            if a[col] is None or b[col] is None:
                assert a[col] is b[col]
            elif a["task"] in ("retrieval", "prototypes"):
                assert a[col] == b[col], (a, col)
            else:
                assert a[col] == pytest.approx(b[col], rel=1e-12, abs=1e-14), (a, col)


def test_bad_vectors_and_unknown_ids_are_counted(tmp_path: Path, rng: np.random.Generator) -> None:
    storage = Storage(str(tmp_path))
    manifest, colour, _, _ = make_manifest(rng)
    ids = manifest.column("id").to_pylist()
    X = colour_embeddings(colour, rng)
    X[0] = np.nan
    X[1] = 0.0
    write_partition(storage, "m", "image", ids + ["ghost"], [0] * (N + 1), np.vstack([X, np.ones(16)]))
    table = score_run(storage, RUN, manifest, CATEGORIES, small_settings(tasks=["corrembed"]))
    note = table.filter(pa.compute.equal(table.column("metric"), "corrembed")).column("note")[0].as_py()
    assert "1 NaN/Inf vectors" in note and "1 zero vectors" in note and "1 ids not in manifest" in note


def test_one_failing_task_does_not_lose_the_others(tmp_path: Path, rng: np.random.Generator,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    storage, manifest = write_run(tmp_path, rng)
    from embedeval.scoring import retrieval

    def boom(*args: object, **kwargs: object) -> list:
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(retrieval, "score_caption_retrieval", boom)
    df = pl.from_arrow(score_run(storage, RUN, manifest, CATEGORIES, small_settings(bootstrap_resamples=0)))
    failed = df.filter(pl.col("metric") == "failed")
    assert failed.height == 1 and failed["value"][0] is None
    assert "simulated failure" in failed["note"][0] and failed["model"][0] == "good"
    assert df.filter((pl.col("task") == "retrieval") & (pl.col("target") == "sketch->image")).height > 0
    assert df.filter(pl.col("task") == "corrembed").height > 0


def test_dimension_mismatch_between_files_is_a_clear_error(tmp_path: Path, rng: np.random.Generator) -> None:
    storage = Storage(str(tmp_path))
    manifest, _, _, _ = make_manifest(rng)
    ids = manifest.column("id").to_pylist()
    d = partition_dir(RUN, "m", "image")
    a, b = embeddings_table(ids[:30], [0] * 30, rng.normal(size=(30, 8))), \
        embeddings_table(ids[30:], [0] * 30, rng.normal(size=(30, 9)))
    storage.write_parquet(f"{d}/part-0.parquet", a)
    storage.write_parquet(f"{d}/part-1.parquet", b)
    write_commit_marker(storage, CommitRecord(RUN, "m", "image", 8, [PartFile(f"{d}/part-0.parquet", 30, ""),
                                                                     PartFile(f"{d}/part-1.parquet", 30, "")], 60, 0))
    with pytest.raises(ScoringError, match="disagree on the vector dimension"):
        score_run(storage, RUN, manifest, None, small_settings())


def test_missing_inputs_are_clear_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    storage = Storage(str(tmp_path))
    manifest, _, _, _ = make_manifest(rng)
    with pytest.raises(ScoringError, match="no committed embeddings"):
        score_run(storage, RUN, manifest, None, small_settings())
    write_partition(storage, "m", "image", ["x", "y", "z"], [0, 0, 0], rng.normal(size=(3, 4)), n_files=1)
    with pytest.raises(ScoringError, match="none of its 3 ids"):
        score_run(storage, RUN, manifest, None, small_settings())


def test_no_tags_and_settings_validation(tmp_path: Path, rng: np.random.Generator) -> None:
    storage, manifest = write_run(tmp_path, rng)
    df = pl.from_arrow(score_run(storage, RUN, manifest.drop(["tags"]), None,
                                 small_settings(tasks=["corrembed"])))
    assert df.height == 2 and df["value"].is_null().all() and "no 'tags' column" in df["note"][0]
    with pytest.raises(ValidationError):
        ScoreSettings(corr_k=[5])                         # typo -> extra="forbid"
    with pytest.raises(ValidationError):
        ScoreSettings(label_pairs=["sketch"])
    with pytest.raises(ValidationError, match="unknown modalities"):
        ScoreSettings(corr_modalities=["images"])


def test_torch_tiles_give_the_numpy_scores(tmp_path: Path, rng: np.random.Generator) -> None:
    """score.device=torch runs every tile GEMM in torch (CPU here, CUDA on a GPU node): same scores."""
    storage, manifest = write_run(tmp_path, rng)
    on_numpy = score_run(storage, RUN, manifest, CATEGORIES, small_settings(device="cpu"))
    storage.delete_dir(f"runs/{RUN}/scores")
    on_torch = score_run(storage, RUN, manifest, CATEGORIES, small_settings(device="torch"))
    assert on_torch.drop_columns(["seconds"]).equals(on_numpy.drop_columns(["seconds"]))
