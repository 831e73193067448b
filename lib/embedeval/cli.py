"""The `embedeval` command: parse arguments, call the library, exit with a clear status.

Exit codes: 0 success, 1 the job failed, 2 bad usage or config, 130 interrupted. A failure the user can
act on is an :class:`~embedeval.errors.EmbedevalError`: one line on stderr, and its class's ``exit_code``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

from embedeval.demo.defaults import DEMO_ITEMS
from embedeval.errors import EmbedevalError, one_line

EXAMPLES = {
    "main": """\
        examples:
          embedeval demo --root ./demo-output          # corpus + embed + score + report, all local
          embedeval run --config configs/demo.yaml     # the three jobs from one config
          embedeval embed --config my.yaml --run-id nightly-2026-11-23
          embedeval score --config my.yaml --run-id nightly-2026-11-23
          embedeval report --config my.yaml --run-id nightly-2026-11-23 --previous nightly-2026-11-22
          embedeval runs list --root s3://bucket/embedeval
        """,
    "demo": """\
        examples:
          embedeval demo --root ./demo-output
          embedeval demo --root ./demo-output --items 2000 --models builtin:pixelstats torchvision:resnet50:random
        """,
    "embed": """\
        examples:
          embedeval embed --config my.yaml
          embedeval embed --config my.yaml --run-id r1     # rerun with the same id resumes a killed run
        """,
    "score": """\
        examples:
          embedeval score --config my.yaml --run-id r1
        """,
    "report": """\
        examples:
          embedeval report --config my.yaml --run-id r2 --previous r1
        """,
    "run": """\
        examples:
          embedeval run --config my.yaml                   # embed, score, report; diff against the last run
        """,
    "runs": """\
        examples:
          embedeval runs list --root ./demo-output
          embedeval runs show demo --root ./demo-output
        """,
}


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="embedeval", formatter_class=fmt,
        description="Which embedding model's notion of 'similar' matches human judgement on your catalogue.",
        epilog=textwrap.dedent(EXAMPLES["main"]))
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show everything: debug logging, per-unit timings, all of Ray's console output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # -v also after the command (`embedeval demo -v`); SUPPRESS keeps a -v given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="show everything (same as -v before the command)")

    d = sub.add_parser("demo", help="write the demo corpus and run embed, score and report on it",
                       formatter_class=fmt, parents=[verbose], epilog=textwrap.dedent(EXAMPLES["demo"]))
    d.add_argument("--root", default="./demo-output", help="folder for the corpus and all outputs")
    d.add_argument("--items", type=int, default=DEMO_ITEMS, help=f"catalogue items to generate (default {DEMO_ITEMS})")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--run-id", default="demo")
    d.add_argument("--models", nargs="+", default=None, help="model specs (default: the demo's three)")
    d.add_argument("--skip-report", action="store_true")

    for name, helptext in (("embed", "embed a manifest's items with every configured model"),
                           ("score", "score a run's committed embeddings"),
                           ("report", "write leaderboard, report.html, plots and diff for a run"),
                           ("run", "embed, score and report from one config")):
        s = sub.add_parser(name, help=helptext, formatter_class=fmt, parents=[verbose],
                           epilog=textwrap.dedent(EXAMPLES[name]))
        s.add_argument("--config", required=True, help="YAML run config (see README 'Configuration')")
        s.add_argument("--run-id", default=None, help="overrides run_id in the config")
        s.add_argument("--root", default=None, help="overrides root in the config")
        if name in ("report", "run"):
            s.add_argument("--previous", default=None, help="run id to diff against (default: the latest earlier run)")

    r = sub.add_parser("runs", help="browse the runs under a root", formatter_class=fmt,
                       epilog=textwrap.dedent(EXAMPLES["runs"]))
    rsub = r.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    rl = rsub.add_parser("list", help="one line per run")
    rl.add_argument("--root", required=True)
    rs = rsub.add_parser("show", help="what a run holds")
    rs.add_argument("run_id")
    rs.add_argument("--root", required=True)
    return p


def _load(args: argparse.Namespace):  # noqa: ANN202
    from embedeval.config import load_config

    overrides: dict[str, Any] = {"run_id": args.run_id, "root": args.root}
    if getattr(args, "previous", None):
        overrides["previous_run_id"] = args.previous
    return load_config(args.config, overrides)


def _console(args: argparse.Namespace):  # noqa: ANN202
    """The command's console: progress bars on a terminal, a line every few seconds elsewhere."""
    from embedeval.pipeline.progress import Progress

    return Progress(verbose=args.verbose)


def cmd_embed(args: argparse.Namespace) -> int:
    from embedeval.pipeline.embed import embed_run

    config = _load(args)
    console = _console(args)
    summary = embed_run(config, progress=console, echo=console.echo)
    console.echo(f"embeddings: {summary.root}/runs/{summary.run_id}/embeddings")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from embedeval.workflow import score_from_config

    score_from_config(_load(args), progress=_console(args))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from embedeval.workflow import report_from_config

    report_from_config(_load(args), progress=_console(args))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from embedeval.workflow import run_all

    run_all(_load(args), progress=_console(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from embedeval.workflow import run_demo

    run_demo(Path(args.root), items=args.items, seed=args.seed, run_id=args.run_id, models=args.models,
             report=not args.skip_report, progress=_console(args))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from embedeval.io.storage import Storage
    from embedeval.report.runs import format_run_list, list_runs, show_run

    storage = Storage(args.root)
    if args.runs_command == "list":
        runs = list_runs(storage)
        print(format_run_list(runs) if runs else f"no runs under {storage.root}")
    else:
        print(show_run(storage, args.run_id))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo, "embed": cmd_embed, "score": cmd_score, "report": cmd_report, "run": cmd_run,
    "runs": cmd_runs,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (see the module docstring).

    A user error (any :class:`~embedeval.errors.EmbedevalError`) is printed as one line on stderr,
    ``embedeval: error: <message>``, and the status is the error class's ``exit_code``; with
    ``--verbose`` its traceback is logged first. Any other exception is a bug and propagates.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except EmbedevalError as exc:
        return report_user_error(exc, verbose=args.verbose)
    except KeyboardInterrupt:
        print("embedeval: interrupted; rerun with the same --run-id to resume", file=sys.stderr)
        return 130


def report_user_error(exc: EmbedevalError, verbose: bool = False) -> int:
    """Print ``exc`` as one ``embedeval: error:`` line on stderr and return its class's exit code.

    With ``verbose`` the traceback is logged (at DEBUG) before the line, for a bug report.
    """
    if verbose:
        logging.getLogger("embedeval").debug("user error", exc_info=exc)
    print(f"embedeval: error: {one_line(exc)}", file=sys.stderr)
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
