"""``runs list`` / ``runs show``: partitions committed, pending ones, quarantine, scores and report state."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest
from report_synthetic import current_rows, write_scores

from embedeval.io.commit import commit, write_file
from embedeval.io.embeddings import CommitRecord, PartFile, write_commit_marker
from embedeval.io.layout import RunLayout, marker_in
from embedeval.io.storage import Storage
from embedeval.report import ReportError, format_run_list, list_runs, show_run
from embedeval.report.scores import has_scores, load_scores


def _errors(storage: Storage, rel: str, stages: list[str]) -> None:
    storage.write_parquet(rel, pa.table({"id": [f"i{k}" for k in range(len(stages))], "stage": stages,
                                         "reason": ["x"] * len(stages)}))


def make_run(storage: Storage, run_id: str, created_at: str | None, with_scores: bool) -> None:
    layout = RunLayout(run_id)
    storage.write_bytes(layout.config, b"run_id: x\n")
    _errors(storage, layout.manifest_errors, ["validate"])
    for model, modality, rows, quarantined in (("resnet50", "image", 100, 2), ("resnet50", "sketch", 40, 0),
                                               ("random_resnet50", "image", 100, 2)):
        d = layout.partition(model, modality)
        storage.write_bytes(f"{d}/part-0.parquet", b"x")
        errors = []
        if model == "resnet50" and modality == "image":
            errors = [f"{layout.partition_errors(model, modality)}/part-0.parquet"]
            _errors(storage, errors[0], ["decode", "decode"])
        write_commit_marker(storage, CommitRecord(run_id, model, modality, 2048, [PartFile(f"{d}/part-0.parquet",
                            rows, "0")], rows, quarantined, committed_at=1_767_225_600.0, errors_files=errors))
    # a partition a killed run left without its marker: its files and its errors are invisible
    storage.write_bytes(f"{layout.partition('vit_b_16', 'image')}/part-0.parquet", b"half written")
    _errors(storage, f"{layout.partition_errors('vit_b_16', 'image')}/part-0.parquet", ["embed"] * 5)
    if with_scores:
        write_scores(storage, run_id, current_rows(run_id, models=["resnet50", "random_resnet50"]), created_at)
    else:  # a score stage that never committed: its table is not there for readers
        storage.write_bytes(layout.scores_table, b"not committed")


@pytest.fixture
def storage(tmp_path) -> Storage:  # noqa: ANN001
    s = Storage(str(tmp_path / "root"))
    make_run(s, "b-second", "2026-01-02T00:00:00Z", with_scores=True)
    make_run(s, "a-first", "2026-01-01T00:00:00Z", with_scores=True)
    second = RunLayout("b-second")
    commit(s, second.report, [write_file(s, second.report_file("leaderboard.md"), b"# x")])
    s.write_bytes(RunLayout("a-first").report_file("leaderboard.md"), b"# a report that never committed")
    return s


def test_list_runs_orders_by_time_and_summarises(storage: Storage) -> None:
    runs = list_runs(storage)
    assert [r.run_id for r in runs] == ["a-first", "b-second"]
    s = runs[1]
    assert s.has_config and s.has_scores and s.has_report and not runs[0].has_report
    assert [(p.model, p.modality, p.rows, p.quarantined) for p in s.partitions] == [
        ("random_resnet50", "image", 100, 2), ("resnet50", "image", 100, 2), ("resnet50", "sketch", 40, 0)]
    assert s.pending == ["model=vit_b_16/modality=image"]
    assert s.error_rows == 3 and s.errors_by_stage == {"decode": 2, "validate": 1}
    assert s.random_models == ["random_resnet50"]
    assert s.models == ["random_resnet50", "resnet50"]
    assert s.time.source == "scores metadata 'created_at'"
    table = format_run_list(runs)
    assert table.splitlines()[0].split()[:2] == ["run", "time"]
    assert "b-second" in table and "(1 random)" in table and "(+1 pending)" in table


def test_show_run_text(storage: Storage) -> None:
    text = show_run(storage, "b-second")
    assert "run b-second" in text and "2026-01-02 00:00 UTC" in text
    assert "3 committed partitions" in text and re.search(r"resnet50\s+sketch\s+40\s+0\s+2048", text)
    assert "random_resnet50 ⚠ RANDOM WEIGHTS" in text
    assert "model=vit_b_16/modality=image" in text and "invisible to readers" in text
    assert "3 quarantined rows (decode: 2, validate: 1)" in text
    assert "scores:      " in text and "rows over 2 models" in text
    assert "report:      leaderboard.md" in text
    assert "report:      none" in show_run(storage, "a-first")


def test_run_without_scores_or_report(tmp_path) -> None:  # noqa: ANN001
    storage = Storage(str(tmp_path / "root"))
    make_run(storage, "r", None, with_scores=False)
    s = list_runs(storage)[0]
    assert not s.has_scores and s.time.source == "config.yaml modification time"
    assert "scores:      none" in show_run(storage, "r")
    with pytest.raises(ReportError, match="no committed scores for run 'r'"):   # the report trusts only markers
        load_scores(storage, "r")


def test_unknown_run_names_the_known_ones(storage: Storage) -> None:
    with pytest.raises(ReportError, match="a-first, b-second"):
        show_run(storage, "zzz")


def test_empty_root_lists_nothing(tmp_path) -> None:  # noqa: ANN001
    assert list_runs(Storage(str(tmp_path / "empty"))) == []


def test_a_run_scored_before_stage_markers_still_diffs(tmp_path) -> None:  # noqa: ANN001
    """An older run has a scores.parquet (its stage's commit then) and no marker: still a previous run."""
    storage = Storage(str(tmp_path / "root"))
    make_run(storage, "old", "2026-11-01T00:00:00+00:00", with_scores=True)
    storage.delete_file(marker_in(RunLayout("old").scores))
    assert has_scores(storage, "old") and load_scores(storage, "old")
