"""Live row counts of a streaming Ray Data pipeline, for the driver's progress bar.

The driver only sees a pipeline's output when a whole file is written (``embed.rows_per_file`` rows), far
too coarse for a bar. So the embedding actors add each batch's row count per modality to one small actor
(:class:`RowCounter`, no CPU reserved) without waiting for an answer, and the driver polls it. The counts
are for display only: the committed counts come from the written files, as before. A batch retried after
an actor restart is counted again; the bar clamps at the total.

One counter serves every embed run of a driver on one Ray cluster (:func:`start_row_counter`): an actor is
a worker process, about a CPU-second to start, which every run paid before. Each run counts under keys of
its own and drops them when it ends (:func:`stop_row_counter`).
"""

from __future__ import annotations

import threading
from typing import Any


class RowCounter:
    """Running totals per (pipeline key, modality); each embed run's model pipelines have keys of their own.

    Made a Ray actor by :func:`start_row_counter`. Memory: one small dict per key of the runs in progress.
    """

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, key: str, counts: dict[str, int]) -> None:
        mine = self.counts.setdefault(key, {})
        for modality, n in counts.items():
            mine[modality] = mine.get(modality, 0) + int(n)

    def snapshot(self, key: str) -> dict[str, int]:
        return dict(self.counts.get(key, {}))

    def forget(self, prefix: str) -> None:
        """Drop every key that starts with ``prefix`` (a finished run's)."""
        for key in [k for k in self.counts if k.startswith(prefix)]:
            del self.counts[key]


# The driver's counter: (Ray cluster's GCS address, job id, actor handle).
_driver_counter: tuple[str, str, Any] | None = None
_lock = threading.Lock()


def start_row_counter() -> Any:
    """This driver's :class:`RowCounter` actor on the connected cluster (0 CPUs, never restarted: losing it
    loses only display), made on first use and reused by later runs while it answers.

    A counter left on another cluster (``ray.shutdown`` then ``ray.init``) or lost with its node is
    replaced. Runs must count under keys of their own (:func:`stop_row_counter` drops them by prefix).
    """
    global _driver_counter
    import ray

    context = ray.get_runtime_context()
    here = (context.gcs_address, context.get_job_id())
    with _lock:
        if _driver_counter is not None and _driver_counter[:2] == here:
            actor = _driver_counter[2]
            try:
                ray.get(actor.snapshot.remote(""), timeout=5.0)
                return actor
            except Exception:  # noqa: BLE001 - dead with its node, or unreachable: make another
                pass
        actor = ray.remote(num_cpus=0, max_restarts=0)(RowCounter).remote()
        _driver_counter = (*here, actor)
        return actor


def poller(counter: Any, key: str, timeout_s: float = 2.0):  # noqa: ANN201 - returns a Progress.task poll
    """A ``poll()`` for :meth:`embedeval.pipeline.progress.Progress.task`: (total, per modality) of ``key``."""
    import ray

    def poll() -> tuple[int, dict[str, int]]:
        counts = ray.get(counter.snapshot.remote(key), timeout=timeout_s)
        return sum(counts.values()), counts

    return poll


def stop_row_counter(counter: Any, prefix: str) -> None:
    """A run ended: drop its keys (``prefix``); the actor stays for the driver's next run."""
    try:
        counter.forget.remote(prefix)   # fire and forget: nothing waits on a display counter
    except Exception:  # noqa: BLE001 - already gone with its cluster
        pass
