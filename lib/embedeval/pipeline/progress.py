"""Console progress for long steps: rows done, rows/s and ETA, at most every few seconds.

Plain lines (not a redrawn bar) so the output reads well in `ray job logs`, CI logs and terminals alike.
"""

from __future__ import annotations

import time
from typing import Callable


class ProgressTask:
    def __init__(self, echo: Callable[[str], None], label: str, total: int, every_s: float) -> None:
        self.echo, self.label, self.total, self.every_s = echo, label, total, every_s
        self.done_rows = 0
        self.started = self.last = time.time()

    def advance(self, rows: int) -> None:
        self.done_rows += rows
        now = time.time()
        if now - self.last >= self.every_s:
            self.last = now
            self.echo(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done_rows / elapsed
        left = (self.total - self.done_rows) / rate if rate > 0 else float("inf")
        eta = f"{left:.0f}s" if left != float("inf") else "?"
        pct = 100.0 * self.done_rows / self.total if self.total else 100.0
        return f"  {self.label}: {self.done_rows}/{self.total} ({pct:.0f}%) {rate:.1f} rows/s, ETA {eta}"

    def done(self) -> None:
        now = time.time()
        self.echo(self.line(now).replace(", ETA", ", done in").rsplit(" ", 1)[0] + f" {now - self.started:.1f}s")


class Progress:
    """Makes :class:`ProgressTask` objects that print through ``echo``."""

    def __init__(self, echo: Callable[[str], None] = print, every_s: float = 5.0) -> None:
        self.echo = echo
        self.every_s = every_s

    def task(self, label: str, total: int) -> ProgressTask:
        return ProgressTask(self.echo, label, total, self.every_s)
