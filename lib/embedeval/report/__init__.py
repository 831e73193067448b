"""The report stage: a run's scores table -> leaderboard.md, report.html, plots/*.png, diff.md.

Also the run inventory behind ``embedeval runs list`` / ``runs show RUN``.
"""

from embedeval.report.build import ReportPaths, build_report
from embedeval.report.runs import RunSummary, format_run_list, list_runs, show_run
from embedeval.report.scores import ReportError
from embedeval.report.settings import HeadlineMetric, ReportSettings

__all__ = [
    "HeadlineMetric",
    "ReportError",
    "ReportPaths",
    "ReportSettings",
    "RunSummary",
    "build_report",
    "format_run_list",
    "list_runs",
    "show_run",
]
