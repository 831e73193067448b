"""The base class of every error a user can act on, and how the command line shows one.

A user error is raised for something the user can fix (a config key, a manifest column, a missing
partition, unreachable storage, a model spec, a tag file...). Each concrete class lives in the module
that raises it and subclasses :class:`EmbedevalError` (plus ``ValueError`` or ``RuntimeError``, so
existing ``except ValueError`` code keeps working). The CLI and the Ray job entry points catch
:class:`EmbedevalError` once, print :func:`one_line` of it after ``embedeval: error:`` and exit with the
class's :attr:`EmbedevalError.exit_code`; anything else is a bug and keeps its traceback.

This module imports nothing from the rest of the package (nor anything heavy), so every module can
subclass it and the CLI can catch it before any command has been imported.
"""

from __future__ import annotations

#: The exit code of a job that failed because of what it found (missing files, bad data, storage).
EXIT_JOB_FAILED = 1
#: The exit code of bad usage or an unusable config (argparse uses it for bad arguments too).
EXIT_USAGE = 2
#: The exit code of a command refused because another live process holds the run's lease.
EXIT_LEASE_HELD = 3
#: The exit code of ``--fail-on-regression`` when a score got worse beyond its intervals on the items both
#: runs share (the run itself succeeded and wrote everything).
EXIT_REGRESSION = 10


class EmbedevalError(Exception):
    """An error the user can act on; its message names what is at fault and, where known, the remedy.

    Subclasses set :attr:`exit_code`: :data:`EXIT_USAGE` for bad usage or config, :data:`EXIT_JOB_FAILED`
    (the default) for a job that could not finish.
    """

    exit_code: int = EXIT_JOB_FAILED


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line: its lines stripped and joined with "; " (after a trailing ":", a space).

    Falls back to the class name when the message is empty, so the user always reads something.
    """
    out = ""
    for part in (line.strip() for line in str(exc).splitlines()):
        if not part:
            continue
        out = part if not out else out + (" " if out.endswith(":") else "; ") + part
    return out or type(exc).__name__
