"""`embedeval demo` in a fresh process prints progress and a summary, and none of Ray's noise.

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


def run_small_demo(root: Path, *flags: str) -> str:
    """stdout + stderr of `embedeval [flags] demo` on 24 items with the weight-free model, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(LIB)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "embedeval.cli", *flags, "demo", "--root", str(root / "demo"), "--items", "24",
               "--models", "builtin:pixelstats"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=root)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    return console


@pytest.mark.slow
def test_demo_console_has_progress_and_summary_and_no_ray_noise(tmp_path: Path) -> None:
    console = run_small_demo(tmp_path)
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
    summary = lines[-1]
    assert re.fullmatch(r"done in [\d.]+s \(corpus [\d.]+s, ray start [\d.]+s, embed [\d.]+s, score [\d.]+s, "
                        r"report [\d.]+s\)", summary), console


@pytest.mark.slow
def test_verbose_demo_console_shows_what_quiet_mode_drops(tmp_path: Path) -> None:
    console = run_small_demo(tmp_path, "-v")
    # Ray's own lines are there (so the quiet test above checks something real) ...
    assert re.search(r"core_worker\.cc:\d+: Actor with class name", console), console
    assert "streaming_executor" in console
    # ... and so are our per-unit details
    assert re.search(r"pixelstats: corrembed \(image\) done in", console), console
