"""How the library reaches Ray workers, and that a job's runtime_env never carries a secret."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from embedeval.pipeline.ray_runtime import (
    JOB_CONFIG_ENV_VAR,
    SHIP_LIBRARY_ENV_VAR,
    job_runtime_env,
    library_dir,
    library_runtime_env,
    secret_looking_env_vars,
)

REPO = Path(__file__).resolve().parents[2]


def test_library_is_shipped_when_joining_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SHIP_LIBRARY_ENV_VAR, raising=False)
    env = library_runtime_env(True, {"working_dir": "gcs://_ray_pkg_x.zip", "env_vars": {}})
    assert env == {"py_modules": [str(library_dir())]}
    assert (library_dir() / "__init__.py").is_file() and library_dir().name == "embedeval"


def test_nothing_is_added_in_process_or_when_the_job_ships_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SHIP_LIBRARY_ENV_VAR, raising=False)
    assert library_runtime_env(False, {}) is None
    # Ray refuses to merge a driver's py_modules into a job's that has py_modules.
    assert library_runtime_env(True, {"py_modules": ["gcs://_ray_pkg_y.zip"]}) is None
    monkeypatch.setenv(SHIP_LIBRARY_ENV_VAR, "0")
    assert library_runtime_env(True, {}) is None


def test_job_runtime_env_is_read_from_the_job_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(JOB_CONFIG_ENV_VAR, raising=False)
    assert job_runtime_env() == {}
    monkeypatch.setenv(JOB_CONFIG_ENV_VAR, json.dumps({"runtime_env": {"py_modules": ["gcs://p.zip"]}}))
    assert job_runtime_env() == {"py_modules": ["gcs://p.zip"]}
    monkeypatch.setenv(JOB_CONFIG_ENV_VAR, "not json")
    assert job_runtime_env() == {}


def test_secret_looking_env_vars_are_named() -> None:
    env = {"env_vars": {"AWS_SECRET_ACCESS_KEY": "x", "AWS_SESSION_TOKEN": "y", "RAY_AUTH_TOKEN": "z",
                        "OMP_NUM_THREADS": "4", "AWS_REGION": "us-west-2", "RAY_AUTH_TOKEN_PATH": "/run/token"}}
    assert secret_looking_env_vars(env) == ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN"]
    assert secret_looking_env_vars({}) == []


@pytest.mark.slow
def test_job_entry_runs_in_process_without_the_package_installed(python_without_embedeval: str,
                                                                 tmp_path: Path) -> None:
    """`python -m jobs.embed` from a checkout, no install, no cluster: the in-process Ray's workers find the
    library through the PYTHONPATH that jobs/_entry.py sets."""
    from embedeval.demo.corpus import write_demo_corpus
    from embedeval.io.embeddings import read_committed
    from embedeval.io.storage import Storage

    corpus = write_demo_corpus(tmp_path, n_items=8)
    config = tmp_path / "run.yaml"
    config.write_text(textwrap.dedent(f"""\
        root: {tmp_path / 'out'}
        run_id: r1
        manifest: {corpus.manifest}
        models: [builtin:pixelstats]
        embed: {{batch_size: 8, modalities: [image]}}
        ray: {{num_cpus: 2}}
        """))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    done = subprocess.run([python_without_embedeval, "-m", "jobs.embed", "--config", str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(read_committed(Storage(str(tmp_path / "out")), "r1", "builtin-pixelstats", "image")) == 8
