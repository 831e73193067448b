"""The score-task registry: every analysis the score stage can run, declared in one place.

A task is one module that exposes a :class:`ScoreTask` (conventionally ``SCORE_TASK``). The task says
what it needs (modalities, manifest columns), how it turns one model's embeddings into resumable
:class:`ScoreUnit` s, which options it takes (a pydantic model, configured under ``score.options.<name>``),
and what the report shows of it (default leaderboard columns, plot functions). The score job loops over
the registry; the report asks it for headline columns and plots. Adding a metric is one module plus one
line: an entry in :data:`BUILTIN_TASKS` for a task shipped with embedeval, or an entry in the run config's
``score.plugins`` (a module path) for a task of your own.

Entries are imported lazily by module path, so importing the registry imports no task code, and a
plugin that fails to import is a one-line :class:`TaskRegistryError` naming it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from embedeval.errors import EmbedevalError

if TYPE_CHECKING:
    from embedeval.scoring.context import CatalogueView, ModalityEmbeddings, TaskContext
    from embedeval.scoring.parts import UnitResult
    from embedeval.scoring.settings import ScoreSettings
    from embedeval.scoring.tags import TagVectors

#: Built-in tasks in report order: name -> "module:attribute" of its :class:`ScoreTask`.
BUILTIN_TASKS: dict[str, str] = {
    "corrembed": "embedeval.scoring.corrembed:SCORE_TASK",
    "rankability": "embedeval.scoring.rankability:SCORE_TASK",
    "retrieval": "embedeval.scoring.retrieval:SCORE_TASK",
    "prototypes": "embedeval.scoring.prototypes:SCORE_TASK",
    "modality_gap": "embedeval.scoring.modality_gap:SCORE_TASK",
    "zeroshot": "embedeval.scoring.zeroshot:SCORE_TASK",
    "probes": "embedeval.scoring.probes:SCORE_TASK",
}

UnitRun = Callable[["TaskContext", "dict[str, ModalityEmbeddings]", "list[TagVectors] | None"], "UnitResult"]


class TaskRegistryError(EmbedevalError, ValueError):
    """An unknown task name, a plugin that does not import or declares no task, or two tasks of one name."""


@dataclass(frozen=True)
class ScoreUnit:
    """One resumable piece of the score stage: a task on a target, with the modalities it reads.

    ``run(ctx, embeddings, tag_vectors)`` gets the prepared embeddings of ``modalities`` (by name) and
    the catalogue's tag vectors (None when the manifest has no tags or no task asked for them).
    """

    task: str
    target: str
    modalities: tuple[str, ...]
    run: UnitRun

    @property
    def key(self) -> str:
        return f"{self.task}/{self.target}"


@dataclass(frozen=True)
class PlanInputs:
    """What a task sees when it plans one model's units."""

    settings: ScoreSettings
    modalities: frozenset[str]          # the model's committed modalities
    catalogue: CatalogueView            # manifest columns (labels, attributes, splits, tags)
    has_tags: bool                      # tag vectors were built (the manifest has tags)

    def options(self, task: str) -> Any:
        """The task's validated options (``score.options.<task>``), or None when it declares none."""
        return self.settings.options_for(task)


@dataclass(frozen=True)
class ScoreTask:
    """A score task's declaration.

    - ``plan(inputs) -> [ScoreUnit]``: the units for one model (empty when its modalities or the
      manifest's columns do not allow the task; a unit may also record a 'skipped' row that says why).
    - ``modalities`` / ``columns``: what it reads, for ``embedeval tasks`` and the docs.
    - ``options``: a pydantic model of its own settings, read from ``score.options.<name>``.
    - ``uses_tags``: the job builds tag vectors when an enabled task says so.
    - ``headline``: default leaderboard columns, as :class:`embedeval.report.settings.HeadlineMetric`
      fields (``k_setting`` names a report setting that gives k, e.g. ``corr_knn_k``).
    - ``plots``: ``"module:function"`` names, each ``fn(rows, style, report_settings) -> (plots, notes)``,
      called by the report with this run's rows (imported only when a report is built).
    - ``lower_is_better`` / ``no_direction``: metrics where a fall is an improvement, or where neither
      way is better (controls, gaps); every other metric is better higher. The regression signal uses it.
    """

    name: str
    plan: Callable[[PlanInputs], list[ScoreUnit]]
    description: str
    modalities: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    options: type[BaseModel] | None = None
    uses_tags: bool = False
    headline: tuple[dict[str, Any], ...] = ()
    plots: tuple[str, ...] = field(default_factory=tuple)
    lower_is_better: tuple[str, ...] = ()
    no_direction: tuple[str, ...] = ()

    def direction(self, metric: str) -> int:
        """+1 when higher is better, -1 when lower is, 0 when neither (never a regression)."""
        if metric in self.no_direction or metric == "failed":
            return 0
        return -1 if metric in self.lower_is_better else 1


_registered: dict[str, ScoreTask] = {}


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is the user's to fix
        raise TaskRegistryError(f"score task module {module!r} does not import: {type(exc).__name__}: {exc}") from exc
    if not attr:
        return obj
    try:
        return getattr(obj, attr)
    except AttributeError:
        raise TaskRegistryError(f"{module!r} has no {attr!r}") from None


def register_task(task: ScoreTask, *, replace: bool = False) -> ScoreTask:
    """Add a task to the registry (for plugins and tests). A second task of one name is an error unless
    ``replace`` (re-importing a plugin registers the same object again, which is allowed)."""
    if not isinstance(task, ScoreTask):
        raise TaskRegistryError(f"register_task needs a ScoreTask, got {type(task).__name__}")
    if task.name in BUILTIN_TASKS and not replace:
        raise TaskRegistryError(f"{task.name!r} is a built-in score task; choose another name")
    known = _registered.get(task.name)
    if known is not None and known is not task and not replace:
        raise TaskRegistryError(f"two score tasks are named {task.name!r}")
    _registered[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a registered (non built-in) task; for tests."""
    _registered.pop(name, None)


def load_plugins(modules: Iterable[str]) -> list[ScoreTask]:
    """Import each plugin module and register what it declares (``SCORE_TASK`` or ``SCORE_TASKS``)."""
    found: list[ScoreTask] = []
    for name in modules:
        module = _resolve(name)
        tasks = getattr(module, "SCORE_TASKS", None) or ([module.SCORE_TASK] if hasattr(module, "SCORE_TASK") else [])
        if not tasks:
            raise TaskRegistryError(f"plugin {name!r} declares no SCORE_TASK (or SCORE_TASKS list)")
        for task in tasks:
            found.append(register_task(task))
    return found


def task_names() -> list[str]:
    """Every known task name: built-ins in report order, then registered ones in registration order."""
    return list(BUILTIN_TASKS) + [n for n in _registered if n not in BUILTIN_TASKS]


def get_task(name: str) -> ScoreTask:
    if name in _registered:
        return _registered[name]
    ref = BUILTIN_TASKS.get(name)
    if ref is None:
        raise TaskRegistryError(f"unknown score task {name!r}; known: {', '.join(task_names())} "
                                f"(a task of your own goes in score.plugins)")
    task = _resolve(ref)
    if not isinstance(task, ScoreTask) or task.name != name:
        raise TaskRegistryError(f"{ref} is not the ScoreTask {name!r}")
    _registered[name] = task
    return task


def all_tasks() -> list[ScoreTask]:
    return [get_task(n) for n in task_names()]


def metric_direction(task: str, metric: str) -> int:
    """:meth:`ScoreTask.direction` of a task by name; 0 for a task this process does not know (a plugin
    that is not loaded), so an unknown score is never called a regression."""
    try:
        return get_task(task).direction(metric)
    except TaskRegistryError:
        return 0
