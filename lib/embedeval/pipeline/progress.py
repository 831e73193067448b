"""A run's console: one-line messages, one progress bar per stage, details only with ``-v``, a summary.

Two renderings of the same bar, chosen once per console:

- **terminal** (``stream`` is a TTY): the bar is redrawn in place (``\\r``) at most every ``redraw_s``;
  a message printed meanwhile clears the bar, prints, and the bar is drawn again under it.
- **lines** (a pipe, a file, CI, ``ray job logs``, k8s): one plain line every ``every_s`` seconds while the
  stage runs, and one last line when it ends. Nothing is redrawn, so logs stay readable.

Each bar shows done/total with the unit, a per-part breakdown (e.g. per modality), the rate and the ETA.
Thread-safe: a bar may be advanced from a polling thread while the main thread prints messages.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

BAR_WIDTH = 24


def format_seconds(seconds: float) -> str:
    """``7s``, ``1m05s``, ``2h03m``: short enough for a progress line."""
    if seconds != seconds or seconds == float("inf"):  # NaN or inf: not known yet
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_rate(per_second: float, unit: str) -> str:
    if per_second >= 10 or per_second == 0:
        return f"{per_second:.0f} {unit}/s"
    return f"{per_second:.1f} {unit}/s"


class ProgressTask:
    """One stage's bar: ``advance``/``update`` it as work completes, ``finish`` it once at the end.

    ``parts`` (name -> total) adds a breakdown to the line (``image 320/320, text 40/960``); ``done`` is
    clamped to ``total`` on display (a retried batch may be counted twice, the bar never says 104%).
    """

    def __init__(self, console: Progress, label: str, total: int, unit: str,
                 parts: dict[str, int] | None) -> None:
        self.console, self.label, self.total, self.unit = console, label, max(0, int(total)), unit
        self.part_totals = dict(parts or {})
        self.part_done = {name: 0 for name in self.part_totals}
        self.done_count = 0
        self.started = console.clock()
        self.finished_after: float | None = None
        self.final_printed = False
        self.stopped = threading.Event()
        self.stopped_early = False

    # -- updates ------------------------------------------------------------------------------------
    def advance(self, n: int = 1, part: str | None = None) -> None:
        """``n`` more of ``unit`` done (of ``part``, if the bar has parts)."""
        with self.console.lock:
            self.done_count += n
            if part is not None:
                self.part_done[part] = self.part_done.get(part, 0) + n
        self.console._changed(self)

    def update(self, done: int, parts: dict[str, int] | None = None) -> None:
        """Set the absolute count (and per-part counts), e.g. from a counter that workers add to."""
        with self.console.lock:
            self.done_count = int(done)
            if parts is not None:
                self.part_done.update({k: int(v) for k, v in parts.items()})
        self.console._changed(self)

    def finish(self, stopped: bool = False) -> float:
        """End the bar: print its last line (``stopped``: the stage failed); returns its seconds. Idempotent."""
        with self.console.lock:
            if self.finished_after is None:
                self.finished_after = self.console.clock() - self.started
                self.stopped_early = stopped
        self.stopped.set()
        self.console._finished(self)
        return self.finished_after

    # -- rendering ----------------------------------------------------------------------------------
    def shown_done(self) -> int:
        return min(self.done_count, self.total) if self.total else self.done_count

    def breakdown(self) -> str:
        if not self.part_totals:
            return ""
        return ", ".join(f"{name} {min(self.part_done.get(name, 0), t)}/{t}" for name, t in self.part_totals.items())

    def line(self, now: float, bar: bool = False) -> str:
        """The text of the bar at time ``now``: running (rate, ETA) or finished (seconds, rate)."""
        done = self.shown_done()
        elapsed = (self.finished_after if self.finished_after is not None else now - self.started)
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = self.breakdown()
        if self.finished_after is not None:
            detail = f" ({parts})" if parts else ""
            verb = "STOPPED after" if self.stopped_early else "in"
            return (f"  {self.label}: {done}/{self.total} {self.unit}{detail} {verb} {self.finished_after:.1f}s, "
                    f"{format_rate(rate, self.unit)}")
        pct = 100.0 * done / self.total if self.total else 100.0
        left = (self.total - done) / rate if rate > 0 else float("inf")
        graphic = ""
        if bar:
            filled = int(BAR_WIDTH * done / self.total) if self.total else BAR_WIDTH
            graphic = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "] "
        detail = f"; {parts}" if parts else ""
        return (f"  {self.label}: {graphic}{done}/{self.total} {self.unit} ({pct:.0f}%{detail}), "
                f"{format_rate(rate, self.unit)}, ETA {format_seconds(left)}")


@dataclass
class StageTime:
    name: str
    seconds: float


class Progress:
    """The console of one command. Library functions take one (or make a lines-mode one from ``echo``).

    ``echo`` given: every line goes through it (lines mode; tests pass ``list.append``). Otherwise lines go
    to ``stream`` (default stdout), as a redrawn bar when it is a TTY (``tty`` overrides the detection).
    ``verbose``: :meth:`detail` messages are shown too (``embedeval -v``).
    """

    def __init__(self, echo: Callable[[str], None] | None = None, every_s: float = 5.0, *, verbose: bool = False,
                 stream: TextIO | None = None, tty: bool | None = None, redraw_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._echo = echo
        self.stream = stream
        self.every_s, self.redraw_s, self.verbose, self.clock = every_s, redraw_s, verbose, clock
        if tty is None:
            out = stream if stream is not None else sys.stdout
            tty = echo is None and bool(getattr(out, "isatty", lambda: False)())
        self.tty = tty
        self.lock = threading.RLock()
        self._drawn: ProgressTask | None = None   # the bar currently drawn on the terminal line
        self._drawn_at = 0.0
        self.stages: list[StageTime] = []
        self.started = clock()

    # -- messages -----------------------------------------------------------------------------------
    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def _write_line(self, text: str) -> None:
        if self._echo is not None:
            self._echo(text)
            return
        out = self._out()
        out.write(text + "\n")
        out.flush()

    def _clear_drawn(self) -> None:
        if self.tty and self._drawn is not None:
            out = self._out()
            out.write("\r\x1b[K")
            out.flush()

    def echo(self, message: str) -> None:
        """Print a line the user should see (keeps a drawn bar below it)."""
        with self.lock:
            self._clear_drawn()
            self._write_line(message)
            if self._drawn is not None:
                self._draw(self._drawn, force=True)

    say = echo

    def detail(self, message: str) -> None:
        """A line shown only when verbose (per-unit timings, cache notes)."""
        if self.verbose:
            self.echo(message)

    # -- bars ---------------------------------------------------------------------------------------
    def task(self, label: str, total: int, *, unit: str = "items", parts: dict[str, int] | None = None,
             poll: Callable[[], tuple[int, dict[str, int]]] | None = None) -> ProgressTask:
        """Start a bar. Call :meth:`ProgressTask.finish` when the stage ends.

        A background thread keeps the bar alive while the stage runs: it redraws it (terminal) or prints
        a line every ``every_s`` (lines mode) even when no work completed, so a slow step never looks hung.
        ``poll() -> (done, per-part done)``, when given, is called by that thread to update the bar (e.g. a
        counter that Ray workers add to); an exception from it is ignored (the next poll tries again).
        """
        task = ProgressTask(self, label, total, unit, parts)
        if self.tty:
            with self.lock:
                self._drawn = task
                self._draw(task, force=True)
        interval = max(self.redraw_s, 0.5) if self.tty else self.every_s
        threading.Thread(target=self._tick, args=(task, poll, interval), daemon=True,
                         name=f"progress {label}").start()
        return task

    def _tick(self, task: ProgressTask, poll: Callable[[], tuple[int, dict[str, int]]] | None,
              interval: float) -> None:
        while not task.stopped.wait(interval):
            if poll is not None:
                try:
                    done, parts = poll()
                except Exception:  # noqa: BLE001 - progress must never break the stage it reports on
                    continue
                task.update(max(done, task.done_count), parts)
            self._changed(task)
            self._line_now(task)

    def _draw(self, task: ProgressTask, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._drawn_at < self.redraw_s:
            return
        self._drawn_at = now
        out = self._out()
        out.write("\r\x1b[K" + task.line(now, bar=True))
        out.flush()

    def _changed(self, task: ProgressTask) -> None:
        with self.lock:
            if task.finished_after is not None:
                return
            if self.tty:
                self._drawn = task
                self._draw(task)

    def _line_now(self, task: ProgressTask) -> None:
        with self.lock:
            if task.finished_after is None and not self.tty:
                self._write_line(task.line(self.clock()))

    def _finished(self, task: ProgressTask) -> None:
        with self.lock:
            if task.final_printed:
                return
            task.final_printed = True
            if self._drawn is task:
                self._clear_drawn()
                self._drawn = None
            self._write_line(task.line(self.clock()))

    # -- stage clock and summary --------------------------------------------------------------------
    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage for the summary (``done in 41s: embed 20.1s, score 9.8s, ...``)."""
        started = self.clock()
        try:
            yield
        finally:
            self.stages.append(StageTime(name, self.clock() - started))

    def timing_line(self) -> str:
        total = self.clock() - self.started
        parts = ", ".join(f"{s.name} {s.seconds:.1f}s" for s in self.stages)
        return f"done in {total:.1f}s" + (f" ({parts})" if parts else "")
