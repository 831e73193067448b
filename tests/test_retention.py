"""`embedeval runs prune`: a dry run frees nothing and prints sizes; --apply keeps the N newest, honours
--older-than, never deletes a run holding a lease, and sweeps only the cache entries no kept run refers to.

Three runs are written by the embed stage's writer (no model, no Ray): r1 adds its vectors to the cache,
r2 (a grown catalogue) takes r1's cache file and adds one, r3 ran without the cache. That the embed stage
records these references is tested in tests/pipeline/test_cache.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedeval.cli import main
from embedeval.io.embeddings import CommitRecord, PartFile, read_commit_marker, write_commit_marker
from embedeval.io.lease import LeaseSettings, hold_run_lease
from embedeval.io.storage import Storage
from embedeval.io.layout import CacheLayout
from embedeval.pipeline.cache import text_sha256, write_entries
from embedeval.pipeline.stages import PartitionTarget, write_partition_files
from embedeval.retention import RetentionError, apply_prune, parse_age, plan_prune

MODEL = "m"
KEY = CacheLayout("k1")
DIM = 8
DAY = 86400.0


def _vectors(n: int, seed: int) -> pa.Array:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), DIM)


def _write_run(storage: Storage, run_id: str, items: list[str], cache: bool, also_refers: list[str]) -> list[str]:
    """One committed image partition, written as the embed stage writes it; returns the cache files it added."""
    n = len(items)
    batch = pa.table({"id": pa.array(items), "sub": pa.array([0] * n, pa.int16()), "modality": pa.array(["image"] * n),
                      "content_sha256": pa.array([text_sha256(i) for i in items]), "vector": _vectors(n, len(items)),
                      "error_stage": pa.nulls(n, pa.string()), "error_reason": pa.nulls(n, pa.string())})
    written = write_partition_files(batch, PartitionTarget(storage, run_id, MODEL, {}, KEY if cache else None))
    rows = written.to_pylist()
    added = [r["cache_path"] for r in rows if r["cache_path"]]
    write_commit_marker(storage, CommitRecord(run_id, MODEL, "image", DIM, [PartFile(r["path"], r["rows"], r["sha256"])
                                                                           for r in rows], n, 0,
                                              cache_files=sorted(set(added) | set(also_refers)) if cache else []))
    storage.write_bytes(f"runs/{run_id}/config.yaml", b"run_id: " + run_id.encode())
    return added


def _age(root: Path, run_id: str, days: float) -> None:
    """Make a run `days` old (its time is its config.yaml's modification time: it has no scores)."""
    t = time.time() - days * DAY
    os.utime(root / "runs" / run_id / "config.yaml", (t, t))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "out"
    storage = Storage(str(root))
    storage.write_json(KEY.key_file, {"spec": "m"})
    r1 = _write_run(storage, "r1", [f"item-{i}" for i in range(8)], True, [])
    _write_run(storage, "r2", [f"item-{i}" for i in range(8, 10)], True, r1)
    _write_run(storage, "r3", [f"item-{i}" for i in range(10)], False, [])
    for run_id, days in (("r1", 30), ("r2", 20), ("r3", 10)):
        _age(root, run_id, days)
    return root


def _cache_files(storage: Storage) -> set[str]:
    return set(storage.file_sizes("cache"))


def _orphans(storage: Storage) -> set[str]:
    """Cache files no run lists: one a killed run left under the model's key, and a whole key nobody used."""
    made = {write_entries(storage, KEY, "image", pa.array(["f" * 64]), _vectors(1, 99))}
    storage.write_json("cache/0123abcd/key.json", {"spec": "gone"})
    made.add("cache/0123abcd/key.json")
    made.add(write_entries(storage, CacheLayout("0123abcd"), "image", pa.array(["e" * 64]), _vectors(1, 98)))
    return made


def test_a_dry_run_prints_sizes_and_deletes_nothing(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = Storage(str(root))
    orphans = _orphans(storage)
    before = storage.file_sizes("")
    assert main(["runs", "prune", "--root", str(root), "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert storage.file_sizes("") == before
    r1_size = sum(storage.file_sizes("runs/r1").values())
    lines = out.splitlines()
    assert lines[0] == f"runs under {storage.root}/runs: 3; deleting 2, keeping 1"
    assert any(line.split()[:2] == ["delete", "r1"] and f"{r1_size / 1024:.1f} KiB" in line for line in lines), out
    assert any(line.split()[:2] == ["keep", "r3"] and "among the 1 newest" in line for line in lines), out
    # r3 (kept) used no cache file: every cache file would go, the orphans included.
    assert f"cache: {len(_cache_files(storage))} files" in out and len(orphans) == 3 and len(_cache_files(storage)) == 6
    assert "dry run: would free" in out and "--apply" in out


def test_apply_keeps_the_newest_and_sweeps_only_unreferenced_cache_files(root: Path) -> None:
    storage = Storage(str(root))
    orphans = _orphans(storage)
    r2_refs = set(read_commit_marker(storage, "r2", MODEL, "image").cache_files)  # type: ignore[union-attr]
    key_json = {p for p in _cache_files(storage) if p.endswith("key.json") and "0123abcd" not in p}
    said: list[str] = []
    plan = plan_prune(storage, keep=2)
    freed = apply_prune(storage, plan, echo=said.append)
    assert sorted(os.listdir(root / "runs")) == ["r2", "r3"]
    assert _cache_files(storage) == r2_refs | key_json          # r1's files are r2's too; orphans are gone
    assert not (root / "cache" / "0123abcd").exists()
    assert freed == plan.bytes_to_free > 0 and said[-1].startswith("freed ")
    assert orphans.isdisjoint(_cache_files(storage))


def test_older_than_deletes_only_old_runs_outside_the_newest(root: Path) -> None:
    storage = Storage(str(root))
    assert [d.run_id for d in plan_prune(storage, older_than_s=parse_age("15d")).deleting] == ["r2", "r1"]
    assert [d.run_id for d in plan_prune(storage, older_than_s=parse_age("25d")).deleting] == ["r1"]
    # Both limits: outside the newest 1 *and* older than 25 days.
    plan = plan_prune(storage, keep=1, older_than_s=parse_age("25d"))
    apply_prune(storage, plan, echo=lambda _: None)
    assert sorted(os.listdir(root / "runs")) == ["r2", "r3"]


def test_a_run_holding_a_lease_is_never_deleted_and_the_sweep_waits(root: Path) -> None:
    storage = Storage(str(root))
    orphans = _orphans(storage)
    settings = LeaseSettings(ttl_s=5, heartbeat_s=1)
    with hold_run_lease(storage, "r1", settings=settings, echo=lambda _: None):
        plan = plan_prune(storage, keep=0)
        assert [d.run_id for d in plan.deleting] == ["r3", "r2"]
        assert "holds a lease" in next(d.reason for d in plan.runs if d.run_id == "r1")
        assert plan.cache.skipped and "r1" in plan.cache.skipped
        apply_prune(storage, plan, echo=lambda _: None)
        assert os.listdir(root / "runs") == ["r1"] and orphans <= _cache_files(storage)


def test_a_run_leased_after_the_plan_is_skipped_by_apply(root: Path) -> None:
    """A lease taken by another process between plan and apply: apply takes each run's lease before deleting."""
    storage = Storage(str(root))
    plan = plan_prune(storage, keep=0)
    lib = Path(__file__).resolve().parent.parent / "lib"
    script = ("import sys, time\nfrom embedeval.io.lease import LeaseSettings, hold_run_lease\n"
              "from embedeval.io.storage import Storage\n"
              "with hold_run_lease(Storage(sys.argv[1]), 'r2', settings=LeaseSettings(ttl_s=5, heartbeat_s=1)):\n"
              "    print('acquired', flush=True)\n    sys.stdin.readline()\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(lib)})
    try:
        assert holder.stdout.readline().startswith("acquired")  # type: ignore[union-attr]
        said: list[str] = []
        apply_prune(storage, plan, echo=said.append)
        assert os.listdir(root / "runs") == ["r2"]
        assert any(line.startswith("skipped run r2: run 'r2' is held by embedeval run") for line in said), said
        assert any("sweep skipped" in line for line in said)
    finally:
        holder.communicate("\n", timeout=30)


def test_kept_runs_without_cache_records_stop_the_sweep(root: Path) -> None:
    storage = Storage(str(root))
    marker = "runs/r3/embeddings/model=m/modality=image/_COMMITTED.json"
    record = storage.read_json(marker)
    del record["cache_files"]  # a marker written before runs recorded their cache files
    storage.write_json(marker, record)
    plan = plan_prune(storage, keep=1)
    assert plan.cache.skipped and "r3" in plan.cache.skipped and not plan.cache.remove


def test_bad_prune_requests_are_one_line_usage_errors(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "prune", "--root", str(root)]) == 2
    assert main(["runs", "prune", "--root", str(root), "--older-than", "soon"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--keep N" in err[0] and "30d" in err[1]
    with pytest.raises(RetentionError):
        plan_prune(Storage(str(root)), keep=-1)
