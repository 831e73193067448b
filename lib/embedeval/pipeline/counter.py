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
    """Per-key running totals (key: a modality). Made a Ray actor by :func:`start_row_counter`."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, counts: dict[str, int]) -> None:
        for key, n in counts.items():
            self.counts[key] = self.counts.get(key, 0) + int(n)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


def start_row_counter() -> Any:
    """A :class:`RowCounter` actor on this cluster (0 CPUs, never restarted: losing it loses only display)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(RowCounter).remote()


def poller(counter: Any, timeout_s: float = 2.0):  # noqa: ANN201 - returns the Progress.task poll callable
    """A ``poll()`` for :meth:`embedeval.pipeline.progress.Progress.task`: (total, per-key) of ``counter``."""
    import ray

    def poll() -> tuple[int, dict[str, int]]:
        counts = ray.get(counter.snapshot.remote(), timeout=timeout_s)
        return sum(counts.values()), counts

    return poll


def stop_row_counter(counter: Any) -> None:
    import ray

    try:
        ray.kill(counter, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone with its cluster
        pass
