"""A score task declared outside embedeval, the way a user's plugin would be (``score.plugins``).

``toy_spread``: the mean cosine of a modality's items to their centroid direction, times an option
``scale``. One module, one ``SCORE_TASK``: that is all a task needs to be scored, diffed and reported.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from embedeval.engine.tiles import reduce_blocks
from embedeval.report.plots import Plot, figure_png
from embedeval.scoring.parts import UnitResult
from embedeval.scoring.registry import PlanInputs, ScoreTask, ScoreUnit

TASK = "toy_spread"


class ToyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(1.0, gt=0)


def _sums(block: np.ndarray, lo: int, _: None) -> np.ndarray:
    return block.astype(np.float64).sum(axis=0)


def _score(ctx, emb):  # noqa: ANN001, ANN202 - a plugin in a test
    options = ctx.settings.options_for(TASK)
    source = ctx.place(emb.source)
    total = reduce_blocks(_sums, source, np.add, np.zeros(source.dim), runner=ctx.runner)   # O(d) state
    direction = total / np.linalg.norm(total)
    value = float(total @ direction / source.n) * options.scale
    return UnitResult([ctx.row(TASK, emb.modality, "centroid_cosine", value, source.n, 0.0, protocol="mean",
                               params={"scale": options.scale})])


def _plan(inputs: PlanInputs) -> list[ScoreUnit]:
    return [ScoreUnit(TASK, m, (m,), lambda ctx, e, tv, m=m: _score(ctx, e[m])) for m in sorted(inputs.modalities)]


def toy_plots(rows, style, settings):  # noqa: ANN001, ANN201
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.bar([r.model for r in rows], [r.value for r in rows])
    return [Plot("toy_spread", "Toy spread plot", "mean cosine to the centroid", figure_png(fig, style.dpi))], []


SCORE_TASK = ScoreTask(name=TASK, plan=_plan, options=ToyOptions, description="toy: mean cosine to the centroid",
                       headline=(dict(label="toy spread ({target})", metric="centroid_cosine"),),
                       plots=(f"{__name__}:toy_plots",))
