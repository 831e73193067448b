"""Manifest reading: every malformed-row kind is quarantined with its reason; malformed files fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedeval.io.manifest import ManifestError, load_manifest, load_tag_categories, resolve_media_path


def _reasons(result) -> dict[tuple[str | None, int], str]:  # noqa: ANN001
    return {(r["id"], r["sub"]): r["reason"] for r in result.quarantine.rows}


def test_parquet_manifest_quarantines_bad_rows(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    table = pa.table({
        "id": ["a", "b", "a", "", "c", "d"],
        "image": ["img/a.png", "img/b.png", "img/a2.png", "img/x.png", "../../etc/passwd", "/abs/elsewhere.png"],
        "captions": [["one", ""], ["two"], ["dup"], ["x"], ["y"], ["z"]],
        "tags": [["red"], ["blue", " "], [], [], [], []],
        "attr_size": ["1.5", "oops", None, "1", "1", "1"],
    })
    pq.write_table(table, tmp_path / "m.parquet")
    result = load_manifest(str(tmp_path / "m.parquet"))
    assert result.table.column("id").to_pylist() == ["a", "b"]
    reasons = _reasons(result)
    assert "duplicate id" in reasons[("a", 0)]
    assert "missing or empty id" in reasons[(None, 0)]
    assert "outside the allowed roots" in reasons[("c", 0)]
    assert "outside the allowed roots" in reasons[("d", 0)]
    assert reasons[("a", 1)] == "empty caption"
    assert result.rows_read == 6
    # accepted + whole-row quarantines = rows read; the empty caption only removes one caption
    whole_rows = [r for r in result.quarantine.rows if r["modality"] is None]
    assert result.table.num_rows + len(whole_rows) == result.rows_read
    assert result.table.column("image").to_pylist()[0] == str((tmp_path / "img/a.png").resolve())
    assert result.table.column("tags").to_pylist() == [["red"], ["blue"]]
    sizes = result.table.column("attr_size").to_pylist()
    assert sizes[0] == 1.5 and sizes[1] != sizes[1]  # non-numeric -> NaN


def test_extra_allowed_root_admits_absolute_paths(tmp_path: Path) -> None:
    other = tmp_path / "shared-images"
    other.mkdir()
    (tmp_path / "manifests").mkdir()
    manifest = tmp_path / "manifests" / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "image": [str(other / "a.png")]}), manifest)
    assert load_manifest(str(manifest)).table.num_rows == 0
    assert load_manifest(str(manifest), allowed_roots=[str(other)]).table.num_rows == 1


def test_csv_with_non_utf8_row_and_list_cells(tmp_path: Path) -> None:
    data = (b'id,image,captions,tags,label\n'
            b'a,a.png,"[""red square"", ""a square""]",red|square,square\n'
            b'b,b.png,caf\xe9 cr\xe8me,red,circle\n'
            b'c,c.png,plain caption,blue,circle\n')
    (tmp_path / "m.csv").write_bytes(data)
    result = load_manifest(str(tmp_path / "m.csv"))
    assert result.table.column("id").to_pylist() == ["a", "c"]
    assert result.table.column("captions").to_pylist()[0] == ["red square", "a square"]
    assert result.table.column("tags").to_pylist()[0] == ["red", "square"]
    assert "not valid UTF-8" in _reasons(result)[("b", 0)]


def test_jsonl_with_malformed_line(tmp_path: Path) -> None:
    lines = [json.dumps({"id": "a", "image": "a.png", "captions": ["x"]}), "{not json", json.dumps([1, 2]),
             json.dumps({"id": "b", "image": "b.png", "captions": "single caption"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    result = load_manifest(str(tmp_path / "m.jsonl"))
    assert result.table.column("id").to_pylist() == ["a", "b"]
    assert result.table.column("captions").to_pylist()[1] == ["single caption"]
    assert len([r for r in result.quarantine.rows if "line" in r["reason"]]) == 2
    assert result.rows_read == 4


@pytest.mark.parametrize("content,name,message", [
    (b"", "m.parquet", "not a readable Parquet"),
    (b"image\nx.png\n", "m.csv", "no 'id' column"),
    (b"id,label\na,b\n", "m.csv", "at least one of the columns"),
    (b"id\n", "m.txt", "unknown format"),
])
def test_malformed_files_fail_with_clear_error(tmp_path: Path, content: bytes, name: str, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ManifestError, match=message):
        load_manifest(str(tmp_path / name))


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(str(tmp_path / "none.parquet"))


def test_s3_manifest_paths_are_resolved_and_confined(s3_options, s3_server) -> None:  # noqa: ANN001
    from embedeval.io.storage import Storage

    st = Storage("s3://test/manifests", s3_options)
    st.write_parquet("cat/m.parquet", pa.table({"id": ["a", "b", "c"],
                                                "image": ["img/a.png", "../../other-bucket/x.png",
                                                          "s3://test/manifests/cat/img/c.png"]}))
    result = load_manifest("s3://test/manifests/cat/m.parquet", st)
    assert result.table.column("image").to_pylist() == ["s3://test/manifests/cat/img/a.png",
                                                        "s3://test/manifests/cat/img/c.png"]
    assert "outside the allowed roots" in _reasons(result)[("b", 0)]


def test_resolve_rejects_prefix_tricks(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    with pytest.raises(ValueError):
        resolve_media_path("../data-evil/x.png", root, [root])
    assert resolve_media_path("sub/../x.png", root, [root]) == str(Path(root) / "x.png")


def test_tag_categories(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("tag,category\nred,colour\nstriped,pattern\n")
    assert load_tag_categories(str(tmp_path / "c.csv")) == {"red": "colour", "striped": "pattern"}
    (tmp_path / "bad.csv").write_text("tag,category\nred,colour\nred,pattern\n")
    with pytest.raises(ManifestError, match="both"):
        load_tag_categories(str(tmp_path / "bad.csv"))


def test_group_column_tags_belong_to_the_group(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    table = pa.table({
        "id": ["a1", "a2", "b1", "b2", "b3", "c1", "d1", "e1"],
        "image": [f"img/{i}.png" for i in ("a1", "a2", "b1", "b2", "b3", "c1", "d1", "e1")],
        "group": ["A", "A", "B", "B", "B", "C", "", None],
        # A: tags on one row only; B: two rows disagree; C: a one-picture group; d1/e1: no group (own group)
        "tags": [[], ["red", "dress"], ["blue"], ["blue"], ["green"], ["red"], ["x"], []],
    })
    pq.write_table(table, tmp_path / "m.parquet")
    result = load_manifest(str(tmp_path / "m.parquet"))
    out = result.table
    assert out.column("id").to_pylist() == ["a1", "a2", "c1", "d1", "e1"]
    assert out.column("group").to_pylist() == ["A", "A", "C", None, None]
    assert out.column("tags").to_pylist() == [["red", "dress"], ["red", "dress"], ["red"], ["x"], []]
    reasons = _reasons(result)
    for rid in ("b1", "b2", "b3"):
        assert "group 'B': rows give different tags" in reasons[(rid, 0)]
        assert "['blue']" in reasons[(rid, 0)] and "['green']" in reasons[(rid, 0)]
    assert result.table.num_rows + len(result.quarantine) == result.rows_read
    # the images of kept rows stay aligned with their ids after the quarantine
    assert [p.rsplit("/", 1)[1] for p in out.column("image").to_pylist()] == ["a1.png", "a2.png", "c1.png",
                                                                             "d1.png", "e1.png"]


def test_group_codes_in_the_catalogue_view() -> None:
    from embedeval.scoring.context import CatalogueView

    view = CatalogueView.from_table(pa.table({"id": ["p", "q", "r", "s"], "group": ["B", None, "A", "B"]}))
    codes = view.group_of
    assert codes.dtype == np.int64 and codes[0] == codes[3] and len(set(codes.tolist())) == 3
    assert np.array_equal(CatalogueView.from_table(pa.table({"id": ["p", "q"]})).group_of, [0, 1])
