"""Live row counts of a streaming Ray Data pipeline, for the driver's progress bar.

The driver only sees a pipeline's output when a whole file is written (``embed.rows_per_file`` rows), far
too coarse for a bar. So the embedding actors add each batch's row count per modality to one small actor
(:class:`RowCounter`, no CPU reserved) without waiting for an answer, and the driver polls it. The counts
are for display only: the committed counts come from the written files, as before. A batch retried after
an actor restart is counted again; the bar clamps at the total.
"""

from __future__ import annotations

from typing import Any


class RowCounter:
    """Running totals per (pipeline key, modality); one per embed run, each model's pipeline its own key.

    Made a Ray actor by :func:`start_row_counter`.
    """

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, key: str, counts: dict[str, int]) -> None:
        mine = self.counts.setdefault(key, {})
        for modality, n in counts.items():
            mine[modality] = mine.get(modality, 0) + int(n)

    def snapshot(self, key: str) -> dict[str, int]:
        return dict(self.counts.get(key, {}))


def start_row_counter() -> Any:
    """A :class:`RowCounter` actor on this cluster (0 CPUs, never restarted: losing it loses only display)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(RowCounter).remote()


def poller(counter: Any, key: str, timeout_s: float = 2.0):  # noqa: ANN201 - returns a Progress.task poll
    """A ``poll()`` for :meth:`embedeval.pipeline.progress.Progress.task`: (total, per modality) of ``key``."""
    import ray

    def poll() -> tuple[int, dict[str, int]]:
        counts = ray.get(counter.snapshot.remote(key), timeout=timeout_s)
        return sum(counts.values()), counts

    return poll


def stop_row_counter(counter: Any) -> None:
    import ray

    try:
        ray.kill(counter, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone with its cluster
        pass
