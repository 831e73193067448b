"""The regression signal compares like for like: a catalogue that grew with the same vectors does not fire;
the same items with degraded vectors do. Both runs are re-scored on the items they share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedeval.cli import _regression_status
from embedeval.errors import EXIT_REGRESSION
from embedeval.io.storage import Storage
from embedeval.report.build import build_report
from embedeval.report.diff import diff_scores, is_regression
from embedeval.report.scores import load_scores
from embedeval.report.settings import ReportSettings
from embedeval.scoring.job import score_run
from embedeval.scoring.panel import panel_layout, read_panel, score_common_panel
from embedeval.scoring.settings import ScoreSettings

from .synthetic import CATEGORIES
from .test_identity import _catalogue

SETTINGS = ScoreSettings(use_ray=False, bootstrap_resamples=30, corr_ks=[10], fewshot_ns=[5], fewshot_repeats=2,
                         spearman_max_pairs=20_000, kmeans_iters=10, tasks=["corrembed", "retrieval", "prototypes"])


def _night(storage: Storage, run: str, n: int, base: np.ndarray):  # noqa: ANN202
    manifest = _catalogue(storage, run, n, 8, base)
    score_run(storage, run, manifest, CATEGORIES, SETTINGS)
    return manifest


def test_growth_does_not_fire_and_degraded_vectors_do(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    base = np.random.default_rng(0).normal(size=(900, 24)).astype(np.float32)
    m1 = _night(storage, "night1", 600, base)

    # night 2: 300 more items, the same vectors for the 600 old ones
    m2 = _night(storage, "night2", 900, base)
    info = score_common_panel(storage, "night2", "night1", m2, m1, CATEGORIES, SETTINGS)
    assert info.scored and info.shared == 600 and read_panel(storage, "night2", "night1") == info
    assert storage.exists(panel_layout("night2", "night1", "night1").scores_table)
    paths = build_report(storage, "night2", previous_run_id="night1", settings=ReportSettings(dpi=50))
    assert paths.not_like_for_like is None and paths.regressions == []
    # the plain diff does see the growth: a larger gallery moves retrieval scores beyond their intervals
    plain = diff_scores(load_scores(storage, "night2"), load_scores(storage, "night1"), "night2", "night1", "")
    assert any(is_regression(x) for x in plain.compared)
    md = storage.read_bytes("runs/night2/report/diff.md").decode()
    assert "Like for like: regressions on the 600 shared items (0)" in md
    assert _regression_status(paths, True) == 0

    # night 3: the same 900 items, vectors degraded: like for like is the run's own diff, and it fires
    noisy = base + 3.0 * np.random.default_rng(1).normal(size=base.shape).astype(np.float32)
    m3 = _night(storage, "night3", 900, noisy)
    info = score_common_panel(storage, "night3", "night2", m3, m2, CATEGORIES, SETTINGS)
    assert info.identical and not info.scored
    paths = build_report(storage, "night3", previous_run_id="night2", settings=ReportSettings(dpi=50))
    assert paths.not_like_for_like is None and paths.regressions
    assert any("corrembed" in line for line in paths.regressions)
    assert _regression_status(paths, True) == EXIT_REGRESSION and _regression_status(paths, False) == 0


def test_without_a_panel_the_report_says_it_cannot_compare_like_for_like(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    base = np.random.default_rng(0).normal(size=(200, 24)).astype(np.float32)
    _night(storage, "a", 150, base)
    _night(storage, "b", 200, base)
    paths = build_report(storage, "b", previous_run_id="a", settings=ReportSettings(dpi=50))
    assert paths.regressions == [] and "score.common_panel" in paths.not_like_for_like
    assert "No like-for-like comparison" in storage.read_bytes("runs/b/report/diff.md").decode()
