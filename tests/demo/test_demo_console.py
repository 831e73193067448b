"""`embedeval run` / `demo` in a fresh process print progress and a summary, and none of Ray's noise.

A fresh interpreter, as a user runs it: ensure_ray starts its own Ray there (the session fixture's Ray
would hide what the code path that starts Ray does to the console). stdout is a pipe, so the bars come
as periodic lines, as in CI and k8s logs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedeval.demo.corpus import write_demo_corpus
from embedeval.workflow import demo_config

LIB = Path(__file__).resolve().parents[2] / "lib"

# What a user cannot act on (issue 11); each must be absent from the quiet console.
RAY_NOISE = [
    r"core_worker\.cc",
    r"Progress bars disabled",
    r"streaming_executor",
    r"issue_detector",
    r"To avoid out-of-memory errors, consider setting",
    r"Token authentication is enabled",
    r"\(MapWorker",          # worker log echo: "(MapWorker(MapBatches(Embedder)) pid=...)"
    r"\bpid=\d+\)",
]


def run_cli(cwd: Path, *argv: str) -> str:
    """stdout + stderr of ``embedeval argv...`` in a fresh process (exit status 0 asserted)."""
    env = {**os.environ, "PYTHONPATH": str(LIB)}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "embedeval.cli", *argv], env=env, capture_output=True, text=True,
                            timeout=600, cwd=cwd)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    return console


@pytest.mark.slow
def test_run_console_has_progress_and_summary_and_no_ray_noise(tmp_path: Path) -> None:
    # The demo's config, but with the default actor pools: the path where Ray Data prints the most.
    corpus = write_demo_corpus(tmp_path / "demo", n_items=24)
    config = demo_config(tmp_path / "demo", corpus.manifest, corpus.tag_categories, "r1", ["builtin:pixelstats"],
                         local=True)
    config["embed"].update(replicas="actors", models_at_once=1)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    console = run_cli(tmp_path, "run", "--config", str(tmp_path / "run.yaml"))
    noise = [line for line in console.splitlines() if any(re.search(p, line) for p in RAY_NOISE)]
    assert noise == [], "\n".join(noise)
    assert "\r" not in console  # not a terminal: plain lines, never a redrawn bar
    lines = console.splitlines()
    # one bar per stage, ending in a line with counts per modality and the time taken
    assert any(re.fullmatch(r"  embed builtin-pixelstats: 48/48 items \(image 24/24, sketch 24/24\) in [\d.]+s, .*",
                            line) for line in lines), console
    assert any(re.fullmatch(r"  score: (\d+)/\1 units in [\d.]+s, .*", line) for line in lines), console
    assert any(line.startswith("report: ") and line.endswith("report.html") for line in lines), console
    assert any(line.startswith("diff: ") for line in lines), console
    assert re.fullmatch(r"done in [\d.]+s \(ray start [\d.]+s, embed [\d.]+s, score [\d.]+s, report [\d.]+s\)",
                        lines[-1]), console


@pytest.mark.slow
def test_verbose_demo_shows_ray_lines_and_two_nights_with_the_cache_and_the_diff(tmp_path: Path) -> None:
    console = run_cli(tmp_path, "-v", "demo", "--root", str(tmp_path / "demo"), "--items", "24",
                      "--models", "builtin:pixelstats")
    # Ray's own lines are there (so the quiet test above checks something real) ...
    assert "streaming_executor" in console and "Progress bars disabled" in console, console
    # ... and so are our per-unit details, with the bars and the summary
    assert re.search(r"pixelstats: corrembed \(image\) done in", console), console
    assert re.search(r"^done in [\d.]+s \(corpus [\d.]+s, ray start [\d.]+s, night 1 embed [\d.]+s, night 1 score "
                     r"[\d.]+s, night 2 embed [\d.]+s, night 2 score [\d.]+s, night 2 report [\d.]+s\)$",
                     console, re.MULTILINE), console
    # Two nights of a growing catalogue (24 items, the default share of growth: 4): night 1 embeds its 20
    # items; night 2 takes those 20 from the cache in each modality and embeds only the 4 new ones ...
    assert re.search(r"  embed builtin-pixelstats: 40/40 items \(image 20/20, sketch 20/20\)", console), console
    assert "night 2: the catalogue grew by 4 items to 24 (run demo)" in console, console
    for modality in ("image", "sketch"):
        assert f"  builtin-pixelstats / {modality}: 24 read = 24 embedded + 0 quarantined" in console, console
        assert re.search(rf"  builtin-pixelstats / {modality}: 24 read = .*, 20 from cache", console), console
    # ... and its diff compares the two nights
    assert re.search(r"^diff: .*diff\.md \(against run demo-night1\)$", console, re.MULTILINE), console
    diff = (tmp_path / "demo" / "runs" / "demo" / "report" / "diff.md").read_text()
    assert "demo-night1" in diff, diff
