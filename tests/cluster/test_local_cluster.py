"""The cluster path end to end: infra/local_cluster.sh starts a Ray head (token auth, dashboard on loopback)
and an S3 server; jobs go in through `ray job submit --working-dir <repo>`, as on a real cluster.

The Ray node runs an interpreter that has every dependency but NOT embedeval, like a cluster node where the
project is not installed, so a passing job proves the library reached the workers with the job. The S3 keys
live only in the environment of `ray start`; the tests prove they never show up in what Ray displays.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from s3_server import TEST_ACCESS_KEY, TEST_SECRET_KEY, rclone_binary

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("setsid"), reason="needs setsid (util-linux) to manage the cluster")]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "local_cluster.sh"
BUCKET = "test"
ROOT = f"s3://{BUCKET}/embedeval"
JOB_TIMEOUT_S = 300


@dataclass
class LocalCluster:
    state: Path
    address: str           # the dashboard / job API, http://127.0.0.1:PORT
    token_path: Path
    endpoint: str
    env: dict[str, str]    # environment of the `ray job ...` client commands (token included)

    def ray(self, *args: str, env: dict[str, str] | None = None, timeout: float = JOB_TIMEOUT_S,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], cwd=cwd, env=env or self.env,
                              capture_output=True, text=True, timeout=timeout)

    def s3_options(self):  # noqa: ANN201
        from embedeval.io.storage import S3Options

        return S3Options(endpoint_url=self.endpoint, access_key_id=TEST_ACCESS_KEY, secret_access_key=TEST_SECRET_KEY,
                         max_attempts=3)

    def job_info(self, submission_id: str) -> dict:
        """The job as the dashboard's REST API (what `ray job status` and the dashboard show) returns it."""
        request = urllib.request.Request(f"{self.address}/api/jobs/{submission_id}",
                                         headers={"Authorization": f"Bearer {self.token_path.read_text().strip()}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def list_jobs(self) -> list[dict]:
        """Every job the dashboard's REST API knows of (what `ray job list` shows)."""
        request = urllib.request.Request(f"{self.address}/api/jobs/",
                                         headers={"Authorization": f"Bearer {self.token_path.read_text().strip()}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def session_dir(self) -> Path:
        return (self.state / "ray" / "session_latest").resolve()


def _client_env() -> dict[str, str]:
    # Nothing of this process's Ray, S3 or import settings may leak into the cluster or the clients.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "AWS_", "EMBEDEVAL_")) and k != "PYTHONPATH"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _processes_under(path: Path) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(path) in part for part in (proc.info["cmdline"] or [])):
                found.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return [p for p in found if p != os.getpid()]


@pytest.fixture(scope="module")
def cluster(python_without_embedeval: str) -> Iterator[LocalCluster]:
    # A short folder: Ray's unix socket paths under <temp dir>/session_*/sockets must stay below 108 bytes.
    state = Path(tempfile.mkdtemp(prefix="ee-cl-", dir="/tmp"))
    script_env = {**_client_env(), "PYTHON": python_without_embedeval, "RCLONE": rclone_binary(),
                  "EMBEDEVAL_CLUSTER_DIR": str(state), "EMBEDEVAL_CLUSTER_CPUS": "2",
                  "EMBEDEVAL_S3_ACCESS_KEY": TEST_ACCESS_KEY, "EMBEDEVAL_S3_SECRET_KEY": TEST_SECRET_KEY}
    try:
        started = subprocess.run([str(SCRIPT), "start"], env=script_env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, f"start failed:\n{started.stdout}\n{started.stderr}"
        values = dict(line.split("=", 1) for line in (state / "cluster.env").read_text().splitlines()
                      if "=" in line and not line.startswith("#"))
        client = {**_client_env(), "RAY_ADDRESS": values["RAY_ADDRESS"], "RAY_AUTH_MODE": "token",
                  "RAY_AUTH_TOKEN_PATH": values["RAY_AUTH_TOKEN_PATH"]}
        yield LocalCluster(state, values["RAY_ADDRESS"], Path(values["RAY_AUTH_TOKEN_PATH"]),
                           values["EMBEDEVAL_S3_ENDPOINT_URL"], client)
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=script_env, capture_output=True, text=True, timeout=120)
        # Safety net, should the script have missed anything: only processes that run from our own folder.
        leftover = _processes_under(state)
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(state, ignore_errors=True)
        assert not leftover, f"`local_cluster.sh stop` left processes running: {leftover}"


@pytest.fixture(scope="module")
def config_path(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo catalogue uploaded to the S3 server, and a config that names no secret."""
    from embedeval.demo.corpus import write_demo_corpus
    from embedeval.io.storage import Storage

    (cluster.state / "s3" / BUCKET).mkdir(parents=True, exist_ok=True)
    corpus = write_demo_corpus(tmp_path_factory.mktemp("corpus"), n_items=16)
    catalogue = Storage(f"s3://{BUCKET}/catalogue", cluster.s3_options())
    for path in sorted(corpus.root.rglob("*")):
        if path.is_file():
            catalogue.write_bytes(str(path.relative_to(corpus.root)), path.read_bytes())
    path = tmp_path_factory.mktemp("config") / "cluster.yaml"
    path.write_text(textwrap.dedent(f"""\
        root: {ROOT}
        run_id: r1
        manifest: s3://{BUCKET}/catalogue/manifest.parquet
        models: [builtin:pixelstats]
        s3: {{endpoint_url: "{cluster.endpoint}"}}
        embed: {{batch_size: 8, rows_per_file: 16, modalities: [image]}}
        """))
    return path


@pytest.fixture(scope="module")
def embed_job(cluster: LocalCluster, config_path: Path) -> str:
    """`python -m jobs.embed` submitted with the working dir only: the driver ships the library itself."""
    job_id = f"embed-{uuid.uuid4().hex[:8]}"
    done = cluster.ray("job", "submit", "--working-dir", str(REPO), "--submission-id", job_id, "--",
                       "python", "-m", "jobs.embed", "--config", str(config_path))
    assert done.returncode == 0, (f"job failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}\n"
                                  f"Ray's error lines this session:\n{_ray_error_lines(cluster)}")
    return job_id


def _ray_error_lines(cluster: LocalCluster, limit: int = 40) -> str:
    """The last error and fatal lines of Ray's own logs for the cluster's session (the drivers' core worker
    logs among them): why a job's process ended, when its own output does not say."""
    import re

    severe = re.compile(r"^\[[^\]]+ [EF] \d+ \d+\]|Check failed|Traceback")
    found = []
    for log_file in sorted((cluster.session_dir() / "logs").glob("*.log")):
        for line in log_file.read_text(errors="replace").splitlines():
            if severe.search(line):
                found.append(f"{log_file.name}: {line[:300]}")
    return "\n".join(found[-limit:]) or "(none)"


def test_embed_job_commits_embeddings_to_s3(cluster: LocalCluster, embed_job: str) -> None:
    from embedeval.io.embeddings import read_committed
    from embedeval.io.storage import Storage

    assert cluster.job_info(embed_job)["status"] == "SUCCEEDED"
    embeddings = read_committed(Storage(ROOT, cluster.s3_options()), "r1", "builtin-pixelstats", "image")
    assert len(embeddings) == 16 and len(set(embeddings.ids.tolist())) == 16


def test_check_job_with_runtime_env_file(cluster: LocalCluster, config_path: Path) -> None:
    """configs/runtime_env.yaml ships the library (the driver then adds nothing: no runtime_env conflict), and
    the workers reach S3 with the credentials of their own environment."""
    done = cluster.ray("job", "submit", "--working-dir", ".", "--runtime-env", "configs/runtime_env.yaml", "--",
                       "python", "-m", "jobs.check", "--config", str(config_path))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "embedeval shipped with the job (py_modules); storage ok" in out


def test_submitting_without_the_token_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    def submissions() -> int:
        # Through the job REST API (what `ray job list` reads), which spares two `ray` CLI starts.
        return sum(job.get("type") == "SUBMISSION" for job in cluster.list_jobs())

    before = submissions()
    no_token = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    wrong_token = {**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex * 2}
    for env in (no_token, wrong_token):
        refused = cluster.ray("job", "submit", "--", "echo", "should-not-run", env=env, timeout=120)
        assert refused.returncode != 0
        assert "authenticat" in (refused.stdout + refused.stderr).lower()
    assert submissions() == before

    with pytest.raises(urllib.error.HTTPError) as refused_http:
        urllib.request.urlopen(f"{cluster.address}/api/jobs/", timeout=30)
    assert refused_http.value.code == 401
    request = urllib.request.Request(f"{cluster.address}/api/jobs/",
                                     headers={"Authorization": f"Bearer {cluster.token_path.read_text().strip()}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


def test_s3_secret_is_never_shown(cluster: LocalCluster, embed_job: str) -> None:
    shown = [cluster.ray("job", "logs", embed_job), cluster.ray("job", "status", embed_job, "-v"),
             cluster.ray("job", "list")]
    for answer in shown:
        assert answer.returncode == 0, answer.stderr[-2000:]
        assert TEST_SECRET_KEY not in answer.stdout + answer.stderr
    info = cluster.job_info(embed_job)
    assert TEST_SECRET_KEY not in json.dumps(info)
    assert not (info.get("runtime_env") or {}).get("env_vars")
    # Nor in any log Ray wrote for this session (drivers, workers, raylet, dashboard, runtime env agent).
    for log_file in (cluster.session_dir() / "logs").rglob("*"):
        if log_file.is_file():
            assert TEST_SECRET_KEY.encode() not in log_file.read_bytes(), f"secret in {log_file}"
    # Nor in the run's recorded config.
    from embedeval.io.storage import Storage

    assert TEST_SECRET_KEY not in Storage(ROOT, cluster.s3_options()).read_bytes("runs/r1/config.yaml").decode()


def test_dashboard_listens_on_loopback_only(cluster: LocalCluster) -> None:
    import psutil

    port = int(cluster.address.rsplit(":", 1)[1])
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening and {c.laddr.ip for c in listening} <= {"127.0.0.1", "::1"}


def test_working_dir_upload_leaves_out_what_jobs_do_not_need(cluster: LocalCluster, embed_job: str) -> None:
    unpacked = [p for p in (cluster.session_dir() / "runtime_resources" / "working_dir_files").iterdir() if p.is_dir()]
    assert unpacked
    for package in unpacked:
        top = {p.name for p in package.iterdir()}
        assert {"jobs", "lib"} <= top
        assert not top & {".git", ".venv", "tests", "bench", ".mypy_cache"}, top
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        assert size < 5 * 2**20, f"working dir upload is {size / 2**20:.1f} MiB"
