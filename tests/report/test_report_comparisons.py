"""The report's paired comparison: the ≈ marker, the pairwise table and the P(A > B) plot."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from report_synthetic import current_rows, populate, write_scores

from embedeval.io.storage import Storage
from embedeval.report import ReportSettings, build_report
from embedeval.scoring.paired import compare_models
from embedeval.scoring.per_item import PER_ITEM_SCHEMA
from embedeval.scoring.settings import ScoreSettings


def _comparisons() -> pa.Table:
    """CorrEmbed per-anchor values: clip_vitb32 (the best) and vit_b_16 differ by noise, resnet50 is lower."""
    rng = np.random.default_rng(0)
    n = 200
    hard = rng.normal(0.4, 0.1, n)
    values = {"clip_vitb32": hard + 0.05 * rng.normal(size=n), "vit_b_16": hard + 0.05 * rng.normal(size=n),
              "resnet50": hard - 0.2 + 0.05 * rng.normal(size=n), "random_resnet50": 0.05 * rng.normal(size=n)}
    tables = [pa.table({"model": [m] * n, "task": ["corrembed"] * n, "target": ["all"] * n,
                        "metric": ["corrembed"] * n, "k": pa.array([None] * n, pa.int64()), "split": ["all"] * n,
                        "protocol": ["per-anchor"] * n, "item": [f"a{i:03d}" for i in range(n)],
                        "sub": pa.array([0] * n, pa.int16()), "value": v}, schema=PER_ITEM_SCHEMA)
              for m, v in values.items()]
    return compare_models(pa.concat_tables(tables), ScoreSettings(bootstrap_resamples=200, use_ray=False))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    storage = Storage(str(tmp_path_factory.mktemp("paired") / "root"))
    populate(storage)
    write_scores(storage, "r2", current_rows("r2"), "2026-01-02T10:00:00Z", comparisons=_comparisons())
    build_report(storage, "r2", settings=ReportSettings(dpi=80))
    return storage


def test_near_best_marker_and_pairwise_table(built: Storage) -> None:
    board = built.read_bytes("runs/r2/report/leaderboard.md").decode()
    top = board[:board.index("## Columns")]
    rows = {line.split("|")[2].strip().strip("*"): line for line in top.splitlines() if line.startswith("| ")}
    corr = board.splitlines()[[i for i, l in enumerate(board.splitlines()) if l.startswith("| #")][0]]
    col = [c.strip() for c in corr.split("|")].index("CorrEmbed")
    cell = lambda model: [c.strip() for c in rows[model].split("|")][col]  # noqa: E731
    assert cell("vit_b_16").startswith("≈") and "★" in cell("clip_vitb32") and "≈" not in cell("resnet50")
    assert "not separable from the best" in board
    section = board[board.index("## Pairwise comparison"):]
    lines = [l for l in section.splitlines() if l.startswith("| CorrEmbed")]
    assert len(lines) == 6                                   # every unordered pair of four models, once
    vit = next(l for l in lines if "clip_vitb32 | vit_b_16" in l or "vit_b_16 | clip_vitb32" in l)
    res = next(l for l in lines if "clip_vitb32 | resnet50" in l)
    assert vit.rstrip(" |").endswith("**no**") and res.rstrip(" |").endswith("yes")
    page = built.read_bytes("runs/r2/report/report.html").decode()
    assert 'id="pairwise"' in page and "≈" in page
    assert built.exists("runs/r2/report/plots/paired_p_better.png")


def test_run_without_comparisons_has_no_marker(tmp_path) -> None:
    storage = Storage(str(tmp_path / "root"))
    populate(storage)
    build_report(storage, "r2", settings=ReportSettings(dpi=80))
    board = storage.read_bytes("runs/r2/report/leaderboard.md").decode()
    assert "≈" not in board and "Pairwise comparison" not in board
    assert not storage.exists("runs/r2/report/plots/paired_p_better.png")
