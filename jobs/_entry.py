"""Shared by the job files: make the library importable from the job's working dir, then run the CLI."""

from __future__ import annotations

import sys
from pathlib import Path


def run_cli(command: str, argv: list[str]) -> int:
    lib = Path(__file__).resolve().parent.parent / "lib"
    if lib.is_dir() and str(lib) not in sys.path:
        # Under `ray job submit --working-dir .` the package is not installed; its source travels along.
        sys.path.insert(0, str(lib))
    from embedeval.cli import main

    return main([command, *argv])
