"""Connecting to Ray: the cluster a job was submitted to, a given address, or an in-process instance.

Getting the library to the workers: under ``ray job submit --working-dir .`` the driver imports
``embedeval`` from ``lib/`` of the uploaded working dir (jobs/_entry.py puts it on sys.path), but the
workers only get the working dir itself on their path, and the cluster may have no (or another version
of) ``embedeval`` installed. So when joining an existing cluster, :func:`ensure_ray` ships the package
source the driver runs as a ``py_modules`` runtime env: every worker then runs exactly the driver's code.
If the job already ships ``py_modules`` (``--runtime-env configs/runtime_env.yaml``) that wins, and
``EMBEDEVAL_SHIP_LIBRARY=0`` turns shipping off for clusters whose image has this exact version.

Secrets are never put in a runtime_env: its env_vars are shown on the dashboard and by
``ray job status``/``ray job list``. Workers get S3 settings through task arguments and their own
environment / instance role / Kubernetes secret; :func:`ensure_ray` warns if a job's runtime_env
carries something that looks like a credential.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedeval.config import RayOptions

if TYPE_CHECKING:
    from embedeval.config import RunConfig
    from embedeval.io.storage import Storage

log = logging.getLogger(__name__)

SHIP_LIBRARY_ENV_VAR = "EMBEDEVAL_SHIP_LIBRARY"
# Set by Ray in the environment of a job's driver: the job's config, runtime_env included.
JOB_CONFIG_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY", re.IGNORECASE)


def library_dir() -> Path:
    """The folder of the ``embedeval`` package this process runs (what py_modules ships)."""
    import embedeval

    return Path(embedeval.__file__).resolve().parent


def job_runtime_env() -> dict[str, Any]:
    """The runtime_env of the Ray job this driver runs in ({} outside ``ray job submit``)."""
    raw = os.environ.get(JOB_CONFIG_ENV_VAR)
    if not raw:
        return {}
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError):
        return {}


def secret_looking_env_vars(runtime_env: dict[str, Any]) -> list[str]:
    """Names of runtime_env env_vars that look like credentials (they would be shown on the dashboard)."""
    return sorted(name for name in (runtime_env.get("env_vars") or {})
                  if _SECRET_NAME.search(name) and not name.upper().endswith(("_PATH", "_FILE", "_DIR")))


def library_runtime_env(joining_cluster: bool, job_env: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The runtime_env to pass to ``ray.init`` so the workers can import ``embedeval``; None if not needed.

    Needed only when joining an existing cluster (an in-process Ray's workers inherit this interpreter and
    its PYTHONPATH). Not added when the job already has ``py_modules``: Ray refuses to merge a job's
    runtime_env with a driver's that sets the same field, and the job's choice is the deliberate one.
    """
    if not joining_cluster or os.environ.get(SHIP_LIBRARY_ENV_VAR, "1").strip().lower() in ("0", "false", "no"):
        return None
    job_env = job_runtime_env() if job_env is None else job_env
    if job_env.get("py_modules"):
        return None
    return {"py_modules": [str(library_dir())]}


def console_verbose() -> bool:
    """Whether this process runs with ``embedeval -v`` (the CLI then logs at DEBUG)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def ensure_ray(options: RayOptions, *, verbose: bool | None = None) -> None:
    """Initialise Ray once per process. Inside `ray job submit` this joins the job's cluster.

    Unless ``verbose`` (default: :func:`console_verbose`), Ray's console output is cut to what a user
    must act on (:mod:`embedeval.pipeline.ray_console` lists each knob): no worker log echo, no Ray
    Data INFO lines, bars or issue-detector blocks. Exceptions from tasks reach the driver either way.
    """
    import ray

    if ray.is_initialized():
        return
    from embedeval.pipeline.ray_console import quiet_ray_data, quiet_ray_logging

    verbose = console_verbose() if verbose is None else verbose
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    log_to_driver = verbose if options.log_to_driver is None else options.log_to_driver
    kwargs: dict = {"log_to_driver": log_to_driver, "configure_logging": False}
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
        job_env = job_runtime_env()
        leaked = secret_looking_env_vars(job_env)
        if leaked:
            log.warning("the job's runtime_env sets %s: runtime_env values are shown on the Ray dashboard and by "
                        "`ray job status`; give workers credentials through their own environment, the instance "
                        "role or a Kubernetes secret instead (README 'Running on a cluster')", ", ".join(leaked))
        runtime_env = library_runtime_env(True, job_env)
        if runtime_env:
            log.info("shipping %s to the workers as py_modules", runtime_env["py_modules"][0])
            kwargs["runtime_env"] = runtime_env
    else:
        kwargs["include_dashboard"] = False
        if options.num_cpus:
            kwargs["num_cpus"] = options.num_cpus
    quiet_ray_logging(verbose)
    init_ray(**kwargs)
    quiet_ray_data(verbose)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


@dataclass(frozen=True)
class NodeCheck:
    """What a worker on one node saw: where it imported the library from, and whether it reached the root."""

    node: str
    gpus: float
    library: str        # the package folder a worker imported, or "" when the import failed
    shipped: bool       # imported from the job's runtime env (py_modules), not from an install on the node
    storage: str        # "ok", or what went wrong writing/reading/deleting a probe object under the root

    @property
    def ok(self) -> bool:
        return bool(self.library) and self.storage == "ok"

    def line(self) -> str:
        where = ("shipped with the job (py_modules)" if self.shipped
                 else f"from {self.library}" if self.library else "NOT importable")
        return f"node {self.node} ({self.gpus:g} GPU): embedeval {where}; storage {self.storage}"


def _check_this_node(storage: Storage, gpus: float) -> NodeCheck:
    import ray

    library = str(library_dir())
    # Ray unpacks a job's py_modules under <session dir>/runtime_resources/py_modules_files/.
    shipped = "py_modules_files" in Path(library).parts
    key = f".cluster-check-{uuid.uuid4().hex}"
    payload = b"embedeval cluster check"
    try:
        storage.write_bytes(key, payload)
        same = storage.read_bytes(key) == payload
        storage.delete_file(key)
        status = "ok" if same else "read back different bytes than written"
    except Exception as exc:  # noqa: BLE001 - reported per node, the job decides the exit status
        status = f"{type(exc).__name__}: {exc}"
    return NodeCheck(ray.util.get_node_ip_address(), gpus, library, shipped, status)


def check_cluster(config: RunConfig) -> list[NodeCheck]:
    """One probe task per alive node: can its workers import this library and read/write the root?

    Workers use their own credentials (environment, instance role, Kubernetes secret) plus the non-secret
    ``s3`` settings of the config, exactly as the pipeline does, so a passing check means embed can run.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from embedeval.io.storage import Storage

    ensure_ray(config.ray)
    storage = Storage(config.root, config.s3)
    probe = ray.remote(num_cpus=0, max_retries=0)(_check_this_node)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(storage, float(n.get("Resources", {}).get("GPU", 0.0))) for n in nodes]
    checks = []
    for node, ref in zip(nodes, refs, strict=True):
        try:
            checks.append(ray.get(ref))
        except Exception as exc:  # noqa: BLE001 - typically the worker could not import embedeval
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            checks.append(NodeCheck(node.get("NodeManagerAddress", "?"),
                                    float(node.get("Resources", {}).get("GPU", 0.0)), "", False,
                                    f"not checked: the probe task failed ({reason})"))
    return checks


#: How often a local Ray start is retried when its raylet misses Ray's fixed 30 s registration window.
RAY_START_ATTEMPTS = 3


def init_ray(**kwargs: Any) -> None:
    """``ray.init(**kwargs)``, retried when a *local* node times out during startup.

    Ray gives a starting raylet a fixed 30 s to register with the GCS; on a busy machine (CI, a shared
    node) it can miss that window although nothing is wrong. The half-started node is shut down and
    the start retried (:data:`RAY_START_ATTEMPTS` times); joining an existing cluster is never retried.
    """
    import ray

    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or kwargs.get("address") or attempt == RAY_START_ATTEMPTS:
                raise
            log.warning("Ray's node did not register within 30 s (a busy machine?); retrying (%d of %d)",
                        attempt + 1, RAY_START_ATTEMPTS)
            ray.shutdown()
