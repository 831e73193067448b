"""Node failure: a Ray worker node dies midway through embedding and again midway through scoring; both
jobs complete, and their outputs equal an undisturbed run's.

The cluster is ``ray.cluster_utils.Cluster`` (one raylet per "node", all on this machine), in a child
process that runs this file as a script, for the reasons given in ``test_driver_kill.py``. Its head node
has no CPUs: it holds the driver and the driver's objects (the object store copies that ``ray.put`` makes)
and runs no work, so every embed actor, writer task and score tile task runs on the one worker node with
CPUs. That node is killed (every process of it, SIGKILL) while it has work:

- embedding: once the image partition has part files but no commit marker; then a new node joins;
- scoring: while a tile task is running on it (the traced block task of ``test_driver_kill.py`` holds
  the first task that starts there after ``TILES_BEFORE_FAULT`` have finished); then a new node joins.

The child writes what it saw at each kill to ``evidence.json``; the test checks from it that each kill
hit work in flight, and that the lost tile was computed again on the new node.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import pytest

from embedeval.io.embeddings import list_committed, partition_dir, read_commit_marker
from embedeval.io.storage import Storage, StorageError
from test_driver_kill import (MODEL, RUN_ID, SCORES, TILES_BEFORE_FAULT, FaultSetup, assert_same_outputs,
                              block_task_tracer, install_block_task_tracer, ray_temp_dir, run_child, traced_blocks)
from test_driver_kill import fault_setup  # noqa: F401 - the session fixture: one reference run for both modules

WORKER_CPUS = 2
JOB_TIMEOUT_S = 600
# How soon the GCS declares a SIGKILLed node dead: Ray's defaults (a health check every 3 s, 5 missed, after a
# 5 s grace) left each job waiting 20-30 s for the verdict before it rescheduled the lost work. Checks every
# 0.5 s with a 2 s answer window and 4 misses still tolerate a raylet stalled for seconds by a busy machine.
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
                   "health_check_timeout_ms": 2000, "health_check_failure_threshold": 4}


@pytest.mark.slow
def test_jobs_survive_losing_the_worker_node(fault_setup: FaultSetup, tmp_path: Path) -> None:
    root = tmp_path / "out"
    config = fault_setup.write_config(tmp_path, root)
    trace = tmp_path / "trace"
    trace.mkdir()
    evidence_path = tmp_path / "evidence.json"
    with ray_temp_dir() as ray_dir:
        run_child([str(Path(__file__).resolve()), str(config), str(evidence_path), str(trace)], ray_dir,
                  tmp_path / "cluster.log")
    evidence = json.loads(evidence_path.read_text())
    storage = Storage(str(root))

    # Embedding: the node died with the partition half written; what it had not done was redone elsewhere.
    assert "error" not in evidence, evidence["error"]
    embed_kill = evidence.get("embed_kill")
    assert embed_kill, "the embed job finished before its node could be killed"
    assert embed_kill["part_files"] > 0 and not embed_kill["committed"], embed_kill
    assert embed_kill["cpu_nodes"] == [embed_kill["node"]], "work could have run on another node"
    image = read_commit_marker(storage, RUN_ID, MODEL, "image")
    assert len(image.files) > embed_kill["part_files"], "the partition was complete when the node died"
    for model, modality in list_committed(storage, RUN_ID):
        assert read_commit_marker(storage, RUN_ID, model, modality).committed_at > embed_kill["time"]

    # Scoring: a tile task was running on the node when it died, and was run again on the new node.
    score_kill = evidence.get("score_kill")
    assert score_kill, "the score job finished before its node could be killed"
    assert score_kill["cpu_nodes"] == [score_kill["node"]], "work could have run on another node"
    hung = traced_blocks(trace, "hang")
    assert hung and all(node == score_kill["node"] for _, node in hung), hung
    redone = {block for block, node in traced_blocks(trace, "done") if node != score_kill["node"]}
    assert {block for block, _ in hung} <= redone, "a lost tile task was never run again"
    assert Path(storage.path(SCORES)).stat().st_mtime > score_kill["time"]

    assert_same_outputs(root, fault_setup.reference_root)


# --- the child: a cluster whose worker node dies twice -----------------------------------------------


class Background:
    """Runs ``fn(*args)`` in a thread: ``Cluster.add_node`` installs signal handlers, so it must be
    called from the main thread, which therefore watches the job and kills nodes instead."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread by wait()
            self._error = exc

    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float = JOB_TIMEOUT_S) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the job did not finish within {timeout}s of the node loss")
        if self._error is not None:
            raise self._error


def wait_while_running(job: Background, condition: Callable[[], bool], timeout: float = JOB_TIMEOUT_S) -> bool:
    """True once ``condition`` holds, False if the job ended first (or the time ran out)."""
    deadline = time.monotonic() + timeout
    while job.running() and time.monotonic() < deadline:
        try:
            if condition():
                return True
        except (OSError, StorageError):   # a listing raced the job's own writes
            pass
        time.sleep(0.05)
    return False


def cpu_nodes() -> list[str]:
    """Ids of the live nodes that can run work (the head has no CPUs)."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]


def run_with_node_losses(config_path: Path, evidence_path: Path, trace_dir: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from embedeval.config import load_config
    from embedeval.pipeline.embed import embed_run
    from embedeval.workflow import score_from_config

    config = load_config(config_path)
    storage = Storage(config.root)
    image_dir = partition_dir(RUN_ID, MODEL, "image")
    evidence: dict[str, Any] = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                         "_system_config": FAST_NODE_DEATH})
    try:
        node = cluster.add_node(num_cpus=WORKER_CPUS)
        ray.init(address=cluster.address)

        job = Background(embed_run, config)
        if wait_while_running(job, lambda: bool(storage.list_files(image_dir, ".parquet"))
                              and not storage.exists(f"{image_dir}/_COMMITTED.json")):
            evidence["embed_kill"] = {"time": time.time(), "node": node.node_id, "cpu_nodes": cpu_nodes(),
                                      "part_files": len(storage.list_files(image_dir, ".parquet")),
                                      "committed": storage.exists(f"{image_dir}/_COMMITTED.json")}
            cluster.remove_node(node, allow_graceful=False)
            node = cluster.add_node(num_cpus=WORKER_CPUS)
        job.wait()

        install_block_task_tracer(block_task_tracer(trace_dir, TILES_BEFORE_FAULT, hang_on_node=node.node_id))
        job = Background(score_from_config, config)
        if wait_while_running(job, lambda: bool(traced_blocks(trace_dir, "hang"))):
            evidence["score_kill"] = {"time": time.time(), "node": node.node_id, "cpu_nodes": cpu_nodes()}
            cluster.remove_node(node, allow_graceful=False)
            node = cluster.add_node(num_cpus=WORKER_CPUS)
        job.wait()
    except BaseException:
        evidence["error"] = traceback.format_exc()
        raise
    finally:
        evidence_path.write_text(json.dumps(evidence, indent=1))
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    run_with_node_losses(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
