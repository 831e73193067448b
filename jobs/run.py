"""Ray job entry point for `embedeval run`:

    ray job submit --working-dir . -- python -m jobs.run --config configs/demo.yaml [--run-id ID]
"""

from __future__ import annotations

import sys

from jobs._entry import run_cli

if __name__ == "__main__":
    run_cli("run", sys.argv[1:])
