"""The run layout (one module knows every path; the on-disk names are a contract) and the one commit
protocol every stage uses (files, then a marker listing them; readers trust only the marker)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from embedeval.io.commit import CommitError, commit, read_commit, read_committed_table, uncommit, write_file, write_table
from embedeval.io.layout import CacheLayout, RunLayout, partition_of
from embedeval.io.storage import Storage

LIB = Path(__file__).resolve().parents[2] / "lib" / "embedeval"


def test_layout_paths_are_the_on_disk_contract() -> None:
    r = RunLayout("n1")
    assert [r.config, r.embed_summary, r.input_manifest, r.input_tag_categories, r.manifest_errors] == [
        "runs/n1/config.yaml", "runs/n1/embed_summary.json", "runs/n1/inputs/manifest.parquet",
        "runs/n1/inputs/tag_categories.json", "runs/n1/errors/stage=manifest/part-0.parquet"]
    assert r.partition("m", "image") == "runs/n1/embeddings/model=m/modality=image"
    assert r.partition_errors("m", "text") == "runs/n1/errors/model=m/modality=text"
    assert [r.scores_table, r.ambiguity_table, r.prototypes_table] == [
        "runs/n1/scores/scores.parquet", "runs/n1/scores/ambiguity.parquet", "runs/n1/scores/prototypes.parquet"]
    assert r.partition_blocks("m", "sketch") == "runs/n1/scores/blocks/model=m/modality=sketch"
    assert r.score_unit("m", "corrembed_image-1a2b") == "runs/n1/scores/parts/model=m/unit=corrembed_image-1a2b"
    assert [r.report_file("report.html"), r.plot("leaderboard")] == [
        "runs/n1/report/report.html", "runs/n1/report/plots/leaderboard.png"]
    c = CacheLayout("k")
    assert [c.key_file, c.kind_dir("image"), c.entries_file("text", "text", "d")] == [
        "cache/k/key.json", "cache/k/image", "cache/k/text/part-text-d.parquet"]
    assert partition_of(r.partition("a", "b") + "/part-0.parquet") == ("a", "b") and partition_of("runs/x") is None


def test_no_module_but_the_layout_builds_run_or_cache_paths_and_only_storage_knows_s3_options() -> None:
    path_literal = re.compile(r"""["'](?:runs|cache)/|f["']runs/|["'](?:embeddings|scores|report|errors|inputs)/""")
    builders, s3_users = [], []
    for path in sorted(LIB.rglob("*.py")):
        rel = path.relative_to(LIB).as_posix()
        code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines()
                         if not line.lstrip().startswith(("``", '"""')))
        if rel != "io/layout.py" and path_literal.search(code):
            builders.append(rel)
        if rel not in ("io/storage.py", "config.py") and "S3Options" in code:
            s3_users.append(rel)
    assert builders == [] and s3_users == []


def test_a_folder_exists_for_readers_only_through_its_marker(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    folder = RunLayout("r").scores
    table = write_table(storage, RunLayout("r").scores_table, pa.table({"x": [1, 2, 3]}))
    page = write_file(storage, f"{folder}/note.txt", b"hello")
    assert read_commit(storage, folder) is None                     # files alone are not visible
    commit(storage, folder, [table, page], run_id="r")
    found = read_commit(storage, folder)
    assert found is not None and found.fields["run_id"] == "r" and found.file("note.txt") == page
    assert table.rows == 3 and page.rows is None and found.file("absent.parquet") is None
    assert read_committed_table(storage, found.file("scores.parquet")).column("x").to_pylist() == [1, 2, 3]
    storage.write_parquet(RunLayout("r").scores_table, pa.table({"x": [9]}))   # rewritten behind the marker
    with pytest.raises(CommitError, match="checksum"):
        read_committed_table(storage, found.file("scores.parquet"))
    uncommit(storage, folder)
    assert read_commit(storage, folder) is None


def test_a_malformed_marker_is_one_clear_error(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    storage.write_json("f/_COMMITTED.json", {"no": "files"})
    with pytest.raises(CommitError, match="f/_COMMITTED.json is malformed"):
        read_commit(storage, "f")


def test_the_score_stage_commits_its_three_tables_together(tmp_path: Path) -> None:
    from embedeval.io.score_files import commit_scores, read_score_table, read_scores_commit

    storage = Storage(str(tmp_path))
    empty = pa.table({"a": pa.array([], pa.int64())})
    commit_scores(storage, "r", pa.table({"v": [1.0, 2.0]}), empty, empty, {"embedeval.run_id": "r"})
    commit_scores(storage, "r", pa.table({"v": [3.0]}), empty, pa.table({"a": [7]}), {"embedeval.run_id": "r"})
    found = read_scores_commit(storage, "r")
    assert found is not None and found.fields["metadata"] == {"embedeval.run_id": "r"}
    assert sorted((f.path, f.rows) for f in found.files) == [
        ("runs/r/scores/ambiguity.parquet", 0), ("runs/r/scores/prototypes.parquet", 1),
        ("runs/r/scores/scores.parquet", 1)]
    assert read_score_table(storage, found).column("v").to_pylist() == [3.0]
    assert read_scores_commit(storage, "other") is None
