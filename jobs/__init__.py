"""Ray job entry points: `ray job submit --working-dir . -- python -m jobs.<name> --config CONFIG`.

Each file only parses arguments and calls the library (lib/embedeval).
"""
