"""The run lease: two real processes on one run id (exactly one proceeds), takeover of a killed run's lease
after expiry, --force, heartbeats, release on errors; on S3 (rclone) the probe finds create-only PUTs
ignored, the lease says it is advisory, and with Ray a named actor still keeps two holders apart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from embedeval.io.lease import (
    LeaseHeld,
    LeaseSettings,
    acquire_run_lease,
    hold_run_lease,
    lease_rel,
    lease_store,
    read_lease,
)
from embedeval.io.lease_stores import (
    GUARANTEE_ADVISORY,
    GUARANTEE_EXCLUSIVE,
    GUARANTEE_RAY_CLUSTER,
    LeaseRecord,
    conditional_writes_honoured,
)
from embedeval.io.storage import Storage

LIB = Path(__file__).resolve().parents[2] / "lib"
FAST = LeaseSettings(ttl_s=1.5, heartbeat_s=0.3)
# For the checks that a live holder keeps others out: a lease that cannot expire while a busy machine is slow
# to renew it (with FAST, one late heartbeat lets the second holder in and the test fails for the wrong reason).
STEADY = LeaseSettings(ttl_s=60.0, heartbeat_s=5.0)

# A process that takes a run's lease at a given moment, says so, and holds it; refused, it exits as the CLI does.
CONTENDER = """
import os, sys, time
from embedeval.cli import report_user_error
from embedeval.errors import EmbedevalError
from embedeval.io.lease import LeaseSettings, hold_run_lease
from embedeval.io.storage import Storage
root, run_id, start_at, hold_s = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
while time.time() < start_at:
    time.sleep(0.001)
try:
    with hold_run_lease(Storage(root), run_id, settings=LeaseSettings(ttl_s=1.5, heartbeat_s=0.3),
                        purpose="test") as lease:
        print(f"acquired {os.getpid()}", flush=True)
        end = time.time() + hold_s
        while time.time() < end and not lease.lost:
            time.sleep(0.05)
        print("lost" if lease.lost else "released", flush=True)
except EmbedevalError as exc:
    sys.exit(report_user_error(exc))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(LIB), os.environ.get("PYTHONPATH", "")])}


def _contender(root: str, run_id: str, start_at: float, hold_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CONTENDER, root, run_id, str(start_at), str(hold_s)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if line.startswith(prefix):
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {prefix!r} line; stderr: {proc.stderr.read()}")  # type: ignore[union-attr]


@pytest.mark.slow
def test_of_two_processes_started_together_exactly_one_holds_the_lease(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    start_at = time.time() + 3.0  # both have imported the library by then
    procs = [_contender(root, "r1", start_at, 2.0) for _ in range(2)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    winners = [r for r in results if r[0] == 0]
    losers = [r for r in results if r[0] != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    rc, _, err = losers[0]
    winner_pid = winners[0][1].split()[1]
    assert rc == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("embedeval: error: run 'r1' is held by embedeval test on host "
                               f"{socket.gethostname()}, pid {winner_pid} (heartbeat")
    assert "expires" in lines[0] and "--force" in lines[0]
    assert winners[0][1].split()[-1] == "released"
    assert read_lease(Storage(root), "r1") is None  # released on exit


def test_a_lease_left_by_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "root"))
    holder = _contender(storage.root, "r1", 0.0, 60.0)
    pid = int(_wait_for_line(holder, "acquired").split()[1])
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    left = read_lease(storage, "r1")
    assert left is not None and left.pid == pid and left.expires > time.time()  # not expired, but dead
    said: list[str] = []
    with hold_run_lease(storage, "r1", settings=FAST, echo=said.append):
        assert said == [said[0]] and "took over" in said[0] and f"pid {pid} no longer runs on this host" in said[0]


def test_a_lease_of_another_host_is_refused_until_it_expires_then_taken_over(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "root"))
    now = time.time()
    other = LeaseRecord("r1", "other-host", 4242, "run", "t0", now - 10, now - 0.5, now + 1.0)
    storage.write_bytes(lease_rel("r1"), other.to_bytes())  # what a killed run on another machine leaves
    with pytest.raises(LeaseHeld, match="held by embedeval run on host other-host, pid 4242 .*expires .* in 1s"):
        acquire_run_lease(storage, "r1", settings=FAST, echo=lambda _: None)
    time.sleep(max(0.0, other.expires - time.time()) + 0.1)
    said: list[str] = []
    lease = acquire_run_lease(storage, "r1", settings=FAST, echo=said.append)
    try:
        assert said and "took over" in said[0] and "other-host" in said[0] and "it expired" in said[0]
        assert read_lease(storage, "r1").token == lease.record.token  # type: ignore[union-attr]
    finally:
        lease.release()
    assert read_lease(storage, "r1") is None


def test_heartbeats_renew_the_expiry_and_release_removes_the_record(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "root"))
    with hold_run_lease(storage, "r1", settings=FAST, echo=lambda _: None) as lease:
        first = read_lease(storage, "r1")
        time.sleep(1.0)
        later = read_lease(storage, "r1")
        assert first is not None and later is not None and later.token == first.token
        assert later.heartbeat > first.heartbeat and later.expires > first.expires
        assert later.expires > time.time()  # renewed beyond the 1.5 s ttl of the first record
        record = json.loads(Path(storage.path(lease_rel("r1"))).read_text())
        assert set(record) == {"run_id", "holder", "purpose", "token", "started", "heartbeat", "expires"}
        assert set(record["holder"]) == {"host", "pid"}
    assert not Path(storage.path(lease_rel("r1"))).exists()


def test_the_lease_is_released_when_the_block_raises(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "root"))
    with pytest.raises(ValueError):
        with hold_run_lease(storage, "r1", settings=FAST, echo=lambda _: None):
            raise ValueError("user error inside")
    assert read_lease(storage, "r1") is None
    with hold_run_lease(storage, "r1", settings=FAST, echo=lambda _: None):
        pass


def _config(tmp_path: Path, root: Path) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"root: {root}\nrun_id: r1\nmanifest: none.parquet\nmodels: [builtin:pixelstats]\n"
                   "lease: {ttl_s: 1.5, heartbeat_s: 0.3}\n")
    return cfg


def test_the_cli_refuses_a_held_run_and_force_takes_it_over(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A live holder process: `embedeval report` exits 3 with one line; with --force it takes the lease (the
    holder's heartbeat notices), fails on its own (no scores yet, exit 1) and releases the lease on that error."""
    from embedeval.cli import main

    root = tmp_path / "root"
    cfg = _config(tmp_path, root)
    holder = _contender(str(root), "r1", 0.0, 30.0)
    pid = _wait_for_line(holder, "acquired").split()[1]
    assert main(["report", "--config", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"pid {pid}" in err
    assert main(["report", "--config", str(cfg), "--force"]) == 1
    out, err = capsys.readouterr()
    assert "took over the lease" in out and "--force" in out
    assert "held by" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert read_lease(Storage(str(root)), "r1") is None
    assert holder.communicate(timeout=30)[0].split()[-1] == "lost"


def test_a_local_root_is_exclusive(tmp_path: Path) -> None:
    assert lease_store(Storage(str(tmp_path)), "r1").guarantee == GUARANTEE_EXCLUSIVE


@pytest.fixture
def s3_storage(s3_options) -> Storage:  # noqa: ANN001
    storage = Storage(f"s3://test/lease-{uuid.uuid4().hex[:8]}", s3_options)
    storage.ensure_bucket()
    return storage


def test_rclone_ignores_create_only_puts(s3_storage: Storage) -> None:
    assert conditional_writes_honoured(s3_storage) is False


@pytest.mark.slow
def test_on_rclone_two_processes_are_told_the_lease_is_advisory_and_a_live_holder_refuses_the_second(
        s3_storage: Storage, s3_server) -> None:  # noqa: ANN001
    env = {**_env(), "EMBEDEVAL_S3_ENDPOINT_URL": s3_server.endpoint_url, "AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    warning = (f"warning: the S3 server ignores create-only PUTs (If-None-Match), so the lease "
               f"{s3_storage.uri(lease_rel('r1'))} is advisory: a second run started at the same moment may also "
               "proceed")

    def contender(hold_s: float) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", CONTENDER, s3_storage.root, "r1", "0", str(hold_s)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    holder = contender(30.0)
    assert _wait_for_line(holder, "warning:") == warning
    pid = _wait_for_line(holder, "acquired").split()[1]
    second = contender(0.0)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 3, err
    assert out.strip() == warning
    assert len(err.strip().splitlines()) == 1 and f"pid {pid}" in err and "held by embedeval test" in err
    time.sleep(0.8)  # heartbeats reach S3 too
    record = read_lease(s3_storage, "r1")
    assert record is not None and str(record.pid) == pid and record.heartbeat > record.started
    holder.send_signal(signal.SIGINT)  # KeyboardInterrupt: the with block still releases the lease
    holder.wait(timeout=30)
    assert read_lease(s3_storage, "r1") is None


def test_with_ray_a_named_actor_keeps_two_holders_apart_on_rclone(s3_storage: Storage, ray_local: None) -> None:
    """The advisory record alone would let B in once it is gone (lost to a racing PUT); the actor does not."""
    store = lease_store(s3_storage, "r1")
    assert store.guarantee == GUARANTEE_RAY_CLUSTER
    said: list[str] = []
    a = acquire_run_lease(s3_storage, "r1", settings=STEADY, purpose="A", echo=said.append)
    try:
        assert "only between drivers on this Ray cluster" in said[0]
        s3_storage.delete_file(lease_rel("r1"))  # the record is gone: only the actor still knows A
        with pytest.raises(LeaseHeld, match="embedeval A on host"):
            acquire_run_lease(s3_storage, "r1", settings=STEADY, purpose="B", echo=lambda _: None)
    finally:
        a.release()
    b = acquire_run_lease(s3_storage, "r1", settings=STEADY, purpose="B", echo=lambda _: None)
    b.release()
    # A holder that dies leaves its claim in the actor; it is taken over once it expires.
    c = acquire_run_lease(s3_storage, "r2", settings=FAST, purpose="C", echo=lambda _: None)
    c._stop.set()  # stop renewing, as a killed driver would
    time.sleep(FAST.ttl_s + 0.2)
    d = acquire_run_lease(s3_storage, "r2", settings=FAST, purpose="D", echo=said.append)
    assert "took over" in said[-1] and "embedeval C" in said[-1]
    d.release()
