"""Per-query metric values that keep excluded queries visible instead of scoring them 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PerQueryScores:
    """One value per query; NaN marks a query excluded from the metric (e.g. no relevant item).

    ``n_excluded`` counts those queries so a report can say how many were dropped and why; ``mean`` is
    over the scored queries only. Bootstrap by resampling ``values[~np.isnan(values)]``.
    """

    values: np.ndarray  # (nq,) float64
    n_excluded: int

    @property
    def n_scored(self) -> int:
        return int(self.values.size - self.n_excluded)

    def mean(self) -> float:
        """Mean over scored queries; NaN when no query could be scored."""
        return float(np.nanmean(self.values)) if self.n_scored else float("nan")
