"""Score tasks are plugins: a task declared in the test package is scored, diffed and reported with no
change to embedeval; unknown tasks and broken plugins are one-line configuration errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from embedeval.report.build import build_report
from embedeval.report.settings import ReportSettings
from embedeval.scoring import registry
from embedeval.scoring.job import score_run
from embedeval.scoring.settings import ScoreSettings

from .synthetic import CATEGORIES
from .test_job import RUN, small_settings, write_run

PLUGIN = f"{__package__}.toy_task"


@pytest.fixture
def toy_plugin() -> str:
    yield PLUGIN
    registry.unregister_task("toy_spread")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_plugin_task_is_scored_diffed_and_reported(tmp_path: Path, rng: np.random.Generator,
                                                      toy_plugin: str) -> None:
    storage, manifest = write_run(tmp_path, rng)
    settings = small_settings(plugins=[toy_plugin], tasks=["corrembed", "toy_spread"],
                              options={"toy_spread": {"scale": 2.0}})
    score_run(storage, RUN, manifest, CATEGORIES, settings)
    # the same embeddings as a second run: the nightly diff must compare the plugin's rows
    shutil.copytree(tmp_path / "runs" / RUN / "embeddings", tmp_path / "runs" / "r2" / "embeddings")
    for marker in (tmp_path / "runs" / "r2" / "embeddings").rglob("_COMMITTED.json"):
        marker.write_text(marker.read_text().replace(f'"{RUN}"', '"r2"').replace(f"runs/{RUN}/", "runs/r2/"))
    score_run(storage, "r2", manifest, CATEGORIES, settings)

    df = pl.read_parquet(tmp_path / "runs" / "r2" / "scores" / "scores.parquet")
    toy = df.filter(pl.col("task") == "toy_spread")
    assert set(toy["target"]) == {"image", "text", "sketch"} and set(toy["model"]) == {"good", "rand"}
    got = toy.filter((pl.col("model") == "good") & (pl.col("target") == "image"))
    emb = pl.read_parquet(tmp_path / "runs" / "r2" / "embeddings" / "model=good" / "modality=image" / "*.parquet")
    unit = _unit(np.array(emb["vector"].to_list()))
    centroid = unit.sum(axis=0)
    expected = 2.0 * float((unit @ (centroid / np.linalg.norm(centroid))).mean())
    assert got["value"][0] == pytest.approx(expected, abs=1e-6)
    assert got["params"][0] == '{"scale":2.0}' and got["protocol"][0] == "mean"

    paths = build_report(storage, "r2", settings=ReportSettings(dpi=50))
    board = storage.read_bytes("runs/r2/report/leaderboard.md").decode()
    assert "toy spread (image)" in board and "CorrEmbed" in board
    assert any(p.endswith("/toy_spread.png") for p in paths.plots)
    assert "Toy spread plot" in storage.read_bytes("runs/r2/report/report.html").decode()
    diff = storage.read_bytes("runs/r2/report/diff.md").decode()
    compared = diff.split("## All compared rows", 1)[1]
    assert compared.count("| toy_spread |") == 4          # good: 3 modalities, rand: image; each compared
    assert "score rows added: 0; removed: 0" in diff


def test_unknown_tasks_options_and_broken_plugins_are_config_errors(toy_plugin: str) -> None:
    with pytest.raises(ValidationError, match="unknown score tasks \\['nope'\\]"):
        ScoreSettings(tasks=["corrembed", "nope"])
    with pytest.raises(ValidationError, match="does not import"):
        ScoreSettings(plugins=["no.such.module"])
    with pytest.raises(ValidationError, match="declares no SCORE_TASK"):
        ScoreSettings(plugins=["json"])
    with pytest.raises(ValidationError, match="takes no options"):
        ScoreSettings(options={"modality_gap": {"x": 1}})
    with pytest.raises(ValidationError, match="scale"):
        ScoreSettings(plugins=[toy_plugin], tasks=["toy_spread"], options={"toy_spread": {"scale": -1}})
    s = ScoreSettings(plugins=[toy_plugin], tasks=["toy_spread"])
    assert s.options_for("toy_spread").scale == 1.0
    assert registry.task_names()[:len(registry.BUILTIN_TASKS)] == list(registry.BUILTIN_TASKS)
    with pytest.raises(registry.TaskRegistryError, match="built-in"):
        registry.register_task(registry.ScoreTask("corrembed", lambda i: [], "dup"))


def test_metric_directions_decide_what_a_regression_is() -> None:
    d = registry.metric_direction
    assert d("corrembed", "corrembed") == 1 and d("retrieval", "median_rank") == -1
    assert d("corrembed", "control_shuffled_embeddings") == 0 and d("prototypes", "ambiguity_rate") == 0
    assert d("no_such_task", "x") == 0 and d("retrieval", "failed") == 0
