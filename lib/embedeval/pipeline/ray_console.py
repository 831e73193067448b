"""What Ray may print on our console: only what the user must act on, unless ``embedeval -v``.

Ray writes to the driver's console from four places, each quieted by its own knob (all applied only on
the code path that starts or joins Ray, never at import time):

==========================================  =========================================================
source                                      quiet mode (default)
==========================================  =========================================================
workers' stdout/stderr echoed to the driver ``ray.init(log_to_driver=False)``; the lines stay in the
                                            session's log files (``/tmp/ray/session_*/logs``)
the ``ray.data`` logger                     console handler at WARNING (INFO ``streaming_executor``
                                            lines gone, still in ``ray-data.log``) and
                                            :data:`NOISE` dropped; Ray Data's own progress bars off
Ray Data's issue detectors                  off (``issue_detectors_config.detectors = []``): every 30 s
                                            they print a multi-line memory advice block per operator
native (C++) lines on the driver's stderr   the few :data:`NOISE` lines are dropped by a filter on
                                            fd 2 while a pipeline runs (:func:`filtered_stderr`);
                                            every other line passes through unchanged
the token-auth notice of a local start      dropped from the ``ray`` logger's console (:data:`NOISE`);
                                            auth stays on, as Ray chooses
==========================================  =========================================================

Verbose mode changes none of these: everything Ray says is shown.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

# Lines that tell the user nothing they can act on. Each is matched anywhere in a line / log message.
NOISE: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    # Ray Data actor pools always pass their constructor state by reference with max_restarts=-1
    # (ray-project/ray#53727); nothing in our code or config can change it.
    r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store",
    # We turn Ray Data's bars off on purpose: our own progress bar replaces them.
    r"Progress bars disabled\. To enable",
    r"Progress bars for operators disabled",
    r"Progress will be logged because stdout is a non-interactive terminal",
    # Local start: auth is on by default (and stays on); the notice only says so.
    r"Token authentication is enabled for this Ray cluster",
))


# The loggers (Ray 2.60) that log the NOISE messages above; a logger filter sees only its own records.
NOISY_LOGGERS = (
    "ray._private.authentication.authentication_token_setup",
    "ray.data._internal.progress",
)


def is_noise(line: str) -> bool:
    """True for a line of :data:`NOISE` (what quiet mode drops)."""
    return any(p.search(line) for p in NOISE)


class NoiseFilter(logging.Filter):
    """A logging filter that drops :data:`NOISE` records."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not is_noise(record.getMessage())
        except Exception:  # noqa: BLE001 - a record that cannot format is not ours to drop
            return True


def _is_file_handler(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.FileHandler) or type(handler).__name__ == "SessionFileHandler"


def quiet_ray_logging(verbose: bool) -> None:
    """Before ``ray.init``: Ray's and Ray Data's console handlers drop :data:`NOISE`; Ray Data's console
    shows WARNING and above. Log files (``ray-data.log``) keep everything. Nothing changes when verbose."""
    import ray.data  # noqa: F401 - configures the "ray.data" logger, whose console handler we adjust

    if verbose:
        return
    # ray.init(configure_logging=False) removes the "ray" logger's handlers, so Ray's driver warnings reach
    # Python's last-resort handler: filter on the loggers that emit the noise, not on a handler.
    for name in NOISY_LOGGERS:
        emitter = logging.getLogger(name)
        if not any(isinstance(f, NoiseFilter) for f in emitter.filters):
            emitter.addFilter(NoiseFilter())
    for handler in logging.getLogger("ray.data").handlers:
        if _is_file_handler(handler):
            continue
        handler.setLevel(max(handler.level, logging.WARNING))
        if not any(isinstance(f, NoiseFilter) for f in handler.filters):
            handler.addFilter(NoiseFilter())


def quiet_ray_data(verbose: bool) -> None:
    """After ``ray.init``: our bar replaces Ray Data's bars; in quiet mode its issue detectors are off."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if verbose:
        return
    detectors = getattr(ctx, "issue_detectors_config", None)
    if detectors is not None and hasattr(detectors, "detectors"):
        detectors.detectors = []


@contextmanager
def filtered_stderr(enabled: bool = True) -> Iterator[None]:
    """While inside, lines written to file descriptor 2 (by Python or Ray's C++ core) that are
    :data:`NOISE` are dropped; all other bytes reach the real stderr unchanged and in order.

    Used around a Ray Data pipeline in quiet mode, because the one native warning it prints cannot be
    turned off by any Ray setting short of disabling actor restarts. Does nothing when ``enabled`` is
    False or fd 2 cannot be redirected.
    """
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        yield
        return

    def pump() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not is_noise(line.decode("utf-8", "replace")):
                        os.write(saved, line + b"\n")
        if pending and not is_noise(pending.decode("utf-8", "replace")):
            os.write(saved, pending)

    thread = threading.Thread(target=pump, name="embedeval stderr filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)   # closes our pipe's last write end on fd 2: the pump sees EOF and drains
        thread.join(timeout=5.0)
        if not thread.is_alive():   # else a child process still holds the pipe: the pump keeps `saved`
            os.close(saved)
