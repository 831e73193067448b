"""Ray job entry point for `embedeval embed`:

    ray job submit --working-dir . -- python -m jobs.embed --config configs/demo.yaml [--run-id ID]
"""

from __future__ import annotations

import sys

from jobs._entry import run_cli

if __name__ == "__main__":
    run_cli("embed", sys.argv[1:])
