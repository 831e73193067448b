"""Fixtures for the cluster tests: an interpreter like a cluster node's, with every dependency but not embedeval."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def python_without_embedeval(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv that sees this interpreter's packages but not embedeval (an editable install's .pth is not read
    from a folder that is merely on the path), so only what a job ships can make the library importable."""
    where = tmp_path_factory.mktemp("node-python")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(where)], check=True, capture_output=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    Path(site, "deps-of-the-test-interpreter.pth").write_text("\n".join(ours) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([str(python), "-c", "import ray, pyarrow; import embedeval"], capture_output=True, text=True,
                           cwd=where, env=env)
    if "No module named 'embedeval'" not in probe.stderr:
        pytest.skip(f"could not make an interpreter without embedeval (embedeval is installed non-editable?): "
                    f"{probe.stderr[-300:]}")
    return str(python)
