"""Leaderboard: the best real model per column is starred (checked against an independent max), random
models are flagged loudly and never starred, settings fall back and validate as documented."""

from __future__ import annotations

from dataclasses import replace

import pytest
from report_synthetic import RANDOM, current_rows, populate
from pydantic import ValidationError

from embedeval.io.storage import Storage
from embedeval.report import HeadlineMetric, ReportSettings, build_report
from embedeval.report.leaderboard import build_leaderboard
from embedeval.scoring.schema import ScoreRow


@pytest.fixture(scope="module")
def leaderboard_md(tmp_path_factory: pytest.TempPathFactory) -> str:
    storage = Storage(str(tmp_path_factory.mktemp("lb") / "root"))
    populate(storage)
    paths = build_report(storage, "r2")
    return storage.read_bytes(paths.leaderboard.removeprefix(storage.root + "/")).decode()


def parse_table(md: str) -> tuple[list[str], dict[str, list[str]]]:
    """The ranked table of leaderboard.md: headers and {model: cells} (model name without its flag)."""
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| # | model |"))
    headers = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows: dict[str, list[str]] = {}
    for ln in lines[start + 1:]:
        cells = [c.strip() for c in ln.strip("|").split(" | ")]
        if len(cells) != len(headers) or not cells[0].isdigit():
            break
        rows[cells[1].split()[0].strip("*")] = cells
    return headers, rows


def expected_best(rows: list[ScoreRow], **key: object) -> set[str]:
    """Independent oracle: the non-random model(s) with the highest value for this score key."""
    vals = {r.model: r.value for r in rows
            if not r.weights_random and all(getattr(r, f) == v for f, v in key.items())}
    top = max(vals.values())
    return {m for m, v in vals.items() if v == top}


@pytest.mark.parametrize("header,key", [
    ("CorrEmbed", dict(task="corrembed", target="all", metric="corrembed")),
    ("corr_knn@10", dict(task="corrembed", target="all", metric="corr_knn", k=10)),
    ("rank ρ: age", dict(task="rankability", target="age", metric="spearman", protocol="regression")),
    ("rank ρ: price", dict(task="rankability", target="price", metric="spearman", protocol="regression")),
    ("i→t R@1", dict(task="retrieval", target="image->text", metric="R@1")),
    ("sketch mAP@all (unseen)", dict(task="retrieval", target="sketch->image", metric="mAP@all", split="unseen")),
    ("NMI (image)", dict(task="prototypes", target="image", metric="nmi")),
])
def test_best_model_per_column_is_starred(leaderboard_md: str, header: str, key: dict) -> None:
    headers, rows = parse_table(leaderboard_md)
    col = headers.index(header)
    starred = {m for m, cells in rows.items() if "★" in cells[col]}
    assert starred == expected_best(current_rows("r2"), **key)
    for m in starred:
        assert rows[m][col].startswith("**★")  # bold as well as starred


def test_random_model_is_flagged_and_never_best(leaderboard_md: str) -> None:
    headers, rows = parse_table(leaderboard_md)
    banner_at = leaderboard_md.index("RANDOM WEIGHTS")
    assert banner_at < leaderboard_md.index("| # | model |")      # the banner comes before the table
    assert RANDOM in leaderboard_md[banner_at:banner_at + 200]
    assert "RANDOM WEIGHTS — not a real model" in rows[RANDOM][1]
    assert list(rows)[-1] == RANDOM                                # listed last
    assert not any("★" in c for c in rows[RANDOM][2:])
    # it has the highest NMI of all models, yet the star goes to a real one
    nmi = {r.model: r.value for r in current_rows("r2") if r.metric == "nmi"}
    assert max(nmi, key=nmi.get) == RANDOM  # type: ignore[arg-type]
    assert "★" in rows[max((m for m in nmi if m != RANDOM), key=nmi.get)][headers.index("NMI (image)")]  # type: ignore[arg-type]


def test_header_says_run_date_and_n(leaderboard_md: str) -> None:
    assert "run `r2`" in leaderboard_md and "scored 2026-01-02 10:00 UTC" in leaderboard_md
    assert "## Columns" in leaderboard_md and "| sketch mAP@all (unseen) | retrieval | sketch->image" in leaderboard_md
    assert "| 300 |" in leaderboard_md  # n of the sketch column


def test_models_without_a_metric_show_a_dash(leaderboard_md: str) -> None:
    headers, rows = parse_table(leaderboard_md)
    assert rows["resnet50"][headers.index("i→t R@1")] == "—"


def test_missing_k_falls_back_to_nearest_and_says_so() -> None:
    board = build_leaderboard(current_rows("r2"), ReportSettings(corr_knn_k=20).headline_metrics())
    assert any(c.metric == "corr_knn" and c.k == 10 for c in board.columns)
    assert any("k=20" in n and "k=10" in n for n in board.notes)


def test_lower_is_better_column_and_ties() -> None:
    def row(model: str, value: float, random: bool = False) -> ScoreRow:
        return ScoreRow("r", model, "retrieval", "image->text", "median_rank", value, 100, 0.1, random)

    rows = [row("a", 3.0), row("b", 2.0), row("c", 2.0), row("z", 1.0, random=True)]
    spec = HeadlineMetric(label="median rank", task="retrieval", metric="median_rank", higher_is_better=False)
    board = build_leaderboard(rows, [spec])
    assert board.best[0] == {"b", "c"}                 # ties both marked; the random model never
    assert board.models == ["b", "c", "a", "z"]


def test_headline_protocol_picks_one_definition_and_accepts_the_old_key() -> None:
    rows = current_rows("r2")
    board = build_leaderboard(rows, ReportSettings().headline_metrics())
    assert [c.label for c in board.columns if c.task == "rankability"] == ["rank ρ: age", "rank ρ: price"]
    assert all(c.protocol == "regression" for c in board.columns if c.task == "rankability")
    # configs written before protocols existed say `variant:`; it means the same
    old = HeadlineMetric.model_validate({"label": "x", "task": "rankability", "metric": "spearman",
                                         "variant": "extremes"})
    assert old.protocol == "extremes"
    board = build_leaderboard(rows, [old])
    assert board.columns and all(c.protocol == "extremes" for c in board.columns)


def test_settings_reject_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        ReportSettings(max_thumbs=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        HeadlineMetric(label="x", task="t", metric="m", colour="red")  # type: ignore[call-arg]
