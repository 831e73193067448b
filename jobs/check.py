"""Check a cluster before a long run: can every node's workers import embedeval and reach the root?

    ray job submit --working-dir . -- python -m jobs.check --config configs/my.yaml

Prints one line per node and exits 1 if any node fails (a worker without S3 credentials is the usual cause:
workers use their own environment / instance role / Kubernetes secret, never the job's runtime_env).
"""

from __future__ import annotations

import argparse
import sys

from jobs._entry import add_library_to_path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.check", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the run config whose root and s3 settings to check")
    parser.add_argument("--root", default=None, help="overrides root in the config")
    args = parser.parse_args(argv)
    add_library_to_path()
    from embedeval.cli import report_user_error
    from embedeval.config import load_config
    from embedeval.errors import EmbedevalError
    from embedeval.pipeline.ray_runtime import check_cluster

    try:
        config = load_config(args.config, {"root": args.root})
        checks = check_cluster(config)
    except EmbedevalError as exc:
        return report_user_error(exc)
    print(f"cluster check of {len(checks)} node(s), root {config.root}:")
    for check in checks:
        print(f"  {'ok  ' if check.ok else 'FAIL'} {check.line()}")
    if "://" not in config.root and len(checks) > 1:
        print("  note: root is a local path, so each node wrote to its own disk; use an s3:// root on a cluster")
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"embedeval: error: {len(failed)} node(s) failed the check; see README 'Running on a cluster'",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    status = main(sys.argv[1:])
    from embedeval.cli import exit_now   # importable now: main() put the library on the path

    exit_now(status)
