"""Shared fixtures: a real S3 server (rclone), a shared local Ray instance, the demo corpus."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from s3_server import S3Server, start_s3_server  # noqa: E402

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

# pytest-xdist (the README's test command runs two workers): each worker process starts its own in-process Ray.
# A private RAY_TMPDIR per worker keeps ray.init()'s address discovery (it reads <temp dir>/ray_current_cluster)
# from attaching one worker to a Ray that another worker's test started, and keeps their session folders apart.
if os.environ.get("PYTEST_XDIST_WORKER") and "RAY_TMPDIR" not in os.environ:
    _ray_tmp = tempfile.mkdtemp(prefix=f"ray-{os.environ['PYTEST_XDIST_WORKER']}-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = _ray_tmp
    atexit.register(shutil.rmtree, _ray_tmp, True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """rclone serve s3 on a free loopback port, with bucket ``test`` created; stopped after the session."""
    server = start_s3_server(tmp_path_factory.mktemp("s3data"))
    server.make_bucket("test")
    yield server
    server.stop()


@pytest.fixture
def s3_options(s3_server: S3Server):  # noqa: ANN201
    from embedeval.io.storage import S3Options

    return S3Options(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        max_attempts=3,
    )


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One in-process Ray for the whole test session (starting Ray costs seconds)."""
    import ray

    from embedeval.pipeline.ray_runtime import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


# The modules that took longest in a two-worker run (seconds, this 2-core machine, 2026-12-08), longest first.
# Scheduling the longest first (and the many short modules last, to fill the gaps) is what keeps both workers
# busy to the end; a module that is not listed runs after these, slow ones first. The two fault modules share
# one reference run (made by whichever needs it first, the other waits), so they start apart.
LONGEST_MODULES = [
    "tests/faults/test_driver_kill.py",           # 53 (with the shared reference run)
    "tests/scoring/test_job_scale.py",            # 62
    "tests/cluster/test_local_cluster.py",        # 49
    "tests/faults/test_node_failure.py",          # 44
    "tests/faults/test_bad_inputs_at_scale.py",   # 45
    "tests/demo/test_demo_console.py",            # 42
    "tests/faults/test_s3_faults.py",             # 40 (mostly waiting on the slow proxy: little CPU)
    "tests/pipeline/test_embed.py",               # 26
    "tests/pipeline/test_cache.py",               # 16-27
    "tests/cluster/test_runtime_env.py",          # 15
    "tests/scoring/test_job.py",                  # 12
    "tests/report/test_report_build.py",          # 11
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first (:data:`LONGEST_MODULES`), then other modules with a ``slow`` test, then the
    rest; each module's tests in their own order.

    pytest-xdist (``--dist loadscope --no-loadscope-reorder``, pyproject's addopts) hands whole modules to its
    workers in this order as they free up. Its default reorder (most tests first) had put the one-test node
    failure module last, where it ran alone on one worker for 90 s while the other sat idle.
    """
    del config
    slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        module = item.nodeid.split("::")[0]
        if module in LONGEST_MODULES:
            return (0, LONGEST_MODULES.index(module))
        return (1 if module in slow_modules else 2, 0)

    items.sort(key=rank)
