"""The report stage: a run's scores table -> leaderboard.md, report.html, plots/*.png, diff.md.

Also the run inventory behind ``embedeval runs list`` / ``runs show RUN``.

The names below are imported on first use (PEP 562): the config imports :mod:`embedeval.report.settings`,
and every Ray worker that unpickles a config would otherwise import matplotlib with the report builder.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedeval.report.build import ReportPaths, build_report
    from embedeval.report.runs import RunSummary, format_run_list, list_runs, show_run
    from embedeval.report.scores import ReportError
    from embedeval.report.settings import HeadlineMetric, ReportSettings

_WHERE = {
    "HeadlineMetric": "settings",
    "ReportError": "scores",
    "ReportPaths": "build",
    "ReportSettings": "settings",
    "RunSummary": "runs",
    "build_report": "build",
    "format_run_list": "runs",
    "list_runs": "runs",
    "show_run": "runs",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
