"""The driver killed with SIGKILL and restarted: `embedeval run` resumes, keeps what was committed, and
ends with the outputs of an undisturbed run.

Every job a test disturbs is a child process, so the test can SIGKILL its driver (and the in-process Ray
the driver started) without touching the session's ``ray_local``; what is never killed (the undisturbed
reference run of :func:`fault_setup`, and the last rerun that must end with its outputs) runs in this
process, on ``ray_local``. Each child gets its own Ray temp folder
(``RAY_TMPDIR``), so no other process on the machine can attach to its Ray by ``ray.init()``'s address
auto-discovery, and it runs in its own session, which is killed as a whole afterwards.

This file is also the children's script: ``python test_driver_kill.py CONFIG [--trace DIR --hang-after N]``
runs ``embedeval run --config CONFIG``, optionally with the engine's block tasks traced (see
:func:`block_task_tracer`), which lets a test stop the job deterministically with a tile task in flight.

Shared with ``test_node_failure.py``: the fault config, the undisturbed reference run, the tracer and
:func:`assert_same_outputs`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import yaml

from embedeval.io.embeddings import list_committed, partition_dir, read_commit_marker, read_committed
from embedeval.io.storage import Storage, StorageError

RUN_ID = "r1"
MODEL = "builtin-pixelstats"
SCORES = f"runs/{RUN_ID}/scores/scores.parquet"
SCORE_KEYS = ["model", "task", "target", "metric", "k", "split", "protocol"]
SCORE_VALUES = ["value", "ci_low", "ci_high"]
THIS_FILE = Path(__file__).resolve()
CHILD_TIMEOUT_S = 900        # a whole run takes 1-3 minutes on a loaded 2-core machine
CORPUS_ITEMS = 24
TILES_BEFORE_FAULT = 20      # score tile tasks that finish before the fault (the score job runs about 60)


def fault_config(root: Path, manifest: Path, tag_categories: Path) -> dict[str, Any]:
    """A run small enough for a test: one deterministic model, two partitions, many small files and tiles."""
    return {
        "root": str(root), "run_id": RUN_ID, "manifest": str(manifest), "tag_categories": str(tag_categories),
        "models": ["builtin:pixelstats"],
        "embed": {"batch_size": 4, "rows_per_file": 8, "modalities": ["image", "sketch"]},
        "score": {"corr_ks": [5, 10], "corr_anchors": 20, "fewshot_ns": [5], "fewshot_repeats": 2,
                  "bootstrap_resamples": 10, "map_cutoffs": [20], "precision_ks": [10],
                  "spearman_max_pairs": 300, "block_size": 8, "block_rows": 8},
        "ray": {"num_cpus": 2},
    }


@dataclass(frozen=True)
class FaultSetup:
    """The corpus every fault run embeds, and the outputs of one undisturbed `embedeval run` of it."""

    manifest: Path
    tag_categories: Path
    reference_root: Path

    def write_config(self, folder: Path, root: Path) -> Path:
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(fault_config(root, self.manifest, self.tag_categories)))
        return path


@pytest.fixture(scope="session")
def fault_setup(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> FaultSetup:
    """Made once per test run, in a fixed folder, so both fault modules share one reference run.

    Under pytest-xdist the folder is beside the workers' own base folders and a file lock lets the first
    worker that needs it make it while another waits. Nothing is killed in the reference run, so it runs
    in this process on the session's Ray (``embedeval run``'s own workflow, without its console): a child
    process would start a Ray of its own and import everything again, a third of the reference's cost.
    """
    from filelock import FileLock

    from embedeval.config import load_config
    from embedeval.demo.corpus import write_demo_corpus
    from embedeval.workflow import run_all

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    base = shared / "fault-reference"
    corpus_dir = base / "corpus"
    setup = FaultSetup(corpus_dir / "manifest.parquet", corpus_dir / "tag_categories.csv", base / "out")
    with FileLock(str(shared / "fault-reference.lock")):
        if not Storage(str(setup.reference_root)).exists(SCORES):
            shutil.rmtree(base, ignore_errors=True)   # a half-made reference of an interrupted worker
            base.mkdir()
            write_demo_corpus(base, n_items=CORPUS_ITEMS)
            config = setup.write_config(base, setup.reference_root)
            run_all(load_config(config), echo=lambda _: None)
    return setup


# --- children ----------------------------------------------------------------------------------------


@contextmanager
def ray_temp_dir() -> Iterator[Path]:
    """A short private folder for a child's RAY_TMPDIR (Unix socket paths must stay under ~100 chars)."""
    path = Path(tempfile.mkdtemp(prefix="eef-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def child_env(ray_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_TMPDIR": str(ray_dir), "PYTHONUNBUFFERED": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    env.pop("RAY_ADDRESS", None)
    return env


def start_child(args: list[str], ray_dir: Path, log: Path) -> subprocess.Popen:
    """Start ``python ARGS`` in its own session (so it can be killed with everything it started)."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                                env=child_env(ray_dir), start_new_session=True)


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the child and every process of its session: the driver, Ray's daemons and Ray workers
    (which Ray puts in process groups of their own, so ``killpg`` alone would miss them)."""
    for pid in session_members(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def session_members(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()   # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def log_tail(log: Path, lines: int = 60) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def run_child(args: list[str], ray_dir: Path, log: Path, timeout: float = CHILD_TIMEOUT_S) -> None:
    """Run a child to the end; fail with the tail of its log if it fails or takes too long."""
    proc = start_child(args, ray_dir, log)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args} ran over {timeout:.0f}s:\n{log_tail(log)}")
    finally:
        kill_session(proc)   # also ends what a finished child may have left behind
    assert rc == 0, f"{args} exited with {rc}:\n{log_tail(log)}"


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str,
             timeout: float = CHILD_TIMEOUT_S) -> None:
    """Poll ``condition`` (a listing that races the job's own writes and deletes counts as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, StorageError):
            pass
        if proc.poll() is not None:
            pytest.fail(f"the job exited (rc {proc.returncode}) before {what}:\n{log_tail(log)}")
        time.sleep(0.05)
    pytest.fail(f"the job never reached {what} in {timeout:.0f}s:\n{log_tail(log)}")


# --- tracing the engine's block tasks ----------------------------------------------------------------


def block_task_tracer(trace_dir: Path, hang_after: int | None = None,
                      hang_on_node: str | None = None) -> Callable[..., Any]:
    """A stand-in for the engine's ``run_call`` (the body of every tile and block task) that records
    every task in ``trace_dir``.

    Each task leaves ``<kernel>@<coordinates>.<node id>.<nonce>.done`` when it returns (coordinates: the
    tile's query chunk and gallery block, or the block). With ``hang_after``: once that many tasks are
    done, a task that starts (on node ``hang_on_node``, if given) leaves ``.hang`` instead and waits to be
    killed (10 minutes at most, then it goes on), so a test can kill the driver or the node at a moment
    when a tile task is provably in flight. Results are the real task's.
    """
    from embedeval.engine import runner as engine_runner

    original = engine_runner.run_call

    def traced_call(fn: Callable[..., Any], params: Any, measure_memory: bool, *call: Any) -> Any:
        import ray

        node = ray.get_runtime_context().get_node_id()
        kernel = getattr(call[0], "__name__", "call") if call and callable(call[0]) else fn.__name__
        coords = "-".join(str(getattr(a, "lo", a)) for a in call[1:] if isinstance(a, (int, np.integer))
                          or hasattr(a, "lo"))
        stem = f"{kernel}@{coords or 0}.{node}.{uuid.uuid4().hex[:8]}"
        if (hang_after is not None and hang_on_node in (None, node)
                and len(list(trace_dir.glob("*.done"))) >= hang_after):
            (trace_dir / f"{stem}.hang").touch()
            give_up = time.monotonic() + 600
            while time.monotonic() < give_up:
                time.sleep(0.2)
        value = original(fn, params, measure_memory, *call)
        (trace_dir / f"{stem}.done").touch()
        return value

    return traced_call


def install_block_task_tracer(traced: Callable[..., Any]) -> None:
    """Make the engine's RayRunner submit ``traced`` for every task (call before scoring starts)."""
    from embedeval.engine import runner as engine_runner

    assert hasattr(engine_runner, "_REMOTE_CALL"), "the engine no longer builds its remote call lazily"
    engine_runner.run_call = traced
    engine_runner._REMOTE_CALL = None   # rebuilt from run_call on the next RayRunner.map_calls


def traced_blocks(trace_dir: Path, state: str) -> list[tuple[str, str]]:
    """(``task@start``, node id) of every traced block task in ``state`` (``done`` or ``hang``)."""
    out = []
    for path in trace_dir.glob(f"*.{state}"):
        block, node, _nonce, _state = path.name.rsplit(".", 3)
        out.append((block, node))
    return out


# --- comparing with the undisturbed run --------------------------------------------------------------


def assert_same_outputs(root: Path, reference_root: Path) -> None:
    """Committed embeddings and scores under ``root`` equal the reference's; nothing is duplicated.

    Embeddings: the same partitions, (id, sub) rows and vectors (``read_committed`` refuses duplicate
    (id, sub)), and a partition folder holds exactly the files its marker lists, so no leftover of a
    killed attempt can be read by a tool that globs the folder. Scores: the same rows, each key once,
    none ``failed``, value and interval within 1e-6 (``seconds`` is a timing and is not compared).
    """
    import polars as pl

    got, want = Storage(str(root)), Storage(str(reference_root))
    partitions = list_committed(want, RUN_ID)
    assert partitions and list_committed(got, RUN_ID) == partitions
    for model, modality in partitions:
        a, b = read_committed(got, RUN_ID, model, modality), read_committed(want, RUN_ID, model, modality)
        assert a.ids.tolist() == b.ids.tolist() and a.subs.tolist() == b.subs.tolist(), (model, modality)
        np.testing.assert_array_equal(a.vectors, b.vectors, err_msg=f"{model}/{modality}")
        marker, expected = (read_commit_marker(s, RUN_ID, model, modality) for s in (got, want))
        assert (marker.rows, marker.quarantined) == (expected.rows, expected.quarantined), (model, modality)
        on_disk = got.list_files(partition_dir(RUN_ID, model, modality), ".parquet")
        assert sorted(f.path for f in marker.files) == sorted(on_disk), f"{model}/{modality}: unlisted files"

    scores = pl.read_parquet(got.path(SCORES)).sort(SCORE_KEYS, nulls_last=True)
    expected = pl.read_parquet(want.path(SCORES)).sort(SCORE_KEYS, nulls_last=True)
    assert scores.select(SCORE_KEYS).is_duplicated().sum() == 0, "a score key appears twice"
    assert "failed" not in scores["metric"].to_list(), scores.filter(pl.col("metric") == "failed")["note"]
    assert scores.select(SCORE_KEYS).equals(expected.select(SCORE_KEYS)), "different score rows"
    for column in ("run_id", "n", "weights_random", "note"):
        assert scores[column].to_list() == expected[column].to_list(), column
    for column in SCORE_VALUES:
        x, y = scores[column].to_numpy().astype(float), expected[column].to_numpy().astype(float)
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, equal_nan=True, err_msg=column)


def commit_times(storage: Storage) -> dict[tuple[str, str], float]:
    return {(model, modality): read_commit_marker(storage, RUN_ID, model, modality).committed_at
            for model, modality in list_committed(storage, RUN_ID)}


# --- the test ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_run_resumes_to_the_undisturbed_outputs(fault_setup: FaultSetup, tmp_path: Path) -> None:
    """`embedeval run` SIGKILLed mid-embed (a partition half written), then mid-score (every partition
    committed, a tile task in flight), then rerun with the same run id: the committed partitions are kept,
    the half-written one is redone, and the outputs are the undisturbed run's."""
    root = tmp_path / "out"
    config = fault_setup.write_config(tmp_path, root)
    storage = Storage(str(root))
    image_dir = partition_dir(RUN_ID, MODEL, "image")
    trace = tmp_path / "trace"
    trace.mkdir()
    logs = [tmp_path / f"run{k}.log" for k in (1, 2)]

    with ray_temp_dir() as ray_dir:
        # 1. Killed while embedding: some part files written, nothing committed.
        proc = start_child([str(THIS_FILE), str(config)], ray_dir, logs[0])
        try:
            wait_for(lambda: bool(storage.list_files(image_dir, ".parquet")) and not list_committed(storage, RUN_ID),
                     proc, logs[0], "a partly written partition")
        finally:
            kill_session(proc)
        assert not list_committed(storage, RUN_ID) and not storage.exists(SCORES)
        assert storage.list_files(image_dir, ".parquet"), "the kill came before any part file"

        # 2. Rerun, killed while scoring: every partition committed, a tile task in flight, no scores.
        proc = start_child([str(THIS_FILE), str(config), "--trace", str(trace),
                            "--hang-after", str(TILES_BEFORE_FAULT)], ray_dir, logs[1])
        try:
            wait_for(lambda: bool(traced_blocks(trace, "hang")), proc, logs[1], "a score tile task in flight")
        finally:
            kill_session(proc)
        assert list_committed(storage, RUN_ID) == [(MODEL, "image"), (MODEL, "sketch")]
        assert len(traced_blocks(trace, "done")) >= TILES_BEFORE_FAULT
        assert not storage.exists(SCORES), "the kill came after the scores were written"
        committed = commit_times(storage)

    # 3. Rerun to the end: embedding is skipped, scoring starts over. Nothing is killed in it, so it runs here
    #    on the session's Ray (as the reference run does): a child would start a Ray and import all again.
    from embedeval.config import load_config
    from embedeval.workflow import run_all

    lines: list[str] = []
    run_all(load_config(config), echo=lines.append)
    assert commit_times(storage) == committed, "a committed partition was rewritten"
    assert sum("(already committed)" in line for line in lines) == 2, lines
    assert_same_outputs(root, fault_setup.reference_root)


# --- the child ---------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="embedeval run, optionally with traced block tasks")
    parser.add_argument("config")
    parser.add_argument("--trace", type=Path, default=None)
    parser.add_argument("--hang-after", type=int, default=None)
    args = parser.parse_args(argv)
    if args.trace is not None:
        install_block_task_tracer(block_task_tracer(args.trace, args.hang_after))
    from embedeval.cli import main as embedeval_main

    return embedeval_main(["run", "--config", args.config])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
