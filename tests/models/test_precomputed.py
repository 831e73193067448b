"""precomputed vectors: good rows load as fixed-size float32 lists, bad rows come back with reasons."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedeval.io.storage import Storage
from embedeval.models.base import ModelError
from embedeval.models.precomputed import (
    load_precomputed_rows,
    load_precomputed_vectors,
    split_precomputed_rows,
)
from embedeval.models.registry import load_model


def _ragged_table() -> pa.Table:
    rows = [
        ("a", 0, [1.0, 0.0, 0.0]),
        ("a", 1, [0.0, 1.0, 0.0]),
        ("b", 0, [0.5, 0.5, 0.5]),
        ("nan", 0, [1.0, math.nan, 0.0]),
        ("inf", 0, [math.inf, 1.0, 0.0]),
        ("zero", 0, [0.0, 0.0, 0.0]),
        ("short", 0, [1.0, 2.0]),
        ("dup", 0, [1.0, 1.0, 1.0]),
        ("dup", 0, [2.0, 2.0, 2.0]),
        ("novec", 0, None),
        (None, 0, [1.0, 2.0, 3.0]),
        ("nullelem", 0, [1.0, None, 3.0]),
    ]
    return pa.table({
        "id": pa.array([r[0] for r in rows], pa.string()),
        "sub": pa.array([r[1] for r in rows], pa.int32()),
        "vector": pa.array([r[2] for r in rows], pa.list_(pa.float64())),
    })


def _reasons(bad: pa.Table) -> dict[str | None, list[str]]:
    out: dict[str | None, list[str]] = {}
    for row in bad.to_pylist():
        out.setdefault(row["id"], []).append(row["reason"])
    return out


def test_split_reports_every_bad_row_with_a_reason() -> None:
    rows = split_precomputed_rows(_ragged_table())
    assert rows.dim == 3
    assert rows.good.schema.field("vector").type == pa.list_(pa.float32(), 3)
    assert rows.good.schema.field("sub").type == pa.int16()
    assert list(zip(rows.good["id"].to_pylist(), rows.good["sub"].to_pylist())) == [("a", 0), ("a", 1), ("b", 0)]
    np.testing.assert_array_equal(np.array(rows.good["vector"].to_pylist(), np.float32)[2], [0.5, 0.5, 0.5])
    reasons = _reasons(rows.bad)
    assert reasons["nan"] == ["non-finite values (NaN or Inf)"]
    assert reasons["inf"] == ["non-finite values (NaN or Inf)"]
    assert reasons["nullelem"] == ["non-finite values (NaN or Inf)"]
    assert reasons["zero"] == ["zero vector"]
    assert reasons["short"] == ["wrong dimension: 2 values, expected 3"]
    assert reasons["dup"] == ["duplicate (id, sub): 2 rows"] * 2
    assert reasons["novec"] == ["missing vector"]
    assert reasons[None] == ["missing id"]
    assert rows.good.num_rows + rows.bad.num_rows == 12
    assert sorted(rows.bad["row"].to_pylist()) == [3, 4, 5, 6, 7, 8, 9, 10, 11]


def test_explicit_dim_wins_over_the_first_row() -> None:
    rows = split_precomputed_rows(_ragged_table(), dim=2)
    assert rows.good["id"].to_pylist() == ["short"]
    assert "expected 2" in _reasons(rows.bad)["a"][0]


def test_file_with_modalities_loads_per_modality(tmp_path: Path) -> None:
    dim = 4
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, dim)).astype(np.float32)
    table = pa.table({
        "id": ["x", "y", "z", "x", "y", "x"],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        "modality": ["image", "image", "image", "text", "text", "sketch"],
    })
    folder = tmp_path / "vectors"
    folder.mkdir()
    pq.write_table(table.slice(0, 3), folder / "part-0.parquet")
    pq.write_table(table.slice(3), folder / "part-1.parquet")
    (folder / "_SUCCESS").write_text("")

    model = load_model(f"precomputed:{folder}")
    assert model.info.family == "precomputed" and model.info.dim == dim
    assert model.info.weights_source == str(folder) and not model.info.weights_random
    assert model.info.modalities == ("image", "sketch", "text")
    text = model.load_vectors("text")
    assert text.good["id"].to_pylist() == ["x", "y"] and text.bad.num_rows == 0
    assert text.good["sub"].to_pylist() == [0, 0]  # no sub column -> 0
    np.testing.assert_array_equal(np.array(text.good["vector"].to_pylist(), np.float32), vectors[3:5])
    image = load_precomputed_vectors(str(folder), modality="image")
    assert image["id"].to_pylist() == ["x", "y", "z"]
    with pytest.raises(ModelError, match="precomputed"):
        model.embed_images(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ModelError, match="precomputed"):
        model.embed_texts(["a"])


def test_bad_rows_name_the_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "v.parquet"
    pq.write_table(_ragged_table(), path)
    rows = load_precomputed_rows(str(path))
    nan_row = [r for r in rows.bad.to_pylist() if r["id"] == "nan"][0]
    assert nan_row["file"] == str(path) and nan_row["row"] == 3
    model = load_model(f"precomputed:{path}?dim=3")
    assert model.info.dim == 3 and model.info.modalities == ("image",)
    assert model.load_vectors("image").good.num_rows == 3


def test_precomputed_from_s3(s3_options, tmp_path: Path) -> None:  # noqa: ANN001
    store = Storage(f"s3://test/{tmp_path.name}", s3_options)
    store.write_parquet("vectors/part-0.parquet", _ragged_table())
    uri = store.uri("vectors")
    model = load_model(f"precomputed:{uri}", storage=store, dim_hint=3)
    rows = model.load_vectors("image")
    assert rows.good.num_rows == 3 and rows.bad.num_rows == 9
    assert rows.bad["file"][0].as_py().startswith("s3://test/")


def test_missing_data_and_columns_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"precomputed:{tmp_path / 'none'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no .parquet files"):
        load_model(f"precomputed:{tmp_path / 'empty'}")
    pq.write_table(pa.table({"key": ["a"], "emb": [[1.0]]}), tmp_path / "wrong.parquet")
    with pytest.raises(ModelError, match=r"lacks column\(s\) \['id', 'vector'\]"):
        load_model(f"precomputed:{tmp_path / 'wrong.parquet'}")
    pq.write_table(pa.table({"id": ["a"], "vector": [[1.0]], "modality": ["photo"]}), tmp_path / "mod.parquet")
    with pytest.raises(ModelError, match="unknown modality values"):
        load_model(f"precomputed:{tmp_path / 'mod.parquet'}")
    with pytest.raises(ModelError, match="dim=3 but dim_hint=4"):
        load_model(f"precomputed:{tmp_path / 'mod.parquet'}?dim=3", dim_hint=4)


def test_keys_are_the_distinct_id_sub_of_one_modality_without_vectors(tmp_path: Path) -> None:
    from embedeval.models.precomputed import read_precomputed_keys

    table = pa.table({"id": ["b", "a", "b", None, "", "a", "c"], "sub": [0, 1, 0, 0, 0, None, 2],
                      "modality": ["image", "text", "image", "image", "image", "text", None],
                      "vector": [[1.0], [1.0], [float("nan")], [1.0], [1.0], [1.0], [1.0]]})
    pq.write_table(table, tmp_path / "v.parquet")
    keys = read_precomputed_keys(str(tmp_path / "v.parquet"), modality="image")
    assert keys.to_pylist() == [{"id": "b", "sub": 0}]   # duplicates once, no null/empty ids
    assert load_model(f"precomputed:{tmp_path / 'v.parquet'}").keys("text").to_pylist() == [
        {"id": "a", "sub": 1}, {"id": "a", "sub": 0}]   # a missing sub is 0, as when vectors are read
    pq.write_table(table.drop_columns(["modality"]), tmp_path / "plain.parquet")
    assert read_precomputed_keys(str(tmp_path / "plain.parquet"), modality="text").num_rows == 0
    assert read_precomputed_keys(str(tmp_path / "plain.parquet")).to_pylist() == [   # no modality: all image
        {"id": "b", "sub": 0}, {"id": "a", "sub": 1}, {"id": "a", "sub": 0}, {"id": "c", "sub": 2}]


def test_prompt_rows_are_a_modality_whose_ids_are_labels_and_axis_ids(tmp_path: Path) -> None:
    """``modality = 'prompt'`` rows load like any modality (ids kept as they are, bad rows refused with reasons)."""
    dim = 3
    table = pa.table({
        "id": ["x", "cat", "cat", "dog", "attr:size:low", "attr:size:high", "dog"],
        "sub": [0, 0, 1, 0, 0, 0, 1],
        "modality": ["image", "prompt", "prompt", "prompt", "prompt", "prompt", "prompt"],
        "vector": [[1.0, 0, 0], [0, 1.0, 0], [0, 2.0, 0], [0, 0, 1.0], [1.0, 1.0, 0], [0, 1.0, 1.0],
                   [float("nan"), 0, 0]],
    })
    pq.write_table(table, tmp_path / "v.parquet")
    model = load_model(f"precomputed:{tmp_path / 'v.parquet'}")
    assert model.info.modalities == ("image", "prompt")
    rows = model.load_vectors("prompt")
    assert list(zip(rows.good["id"].to_pylist(), rows.good["sub"].to_pylist())) == [
        ("cat", 0), ("cat", 1), ("dog", 0), ("attr:size:low", 0), ("attr:size:high", 0)]
    np.testing.assert_array_equal(np.array(rows.good["vector"].to_pylist(), np.float32)[1], [0, 2.0, 0])
    assert rows.bad.to_pylist()[0]["id"] == "dog" and "non-finite" in rows.bad.to_pylist()[0]["reason"]
    assert model.keys("prompt").num_rows == 6 and model.load_vectors("image").good["id"].to_pylist() == ["x"]
