"""Shared by the job files: make the library importable from the job's working dir, then run the CLI.

Under `ray job submit --working-dir .` the package is not installed; its source travels along under
lib/. The driver imports it from there; PYTHONPATH carries it to the workers of an in-process Ray (they
inherit this environment), and on a real cluster ensure_ray ships it to the workers as py_modules.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn


def add_library_to_path() -> None:
    lib = Path(__file__).resolve().parent.parent / "lib"
    if not (lib / "embedeval").is_dir():
        return
    if str(lib) not in sys.path:
        sys.path.insert(0, str(lib))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(lib) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(lib), *paths])


def run_cli(command: str, argv: list[str]) -> NoReturn:
    """Run ``embedeval COMMAND ARGV...`` and end the process with its exit status (``embedeval.cli.exit_now``:
    Ray shut down, streams flushed, no interpreter teardown), as the ``embedeval`` console script does."""
    add_library_to_path()
    from embedeval.cli import exit_now, main

    exit_now(main([command, *argv]))
