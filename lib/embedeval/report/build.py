"""``embedeval report``: scores table -> leaderboard.md, report.html, plots/*.png, diff.md under
``runs/<run_id>/report/``.

With ``scores/comparisons.parquet`` (the paired model comparison) the leaderboard marks models not
separable from a column's best (≈), both pages gain a pairwise table and the plots a P(A > B) matrix.
Reads only the run's ``scores/`` files (and the previous run's scores table for the diff) through
:class:`Storage`, so it works the same on a local folder and on s3://. Everything is rendered in memory
first and written at the end; the plots folder is cleared before writing so a rebuilt report never keeps a
stale plot from an earlier build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from embedeval.io.storage import Storage
from embedeval.report.comparisons import load_comparisons, mark_near_best, pairwise_table, plot_p_better
from embedeval.report.diff import RunDiff, diff_scores, diff_sections, diff_title
from embedeval.report.examples import ImageLoader, example_plots
from embedeval.report.html import HtmlInputs, render_html
from embedeval.report.leaderboard import build_leaderboard, leaderboard_markdown
from embedeval.report.plots import Style, score_plots
from embedeval.report.runs import previous_run, run_time
from embedeval.report.scores import load_scores
from embedeval.report.settings import ReportSettings
from embedeval.report.tables import sections_markdown
from embedeval.scoring.schema import ScoreRow


@dataclass
class ReportPaths:
    """URIs of everything one report build wrote (s3://... or absolute local paths)."""

    leaderboard: str
    html: str
    diff: str
    plots: list[str] = field(default_factory=list)
    previous_run_id: str | None = None
    notes: list[str] = field(default_factory=list)      # plots skipped and why, fallbacks taken


def report_dir(run_id: str) -> str:
    return f"runs/{run_id}/report"


def compute_diff(storage: Storage, run_id: str, rows: list[ScoreRow], previous_run_id: str | None) -> RunDiff:
    """Diff against the given run, or the latest earlier one (see :func:`embedeval.report.runs.previous_run`)."""
    if previous_run_id is not None:
        how = "given explicitly"
    else:
        previous_run_id, how = previous_run(storage, run_id)
        how = "chosen automatically as " + how
    if previous_run_id is None:
        return RunDiff(run_id, None, how)
    return diff_scores(rows, load_scores(storage, previous_run_id), run_id, previous_run_id, how)


def build_report(storage: Storage, run_id: str, *, previous_run_id: str | None = None,
                 settings: ReportSettings | None = None, image_loader: ImageLoader | None = None) -> ReportPaths:
    """Build and write the report of ``run_id``; returns where each file went.

    ``previous_run_id`` None means: diff against the latest earlier run that has scores (none -> diff.md
    says so). ``image_loader(id) -> bytes | None`` supplies images for prototype/ambiguity thumbnails;
    without it those plots are skipped with a note. Raises :class:`~embedeval.report.scores.ReportError`
    when the run (or the explicitly named previous run) has no scores table.
    """
    settings = settings or ReportSettings()
    rows = load_scores(storage, run_id)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run_date = run_time(storage, run_id).text()

    board = build_leaderboard(rows, settings.headline_metrics())
    diff = compute_diff(storage, run_id, rows, previous_run_id)
    comparisons = load_comparisons(storage, run_id)
    pairwise = None
    if comparisons is not None:
        mark_near_best(board, comparisons)
        pairwise = pairwise_table(board, comparisons)

    style = Style(board.models, board.random, settings.dpi)
    plots, notes = score_plots(rows, style, settings)
    if comparisons is not None:
        matrix = plot_p_better(board, comparisons, style)
        if matrix is not None:
            plots.append(matrix)
        else:
            notes.append("paired comparison plot: no headline column has two models with paired intervals")
    examples, example_notes = example_plots(storage, run_id, style, image_loader, settings.max_prototypes,
                                            settings.max_thumbnails, settings.max_ambiguity, settings.thumbnail_px)
    notes += example_notes

    sections = diff_sections(diff)
    title = diff_title(diff)
    page = render_html(HtmlInputs(settings.title, run_id, run_date, generated, board, rows, plots, examples, notes,
                                  title, sections, settings.include_tidy_table, pairwise))

    out = report_dir(run_id)
    storage.delete_dir(f"{out}/plots")
    plot_uris = []
    for p in plots + examples:
        storage.write_bytes(f"{out}/plots/{p.name}.png", p.png)
        plot_uris.append(storage.uri(f"{out}/plots/{p.name}.png"))
    storage.write_bytes(f"{out}/leaderboard.md", leaderboard_markdown(board, run_id, run_date, generated, pairwise).encode())
    storage.write_bytes(f"{out}/diff.md", (f"# {title}\n\n" + sections_markdown(sections)).encode())
    storage.write_bytes(f"{out}/report.html", page.encode())
    return ReportPaths(storage.uri(f"{out}/leaderboard.md"), storage.uri(f"{out}/report.html"),
                       storage.uri(f"{out}/diff.md"), plot_uris, diff.previous_run_id, board.notes + notes)
