"""The Pearson reduction state: n and five sums, float64, merged by addition (torchmetrics' shape).

A ``PearsonSums`` holds either scalars (one correlation) or equal-length arrays (one correlation per
anchor). ``update``/``from_values`` fold in observations, ``merge`` (or ``+``) adds two states, and
``pearson`` computes r at the end. Addition is exact up to float64 rounding, so any merge order or
grouping gives the same r to ~1e-15.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

Number = Union[float, np.ndarray]

# A variance below this share of the mean square is indistinguishable from 0 with the one-pass formula
# in float64 (cancellation); r is then undefined and reported as NaN, never as a noisy number.
DEGENERATE_VARIANCE = 1e-10


@dataclass(frozen=True)
class PearsonSums:
    """n, sum x, sum y, sum x^2, sum y^2, sum xy (scalars, or arrays with one entry per anchor)."""

    n: Number
    sx: Number
    sy: Number
    sxx: Number
    syy: Number
    sxy: Number

    @staticmethod
    def zeros(shape: tuple[int, ...] = ()) -> "PearsonSums":
        if shape:
            return PearsonSums(*(np.zeros(shape) for _ in range(6)))
        return PearsonSums(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    @staticmethod
    def from_values(x: np.ndarray, y: np.ndarray, axis: int | None = None) -> "PearsonSums":
        """The sums of paired observations ``x``, ``y`` (summed over ``axis``; all of them if None)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape; got {x.shape} and {y.shape}")
        n = x.size if axis is None else x.shape[axis]
        n_arr: Number = float(n) if axis is None else np.full(np.delete(x.shape, axis), float(n))
        return PearsonSums(
            n=n_arr,
            sx=x.sum(axis=axis),
            sy=y.sum(axis=axis),
            sxx=(x * x).sum(axis=axis),
            syy=(y * y).sum(axis=axis),
            sxy=(x * y).sum(axis=axis),
        )

    def merge(self, other: "PearsonSums") -> "PearsonSums":
        return PearsonSums(self.n + other.n, self.sx + other.sx, self.sy + other.sy,
                           self.sxx + other.sxx, self.syy + other.syy, self.sxy + other.sxy)

    __add__ = merge

    def update(self, x: np.ndarray, y: np.ndarray) -> "PearsonSums":
        """This state with the observations ``x``, ``y`` folded in."""
        return self.merge(PearsonSums.from_values(x, y))

    def take(self, index: np.ndarray) -> "PearsonSums":
        """The per-anchor entries at ``index`` (array states only)."""
        return PearsonSums(*(np.asarray(v)[index] for v in self._fields()))

    def total(self) -> "PearsonSums":
        """One scalar state: the float64 sum of all per-anchor entries (array states)."""
        return PearsonSums(*(float(np.sum(v)) for v in self._fields()))

    def pearson(self) -> Number:
        """r, NaN where undefined (n < 2, or a variance that is 0 to float64 precision)."""
        return pearson_from_sums(*self._fields())

    def _fields(self) -> tuple[Number, ...]:
        return (self.n, self.sx, self.sy, self.sxx, self.syy, self.sxy)


def pearson_from_sums(n: Number, sx: Number, sy: Number, sxx: Number, syy: Number, sxy: Number) -> Number:
    """Pearson r from the six sums; scalars give a float, arrays an array (elementwise).

    NaN where n < 2 or where a variance is at most ``DEGENERATE_VARIANCE`` times the mean square (a
    constant variable: r undefined). r is clipped to [-1, 1] against rounding.
    """
    n_a, sx_a, sy_a, sxx_a, syy_a, sxy_a = (np.asarray(v, dtype=np.float64) for v in (n, sx, sy, sxx, syy, sxy))
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = sx_a / n_a
        my = sy_a / n_a
        msx = sxx_a / n_a
        msy = syy_a / n_a
        vx = msx - mx * mx
        vy = msy - my * my
        cov = sxy_a / n_a - mx * my
        r = np.clip(cov / np.sqrt(vx * vy), -1.0, 1.0)
    undefined = (n_a < 2) | (vx <= DEGENERATE_VARIANCE * msx) | (vy <= DEGENERATE_VARIANCE * msy)
    r = np.where(undefined, np.nan, r)
    return float(r) if r.ndim == 0 else r
