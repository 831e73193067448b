"""``embedeval report``: scores table -> leaderboard.md, report.html, plots/*.png, diff.md under
``runs/<run_id>/report/``.

With ``scores/comparisons.parquet`` (the paired model comparison) the leaderboard marks models not
separable from a column's best (≈), both pages gain a pairwise table and the plots a P(A > B) matrix.
Reads only the run's committed ``scores/`` files (and the previous run's scores table for the diff) through
:class:`Storage`, so it works the same on a local folder and on s3://. Everything is rendered in memory
first and written at the end, by the commit protocol of every stage (:mod:`embedeval.io.commit`): the
report's marker is removed, the plots folder cleared (a rebuilt report never keeps a stale plot), the files
written, and ``report/_COMMITTED.json`` listing them written last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from embedeval.io.commit import commit, uncommit, write_file
from embedeval.io.layout import RunLayout
from embedeval.io.storage import Storage
from embedeval.report.comparisons import load_comparisons, mark_near_best, pairwise_table, plot_p_better
from embedeval.report.diff import (RunDiff, diff_scores, diff_sections, diff_title, like_for_like_sections,
                                   regression_lines)
from embedeval.report.examples import ImageLoader, example_plots
from embedeval.report.html import HtmlInputs, render_html
from embedeval.report.leaderboard import build_leaderboard, leaderboard_markdown
from embedeval.report.plots import Style, score_plots
from embedeval.report.runs import previous_run, run_time
from embedeval.report.scores import load_scores, load_scores_at
from embedeval.report.settings import ReportSettings
from embedeval.report.tables import Section, sections_markdown
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
    #: one line per score that got worse beyond its intervals on the items both runs share
    regressions: list[str] = field(default_factory=list)
    #: None when the comparison was like for like, else why it could not be (no previous run, no panel...)
    not_like_for_like: str | None = None


def compute_diff(storage: Storage, run_id: str, rows: list[ScoreRow], previous_run_id: str | None) -> RunDiff:
    """Diff against the given run, or the latest earlier one (see :func:`embedeval.report.runs.previous_run`)."""
    if previous_run_id is not None:
        how = "given explicitly"
    else:
        previous_run_id, how = previous_run(storage, run_id)
        how = "chosen automatically as " + how
    if previous_run_id is None:
        return RunDiff(run_id, None, how)
    from embedeval.report.paired_diff import paired_changes_between

    paired = paired_changes_between(storage, RunLayout(run_id), RunLayout(previous_run_id))
    return diff_scores(rows, load_scores(storage, previous_run_id), run_id, previous_run_id, how, paired)


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
    like, why_not, like_sections = like_for_like(storage, diff)
    sections[1:1] = like_sections
    title = diff_title(diff)
    page = render_html(HtmlInputs(settings.title, run_id, run_date, generated, board, rows, plots, examples, notes,
                                  title, sections, settings.include_tidy_table, pairwise))

    layout = RunLayout(run_id)
    uncommit(storage, layout.report)
    storage.delete_dir(layout.plots)
    files = [write_file(storage, layout.plot(p.name), p.png) for p in plots + examples]
    files.append(write_file(storage, layout.report_file("leaderboard.md"),
                            leaderboard_markdown(board, run_id, run_date, generated, pairwise).encode()))
    files.append(write_file(storage, layout.report_file("diff.md"),
                            (f"# {title}\n\n" + sections_markdown(sections)).encode()))
    files.append(write_file(storage, layout.report_file("report.html"), page.encode()))
    commit(storage, layout.report, files, run_id=run_id, previous_run_id=diff.previous_run_id)
    uri = storage.uri
    return ReportPaths(uri(layout.report_file("leaderboard.md")), uri(layout.report_file("report.html")),
                       uri(layout.report_file("diff.md")), [uri(layout.plot(p.name)) for p in plots + examples],
                       diff.previous_run_id, board.notes + notes,
                       regression_lines(like) if like is not None else [], why_not)


def like_for_like(storage: Storage, diff: RunDiff) -> tuple[RunDiff | None, str | None, list[Section]]:
    """The comparison on the items both runs share (:mod:`embedeval.scoring.panel`), why there is none,
    and its diff.md sections. With the same ids in both runs the ordinary diff is like for like."""
    from embedeval.scoring.panel import panel_layout, read_panel

    if diff.previous_run_id is None:
        return None, "there is no previous run", []
    info = read_panel(storage, diff.run_id, diff.previous_run_id)
    if info is None:
        why = (f"no common panel was scored against {diff.previous_run_id} (set score.common_panel, or run with "
               f"--fail-on-regression)")
        return None, why, like_for_like_sections(None, 0, 0, 0, why)
    if info.reason:
        return None, info.reason, like_for_like_sections(None, 0, 0, 0, info.reason)
    if info.identical:
        like = diff
    else:
        from embedeval.report.paired_diff import paired_changes_between

        now, before = (panel_layout(diff.run_id, diff.previous_run_id, r) for r in (diff.run_id, diff.previous_run_id))
        paired = paired_changes_between(storage, now, before)
        like = diff_scores(load_scores_at(storage, now), load_scores_at(storage, before), diff.run_id,
                           diff.previous_run_id, diff.how_chosen, paired)
    return like, None, like_for_like_sections(like, info.shared, info.current_items, info.previous_items, None)
