"""Quiet mode drops exactly Ray's known noise lines and lets everything else through."""

from __future__ import annotations

import logging
import os

import pytest

from embedeval.pipeline.ray_console import NoiseFilter, filtered_stderr, is_noise

# Verbatim from a demo run's console (Ray 2.60).
NOISE_LINES = [
    "[2026-12-01 11:22:59,503 E 20959 20959] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(ImagePreparer))' and ID: 'fd9e80ed01f6e60a142c897b01000000' has constructor arguments "
    "in the object store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, "
    "the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details.",
    "2026-12-01 11:22:59,623\tWARNING __init__.py:28 -- Progress bars disabled. To enable, set "
    "`ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out. For more "
    "information, see https://docs.ray.io/en/latest/ray-security/token-auth.html",
]
KEPT_LINES = [
    "[2026-12-01 11:30:00,000 E 1 1] core_worker.cc:812: Failed to connect to the GCS at 10.0.0.1:6379",
    "embedeval: error: no committed embeddings under /x/runs/r/embeddings: run the embed job first",
    "Traceback (most recent call last):",
    "2026-12-01 11:22:59,623\tWARNING resource_manager.py:1 -- Cluster resources are not enough to run any task",
]


def test_noise_lines_are_recognised_and_nothing_else() -> None:
    assert all(is_noise(line) for line in NOISE_LINES)
    assert not any(is_noise(line) for line in KEPT_LINES)


def test_the_logging_filter_drops_noise_records() -> None:
    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("ray.data", logging.WARNING, __file__, 1, msg, None, None)

    noise_filter = NoiseFilter()
    assert not noise_filter.filter(record(NOISE_LINES[1].split(" -- ", 1)[1]))
    assert noise_filter.filter(record("Cluster resources are not enough to run any task"))


def test_filtered_stderr_drops_noise_written_to_fd_2_and_passes_the_rest(capfd: pytest.CaptureFixture[str]) -> None:
    with filtered_stderr():
        for line in NOISE_LINES[:1] + KEPT_LINES[:2]:
            os.write(2, (line + "\n").encode())   # as Ray's C++ core writes: straight to the descriptor
        os.write(2, b"no newline at the end")
    err = capfd.readouterr().err
    assert "core_worker.cc:2465" not in err
    assert err == KEPT_LINES[0] + "\n" + KEPT_LINES[1] + "\nno newline at the end"
    os.write(2, b"after\n")                        # fd 2 is the real stderr again
    assert capfd.readouterr().err == "after\n"


def test_filtered_stderr_disabled_changes_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    with filtered_stderr(enabled=False):
        os.write(2, (NOISE_LINES[0] + "\n").encode())
    assert "core_worker.cc" in capfd.readouterr().err
