"""Connecting to Ray: the cluster a job was submitted to, a given address, or an in-process instance.

Credentials are never put in a runtime_env (the dashboard shows it): workers get S3 settings through
task arguments and their own environment / instance role.
"""

from __future__ import annotations

import logging
import os

from embedeval.config import RayOptions

log = logging.getLogger(__name__)


def ensure_ray(options: RayOptions) -> None:
    """Initialise Ray once per process. Inside `ray job submit` this joins the job's cluster."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    kwargs: dict = {"log_to_driver": True, "configure_logging": False}
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = False
        if options.num_cpus:
            kwargs["num_cpus"] = options.num_cpus
    ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))
