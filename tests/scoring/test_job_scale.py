"""The score stage's catalogue-scale promises, in miniature.

- The driver never allocates an N x d matrix: tracemalloc on the driver while Ray tasks do the work.
- A score stage SIGKILLed half way resumes: the rerun recomputes only the units without a commit, and
  its scores equal a clean run's.
- A three-node ``ray.cluster_utils.Cluster`` (tiny object stores, tiles spread over both worker nodes)
  gives exactly the in-process scores (the same bits, for the same ``score.block_rows``).

This file is also the children's script (``python test_job_scale.py kill|cluster ...``), so a child can be
killed, or own a cluster, without touching the session's in-process Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

THIS_FILE = Path(__file__).resolve()
RUN = "r1"


def _write_inputs(root: Path, seed: int = 7) -> tuple[pa.Table, dict[str, str]]:
    from .synthetic import CATEGORIES
    from .test_job import write_run

    root.mkdir(parents=True, exist_ok=True)
    _, manifest = write_run(root, np.random.default_rng(seed))
    pq.write_table(manifest, root / "manifest.parquet")
    (root / "categories.json").write_text(json.dumps(CATEGORIES))
    return manifest, CATEGORIES


def _run_child(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(THIS_FILE.parents[2]), os.environ.get("PYTHONPATH", "")]),
               RAY_TMPDIR=f"/tmp/ees-{uuid.uuid4().hex[:6]}")
    return subprocess.run([sys.executable, str(THIS_FILE), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def _without_timing(table: pa.Table) -> pa.Table:
    return table.drop_columns(["seconds"])


# --- the driver's memory -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_driver_never_allocates_an_n_by_d_matrix(tmp_path: Path, ray_local: None) -> None:
    from embedeval.io.storage import Storage
    from embedeval.scoring.job import score_run
    from embedeval.scoring.settings import ScoreSettings
    from .test_job import write_partition

    n, d, n_labels = 12_000, 384, 20
    rng = np.random.default_rng(3)
    label = rng.integers(0, n_labels, n)
    ids = [f"i{j:06d}" for j in range(n)]
    manifest = pa.table({
        "id": ids, "label": [f"c{c}" for c in label],
        "tags": [[f"t{a}", f"t{b}"] for a, b in rng.integers(0, 40, (n, 2))],
        "attr_size": rng.normal(size=n), "split": np.where(rng.random(n) < 0.5, "train", "test")})
    storage = Storage(str(tmp_path))
    centres = rng.normal(size=(n_labels, d))
    image = (centres[label] + rng.normal(size=(n, d))).astype(np.float32)
    write_partition(storage, "m", "image", ids, [0] * n, image, n_files=3)
    text = np.repeat(image, 2, axis=0) + rng.normal(size=(2 * n, d)).astype(np.float32)
    write_partition(storage, "m", "text", [i for i in ids for _ in range(2)], [0, 1] * n, text, n_files=3)
    matrix_bytes = n * d * 4
    del image, text
    settings = ScoreSettings(use_ray=True, corr_anchors=500, corr_ks=[10], bootstrap_resamples=20, kmeans_iters=5,
                             kmeans_init="k-means||", ambiguity_max_items=300, caption_max_queries=300,
                             label_pairs=[], fewshot_ns=[5], fewshot_repeats=2, spearman_max_pairs=2000,
                             block_rows=4096, block_size=2048,
                             # the logistic probe gathers max_train rows on the driver (its stated bound)
                             options={"probes": {"max_train": 1000, "c_grid": [1.0], "knn_ks": [5]}})

    # warm up on a tiny run first, so the measured peak holds data, not the modules imported on first use
    # (scipy, scikit-learn and Ray's own code add tens of MiB of Python objects the first time)
    small, small_manifest = _tiny_run(tmp_path / "warm-up")
    score_run(small, RUN, small_manifest, None, settings.model_copy(update={"block_rows": 16}))

    # the probe can fail: tracemalloc sees an N x d allocation made on the driver
    tracemalloc.start()
    np.ones((n, d), dtype=np.float32)
    assert tracemalloc.get_traced_memory()[1] >= matrix_bytes
    tracemalloc.stop()

    tracemalloc.start()
    try:
        table = score_run(storage, RUN, manifest, None, settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not [m for m in table.column("metric").to_pylist() if m == "failed"]
    assert {"corrembed", "rankability", "retrieval", "prototypes", "modality_gap", "probes"} <= \
        set(table.column("task").to_pylist())
    # O(N) arrays, samples, states and bootstrap chunks stay below one N x d float32 matrix (17.6 MiB here;
    # 11.4 MiB measured, and 26 of 35 MiB at twice the items): the vectors themselves never pass through the driver
    assert peak < matrix_bytes, f"driver peak {peak / 2**20:.1f} MiB vs one N x d matrix {matrix_bytes / 2**20:.1f} MiB"


def _tiny_run(root: Path) -> tuple[object, pa.Table]:
    from embedeval.io.storage import Storage

    from .test_job import write_run

    storage, manifest = write_run(root, np.random.default_rng(0))
    return storage, manifest


# --- kill and resume -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_score_stage_recomputes_only_what_is_missing(tmp_path: Path) -> None:
    from embedeval.io.storage import Storage
    from embedeval.scoring.job import score_run
    from .test_job import small_settings

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    manifest, categories = _write_inputs(killed)
    _write_inputs(clean)
    settings = small_settings()
    (killed / "settings.json").write_text(settings.model_dump_json())
    kill_after = 3
    child = _run_child(["kill", str(killed), str(kill_after)])
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert not (killed / "runs" / RUN / "scores" / "scores.parquet").exists()
    committed = list((killed / "runs" / RUN / "scores" / "parts").rglob("_COMMITTED.json"))
    assert len(committed) == kill_after

    messages: list[str] = []
    resumed = score_run(Storage(str(killed)), RUN, manifest, categories, settings, progress=messages.append)
    done = [m for m in messages if " done in " in m]
    total = int(next(m for m in messages if m.startswith("score units:")).split("/")[1].split()[0])
    assert len(done) == total - kill_after, done
    assert any(f"{kill_after} of" in m and "kept from an earlier attempt" in m for m in messages), messages
    reference = score_run(Storage(str(clean)), RUN, manifest, categories, settings)
    assert _without_timing(resumed).equals(_without_timing(reference))


def _child_kill(root: Path, kill_after: int) -> None:
    """Score, and SIGKILL this process once ``kill_after`` units have committed."""
    from embedeval.io.storage import Storage
    from embedeval.scoring.job import score_run
    from embedeval.scoring.settings import ScoreSettings

    settings = ScoreSettings.model_validate_json((root / "settings.json").read_text())

    def progress(msg: str) -> None:
        print(msg, flush=True)
        if msg.startswith("score units: ") and int(msg.split()[2].split("/")[0]) >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    score_run(Storage(str(root)), RUN, pq.read_table(root / "manifest.parquet"),
              json.loads((root / "categories.json").read_text()), settings, progress=progress)


# --- a three-node cluster ------------------------------------------------------------------------------


@pytest.mark.slow
def test_three_node_cluster_gives_the_in_process_scores(tmp_path: Path) -> None:
    from embedeval.io.storage import Storage
    from embedeval.scoring.job import score_run
    from .test_job import small_settings

    local_root, cluster_root = tmp_path / "local", tmp_path / "cluster"
    manifest, categories = _write_inputs(local_root)
    shutil.copytree(local_root, cluster_root)
    # Two stored blocks of the 60 items (block_rows 32) and 16-row query chunks: every task still has tiles on
    # both worker nodes, with a third of the tasks of 16-row blocks and 8-row chunks (1,009 against 2,895).
    local = score_run(Storage(str(local_root)), RUN, manifest, categories, small_settings(block_rows=32))
    settings = small_settings(use_ray=True, block_rows=32, block_size=16)  # the local layout, other query chunks
    (cluster_root / "settings.json").write_text(settings.model_dump_json())
    trace = tmp_path / "trace"
    trace.mkdir()
    child = _run_child(["cluster", str(cluster_root), str(trace)])
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    evidence = json.loads((tmp_path / "trace" / "evidence.json").read_text())
    nodes = {p.name.split(".")[0] for p in trace.glob("*.task")}
    assert nodes <= set(evidence["cpu_nodes"]) and len(nodes) == 2, (nodes, evidence)
    on_cluster = pq.read_table(cluster_root / "runs" / RUN / "scores" / "scores.parquet")
    assert _without_timing(on_cluster).equals(_without_timing(local))


def _child_cluster(root: Path, trace: Path) -> None:
    """A head without CPUs and two one-CPU workers, every object store at Ray's minimum; score there."""
    import ray
    from ray.cluster_utils import Cluster

    from embedeval.engine import runner as engine_runner
    from embedeval.io.storage import Storage
    from embedeval.scoring.job import score_run
    from embedeval.scoring.settings import ScoreSettings

    store = 80 * 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store,
                                                         "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, object_store_memory=store) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    original = engine_runner.run_call

    def traced(fn, params, measure_memory, *call):  # noqa: ANN001, ANN202 - runs in the workers
        import ray as _ray

        (trace / f"{_ray.get_runtime_context().get_node_id()}.{uuid.uuid4().hex[:8]}.task").touch()
        return original(fn, params, measure_memory, *call)

    engine_runner.run_call = traced
    engine_runner._REMOTE_CALL = None
    try:
        settings = ScoreSettings.model_validate_json((root / "settings.json").read_text())
        score_run(Storage(str(root)), RUN, pq.read_table(root / "manifest.parquet"),
                  json.loads((root / "categories.json").read_text()), settings)
        (trace / "evidence.json").write_text(json.dumps({"cpu_nodes": [w.node_id for w in workers]}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(THIS_FILE.parents[2]))
    if sys.argv[1] == "kill":
        _child_kill(Path(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "cluster":
        _child_cluster(Path(sys.argv[2]), Path(sys.argv[3]))
