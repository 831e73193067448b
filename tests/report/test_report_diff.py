"""diff.md: a change beyond both bootstrap intervals is significant, a small one is not; added and removed
models and rows are listed; the previous run is found by time, or given, or reported absent."""

from __future__ import annotations

import os

import pytest
from report_synthetic import OLD_ONLY, current_rows, populate, previous_rows, write_scores

from embedeval.io.storage import Storage
from embedeval.report import ReportError, build_report
from embedeval.report.diff import BORDERLINE, NO_CI, SIGNIFICANT, UNCHANGED, UNDEFINED, WITHIN_CI, classify_change
from embedeval.report.runs import previous_run
from embedeval.scoring.schema import ScoreRow


@pytest.fixture(scope="module")
def diff_md(tmp_path_factory: pytest.TempPathFactory) -> str:
    storage = Storage(str(tmp_path_factory.mktemp("diff") / "root"))
    populate(storage)
    build_report(storage, "r2")
    return storage.read_bytes("runs/r2/report/diff.md").decode()


def table_rows(md: str, section: str) -> list[list[str]]:
    """Data rows of the table under the Markdown heading that starts with ``section``."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("## " + section))
    out = []
    for ln in lines[start + 1:]:
        if ln.startswith("## "):
            break
        if ln.startswith("| ") and not ln.startswith("| model |"):
            out.append([c.strip() for c in ln.strip("|").split(" | ")])
    return out


def find(rows: list[list[str]], model: str, task: str, target: str, metric: str, k: str = "") -> list[str]:
    hits = [r for r in rows if r[0].split()[0].strip("*") == model and r[1:5] == [task, target, metric, k]]
    assert len(hits) == 1, (model, metric, hits)
    return hits[0]


def test_change_beyond_ci_is_significant_and_small_change_is_not(diff_md: str) -> None:
    compared = table_rows(diff_md, "All compared rows")
    big = find(compared, "resnet50", "corrembed", "all", "corrembed")
    small = find(compared, "vit_b_16", "corrembed", "all", "corrembed")
    assert big[-1] == "**▲ significant**" and big[-2] == "+0.100"
    assert "0.300" in big[8] and "0.400" in big[9]
    assert "significant" not in small[-1] and small[-1].endswith("within CI")
    notable = table_rows(diff_md, "Changes beyond the bootstrap interval")
    assert [r[0] for r in notable] == ["resnet50"]


def test_unchanged_rows_say_so(diff_md: str) -> None:
    compared = table_rows(diff_md, "All compared rows")
    row = find(compared, "resnet50", "corrembed", "all", "corr_knn", "10")
    assert row[-1] == "unchanged" and row[-2] == "0"


def test_added_and_removed_models_and_rows(diff_md: str) -> None:
    assert "- models added: clip_vitb32" in diff_md
    assert f"- models removed: {OLD_ONLY}" in diff_md
    added = table_rows(diff_md, "Added score rows")
    assert {r[0].split()[0].strip("*") for r in added if r[3] == "corr_knn" and r[4] == "500"} == {
        "resnet50", "vit_b_16", "random_resnet50"}
    removed = table_rows(diff_md, "Removed score rows")
    assert [r[3] for r in removed] == ["pearson_all"]
    new_model_rows = sum(1 for r in current_rows("r2") if r.model == "clip_vitb32")
    assert f"the {new_model_rows} rows of the added model(s) clip_vitb32" in diff_md
    assert "previous run: `r1`" in diff_md.lower()


def _row(value: float | None, lo: float | None, hi: float | None) -> ScoreRow:
    return ScoreRow("r", "m", "corrembed", "all", "corrembed", value, 10, 0.1, False, ci_low=lo, ci_high=hi)


@pytest.mark.parametrize("old,new,status", [
    ((0.30, 0.28, 0.32), (0.40, 0.38, 0.42), SIGNIFICANT),
    ((0.40, 0.38, 0.42), (0.30, 0.28, 0.32), SIGNIFICANT),
    ((0.35, 0.33, 0.37), (0.36, 0.34, 0.38), WITHIN_CI),
    ((0.30, 0.20, 0.45), (0.42, 0.31, 0.43), BORDERLINE),   # old outside the new CI, new inside the old one
    ((0.30, 0.28, 0.45), (0.40, 0.25, 0.42), WITHIN_CI),
    ((0.30, None, None), (0.40, 0.38, 0.42), NO_CI),
    ((None, None, None), (0.40, 0.38, 0.42), UNDEFINED),
    ((0.30, 0.28, 0.32), (0.30, 0.20, 0.40), UNCHANGED),
])
def test_classify_change(old: tuple, new: tuple, status: str) -> None:
    assert classify_change(_row(*old), _row(*new)) == status


def test_no_previous_run_is_said(tmp_path) -> None:  # noqa: ANN001
    storage = Storage(str(tmp_path / "root"))
    write_scores(storage, "only", current_rows("only"), "2026-01-01T00:00:00Z")
    paths = build_report(storage, "only")
    text = storage.read_bytes("runs/only/report/diff.md").decode()
    assert paths.previous_run_id is None
    assert "No previous run" in text and "no earlier run with a scores table" in text


def test_previous_run_is_latest_earlier_run_with_scores(tmp_path) -> None:  # noqa: ANN001
    storage = Storage(str(tmp_path / "root"))
    write_scores(storage, "a-old", previous_rows("a-old"), "2026-01-01T00:00:00Z")
    write_scores(storage, "z-mid", previous_rows("z-mid"), "2026-01-02T00:00:00Z")
    storage.write_bytes("runs/b-noscores/config.yaml", b"run_id: b-noscores\n")   # no scores: never a candidate
    write_scores(storage, "m-cur", current_rows("m-cur"), "2026-01-03T00:00:00Z")
    write_scores(storage, "c-later", previous_rows("c-later"), "2026-01-04T00:00:00Z")
    assert previous_run(storage, "m-cur")[0] == "z-mid"      # by time, not by name
    assert previous_run(storage, "z-mid")[0] == "a-old"
    assert previous_run(storage, "a-old")[0] is None
    assert build_report(storage, "m-cur", previous_run_id="a-old").previous_run_id == "a-old"
    assert "given explicitly" in storage.read_bytes("runs/m-cur/report/diff.md").decode()


def test_previous_run_falls_back_to_config_time(tmp_path) -> None:  # noqa: ANN001
    storage = Storage(str(tmp_path / "root"))
    for run in ["late", "early", "now"]:
        write_scores(storage, run, current_rows(run, models=["resnet50"]), created_at=None)
        storage.write_bytes(f"runs/{run}/config.yaml", b"x: 1\n")
    for run, t in (("early", 1_000_000), ("late", 2_000_000), ("now", 3_000_000)):
        os.utime(storage.path(f"runs/{run}/config.yaml"), (t, t))
    prev, how = previous_run(storage, "now")
    assert prev == "late" and "config.yaml modification time" in how


def test_unknown_previous_run_is_an_error(tmp_path) -> None:  # noqa: ANN001
    storage = Storage(str(tmp_path / "root"))
    populate(storage)
    with pytest.raises(ReportError, match="nope"):
        build_report(storage, "r2", previous_run_id="nope")
