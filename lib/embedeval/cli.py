"""The `embedeval` command: parse arguments, call the library, exit with a clear status.

Exit codes: 0 success, 1 the job failed, 2 bad usage or config, 3 the run's lease is held by another
live process, 130 interrupted. A failure the user can
act on is an :class:`~embedeval.errors.EmbedevalError`: one line on stderr, and its class's ``exit_code``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from embedeval.demo.defaults import DEMO_GROWTH, DEMO_ITEMS
from embedeval.errors import EXIT_REGRESSION, EmbedevalError, one_line

if TYPE_CHECKING:
    from embedeval.report.build import ReportPaths
    from embedeval.io.storage import Storage

EXAMPLES = {
    "main": """\
        examples:
          embedeval demo --root ./demo-output          # corpus + embed + score + report, all local
          embedeval run --config configs/demo.yaml     # the three jobs from one config
          embedeval embed --config my.yaml --run-id nightly-2026-11-23
          embedeval score --config my.yaml --run-id nightly-2026-11-23
          embedeval report --config my.yaml --run-id nightly-2026-11-23 --previous nightly-2026-11-22
          embedeval runs list --root s3://bucket/embedeval
          embedeval import karpathy dataset_coco.json --images coco --out coco/manifest.parquet
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
    "import": """\
        Writes a manifest (Parquet) from a layout you already have; then point a run config's
        `manifest:` at it. Media paths are written relative to the manifest's folder when they lie
        inside it, else absolute (pass --allowed-root and list the same root under allowed_roots).
        s3:// paths use the AWS environment (EMBEDEVAL_S3_ENDPOINT_URL for other servers).

        examples:
          embedeval import karpathy data/flickr30k/dataset_flickr30k.json --images data/flickr30k/images \\
              --out data/flickr30k/manifest.parquet
          embedeval import karpathy coco/dataset_coco.json --images coco --split test --out coco/test5k.parquet
          embedeval import karpathy coco/dataset_coco.json --images coco --split test --limit 1000 \\
              --out coco/test1k.parquet                      # the first of the five 1k folds
          embedeval import sketchy data/Sketchy --unseen data/sketchy_unseen.txt --out data/Sketchy/manifest.parquet
          embedeval import tu-berlin data/TU-Berlin/png --unseen unseen.txt --out data/TU-Berlin/manifest.parquet
          embedeval import imagefolder /mnt/photos --out ./catalogue/manifest.parquet --allowed-root /mnt/photos
        """,
    "runs": """\
        examples:
          embedeval runs list --root ./demo-output
          embedeval runs show demo --root ./demo-output
          embedeval runs prune --root s3://bucket/embedeval --keep 14            # dry run: what would go
          embedeval runs prune --root s3://bucket/embedeval --keep 14 --older-than 30d --apply
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
    d.add_argument("--grow", type=int, default=None,
                   help=f"items the second night adds (default {DEMO_GROWTH} of {DEMO_ITEMS}, the same share "
                        "of --items; 0: one night, no diff)")
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
        s.add_argument("--force", action="store_true",
                       help="take over the run's lease even if it has not expired (only if its holder is dead)")
        if name in ("report", "run"):
            s.add_argument("--previous", default=None, help="run id to diff against (default: the latest earlier run)")
            s.add_argument("--fail-on-regression", action="store_true",
                           help=f"exit {EXIT_REGRESSION} when a score got worse beyond its intervals since the previous "
                                "run, compared on the items both runs share (run: scores that common panel too)")

    _add_import_parser(sub, fmt)

    r = sub.add_parser("runs", help="browse the runs under a root", formatter_class=fmt,
                       epilog=textwrap.dedent(EXAMPLES["runs"]))
    rsub = r.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    rl = rsub.add_parser("list", help="one line per run")
    rl.add_argument("--root", required=True)
    rs = rsub.add_parser("show", help="what a run holds")
    rs.add_argument("run_id")
    rs.add_argument("--root", required=True)
    rp = rsub.add_parser("prune", help="delete old runs and unused cache entries (dry run unless --apply)")
    rp.add_argument("--root", required=True)
    rp.add_argument("--keep", type=int, default=None, help="keep the N newest runs")
    rp.add_argument("--older-than", default=None, metavar="AGE",
                    help="delete only runs older than AGE (30d, 12h, 90m, 3600s)")
    rp.add_argument("--apply", action="store_true", help="delete (default: print what would be freed)")
    rp.add_argument("--no-cache-sweep", action="store_true", help="leave the embedding cache alone")
    return p


def _add_import_parser(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    epilog = textwrap.dedent(EXAMPLES["import"])
    i = sub.add_parser("import", help="write a manifest from Karpathy JSON, Sketchy, TU-Berlin or ImageFolder",
                       formatter_class=fmt, epilog=epilog)
    isub = i.add_subparsers(dest="layout", required=True, metavar="LAYOUT")

    def layout(name: str, helptext: str, source: str) -> argparse.ArgumentParser:
        lp = isub.add_parser(name, help=helptext, formatter_class=fmt, epilog=epilog)
        lp.add_argument("source", help=source)
        lp.add_argument("--out", required=True, help="the manifest to write (.parquet, local or s3://)")
        lp.add_argument("--allowed-root", action="append", default=[], metavar="ROOT",
                        help="a root outside the manifest's folder that media may lie in (repeatable)")
        return lp

    k = layout("karpathy", "Flickr30K / COCO Karpathy-split JSON", "dataset_flickr30k.json or dataset_coco.json")
    k.add_argument("--images", required=True,
                   help="folder of the images (COCO: the folder holding train2014/, val2014/)")
    k.add_argument("--split", nargs="+", default=None, choices=["train", "val", "test", "restval"],
                   help="keep only these Karpathy splits (default: all; manifest split: test -> test, others -> train)")
    k.add_argument("--offset", type=int, default=0, help="skip this many images (after --split)")
    k.add_argument("--limit", type=int, default=None, help="keep at most this many images (after --offset)")
    sk = layout("sketchy", "Sketchy / Sketchy-Extended photo/ and sketch/ folders",
                "the folder holding photo/ and sketch/")
    sk.add_argument("--unseen", default=None, help="text file, one unseen class per line -> class_split")
    sk.add_argument("--variant", default="tx_000000000000",
                    help="augmentation folder under photo/ and sketch/ (default tx_000000000000)")
    tu = layout("tu-berlin", "TU-Berlin <root>/<class>/<n>.png sketches", "the folder of class folders (png/)")
    tu.add_argument("--unseen", default=None, help="text file, one unseen class per line -> class_split")
    im = layout("imagefolder", "<root>/<class>/<file> (class folders as labels)", "the folder of class folders")
    im.add_argument("--column", choices=["image", "sketch"], default="image", help="media column (default image)")


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
    from embedeval.workflow import run_lease

    config = _load(args)
    console = _console(args)
    with run_lease(config, purpose="embed", force=args.force, echo=console.echo):
        summary = embed_run(config, progress=console, echo=console.echo)
    console.echo(f"embeddings: {summary.embeddings_uri}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from embedeval.workflow import run_lease, score_from_config

    config = _load(args)
    console = _console(args)
    with run_lease(config, purpose="score", force=args.force, echo=console.echo):
        score_from_config(config, progress=console)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from embedeval.workflow import report_from_config, run_lease

    config = _load(args)
    console = _console(args)
    with run_lease(config, purpose="report", force=args.force, uses_ray=False, echo=console.echo):
        paths = report_from_config(config, progress=console)
    return _regression_status(paths, args.fail_on_regression, console.echo)


def cmd_run(args: argparse.Namespace) -> int:
    from embedeval.workflow import run_all

    config = _load(args)
    if args.fail_on_regression:
        config = config.model_copy(update={"score": config.score.model_copy(update={"common_panel": True})})
    console = _console(args)
    paths = run_all(config, force=args.force, progress=console)
    return _regression_status(paths, args.fail_on_regression, console.echo)


def _regression_status(paths: ReportPaths, fail_on_regression: bool, echo: Callable[[str], None] = print) -> int:
    """Print the like-for-like verdict; :data:`EXIT_REGRESSION` when asked to and a score regressed."""
    regressions = paths.regressions
    if paths.not_like_for_like and fail_on_regression:
        echo(f"regressions: not checked: {paths.not_like_for_like}")
    elif not paths.not_like_for_like:
        echo(f"regressions (like for like, since {paths.previous_run_id}): {len(regressions)}")
        for line in regressions:
            echo(f"  regression: {line}")
    return EXIT_REGRESSION if fail_on_regression and regressions else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from embedeval.workflow import run_demo

    run_demo(Path(args.root), items=args.items, seed=args.seed, run_id=args.run_id, models=args.models,
             report=not args.skip_report, progress=_console(args), grow=args.grow)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from embedeval.io import importers

    common = {"allowed_roots": args.allowed_root}
    if args.layout == "karpathy":
        result = importers.import_karpathy(args.source, args.images, args.out, splits=args.split,
                                           limit=args.limit, offset=args.offset, **common)
    elif args.layout == "sketchy":
        result = importers.import_sketchy(args.source, args.out, unseen=args.unseen, variant=args.variant, **common)
    elif args.layout == "tu-berlin":
        result = importers.import_tu_berlin(args.source, args.out, unseen=args.unseen, **common)
    else:
        result = importers.import_imagefolder(args.source, args.out, column=args.column, **common)
    print("\n".join(result.lines()))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from embedeval.io.storage import Storage
    from embedeval.report.runs import format_run_list, list_runs, show_run

    storage = Storage(args.root)
    if args.runs_command == "prune":
        return _prune(storage, args)
    if args.runs_command == "list":
        runs = list_runs(storage)
        print(format_run_list(runs) if runs else f"no runs under {storage.root}")
    else:
        print(show_run(storage, args.run_id))
    return 0


def _prune(storage: Storage, args: argparse.Namespace) -> int:
    from embedeval.retention import apply_prune, human_bytes, parse_age, plan_prune

    older = parse_age(args.older_than) if args.older_than is not None else None
    plan = plan_prune(storage, keep=args.keep, older_than_s=older, sweep_cache=not args.no_cache_sweep)
    print("\n".join(plan.lines()))
    if args.apply:
        apply_prune(storage, plan)
    else:
        print(f"dry run: would free {human_bytes(plan.bytes_to_free)}; rerun with --apply to delete")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo, "embed": cmd_embed, "score": cmd_score, "report": cmd_report, "run": cmd_run,
    "runs": cmd_runs, "import": cmd_import,
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


def entry() -> None:
    """The ``embedeval`` console script: :func:`main`, then :func:`exit_now` with its status. An exception
    that is a bug propagates with its traceback."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once a command has returned: shut Ray down (when this process started
    or joined it), flush logging and the standard streams, then ``os._exit`` without Python's teardown.

    That teardown of the libraries a run has loaded (torch, torchvision, scipy, matplotlib) took about
    2.5 s of CPU after the work was done, on 2 cores, and nothing of ours needs it: when a command returns
    every file is written and closed and every lease released. The Ray job entry points (``jobs/``) end the
    same way: a job's exit status is what `ray job submit` and a CronJob see, and it must be the command's,
    not that of a library's teardown on a busy node.
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
