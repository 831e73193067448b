"""Exact all-pairs and per-anchor Pearson sums for cosine similarities, via small Gram matrices.

With unit rows E (N, dE) and T (N, dT), x_ij = e_i.e_j and y_ij = t_i.t_j. Every sum a Pearson needs
collapses onto Gram matrices (design.md section 4):

    sum_{i,j} x_ij y_ij = ||E'T||_F^2      sum_{i,j} x_ij^2 = ||E'E||_F^2      sum_{i,j} x_ij = ||sum_i e_i||^2
    per anchor i:  sum_j x_ij y_ij = e_i'(E'T)t_i,   sum_j x_ij^2 = e_i'(E'E)e_i,   sum_j x_ij = e_i.sum(E)

and the i = j terms are subtracted exactly. Everything is float64; time O(N (dE + dT)^2), memory
O(dE^2 + dE dT + dT^2 + chunk x (dE + dT)); no N x N matrix and no tile loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from embedeval.engine.runner import TileRunner
from embedeval.engine.sources import BlockSource
from embedeval.engine.sums import PearsonSums, pearson_from_sums
from embedeval.engine.tiles import reduce_blocks
from embedeval.engine.validate import as_row_indices, as_unit_pair

__all__ = ["AnchorSums", "GramStats", "PearsonResult", "all_pairs_from_stats", "anchor_sums_from_stats",
           "gram_stats_blocks", "pearson_all_pairs_cosine", "pearson_from_sums", "per_anchor_sums_cosine"]

_CHUNK_ROWS = 16384


@dataclass(frozen=True)
class PearsonResult:
    """One Pearson correlation over all unordered pairs i < j."""

    r: float  # NaN when undefined (a similarity is constant over all pairs)
    n_pairs: int  # N (N - 1) / 2
    sums: PearsonSums  # the six float64 sums over pairs i < j (mergeable with other states)


@dataclass(frozen=True)
class AnchorSums:
    """Per anchor i, the six Pearson sums over all j != i (float64 arrays aligned with ``anchors``).

    ``pearson()`` is the per-anchor correlation (the paper's CorrEmbed is its mean over anchors).
    ``total(select)`` adds the sums of the anchors at positions ``select`` (repeats allowed: an anchor
    bootstrap); over all anchors every pair is counted twice, so ``total().pearson()`` equals the
    all-pairs Pearson.
    """

    anchors: np.ndarray  # int64 (A,), row indices of the anchors
    n: np.ndarray  # (A,) N - 1
    sx: np.ndarray
    sy: np.ndarray
    sxx: np.ndarray
    syy: np.ndarray
    sxy: np.ndarray

    def as_sums(self) -> PearsonSums:
        return PearsonSums(self.n, self.sx, self.sy, self.sxx, self.syy, self.sxy)

    def pearson(self) -> np.ndarray:
        """(A,) float64 per-anchor r; NaN where undefined (a similarity constant over j)."""
        return np.asarray(self.as_sums().pearson(), dtype=np.float64)

    def total(self, select: np.ndarray | None = None) -> PearsonSums:
        """Scalar sums over the anchors at positions ``select`` (all when None; repeats count twice)."""
        sums = self.as_sums()
        return (sums if select is None else sums.take(np.asarray(select))).total()


@dataclass(frozen=True)
class GramStats:
    """The mergeable state behind every Pearson of cosine similarities: sums and Gram matrices, float64.

    Memory O(dE^2 + dE dT + dT^2), whatever N. ``merge`` adds two states of disjoint rows.
    """

    n: int
    sum_e: np.ndarray  # (dE,)
    sum_t: np.ndarray  # (dT,)
    gram_ee: np.ndarray  # E'E (dE, dE)
    gram_et: np.ndarray  # E'T (dE, dT)
    gram_tt: np.ndarray  # T'T (dT, dT)
    diag: PearsonSums  # sums of the i = j terms: x_ii = |e_i|^2, y_ii = |t_i|^2

    @staticmethod
    def of_rows(e: np.ndarray, t: Any) -> "GramStats":
        """The state of rows e (b, dE) and their tag vectors t (b, dT; dense or scipy sparse)."""
        e = np.asarray(e, dtype=np.float64)
        t = np.asarray(t.toarray() if hasattr(t, "toarray") else t, dtype=np.float64)
        return GramStats(e.shape[0], e.sum(axis=0), t.sum(axis=0), e.T @ e, e.T @ t, t.T @ t,
                         PearsonSums.zeros().update(np.einsum("ij,ij->i", e, e), np.einsum("ij,ij->i", t, t)))

    def merge(self, other: "GramStats | None") -> "GramStats":
        if other is None:
            return self
        return GramStats(self.n + other.n, self.sum_e + other.sum_e, self.sum_t + other.sum_t,
                         self.gram_ee + other.gram_ee, self.gram_et + other.gram_et, self.gram_tt + other.gram_tt,
                         self.diag.merge(other.diag))


def _merge_stats(a: GramStats | None, b: GramStats) -> GramStats:
    return b if a is None else a.merge(b)


def _gram_stats(E: np.ndarray, T: np.ndarray) -> GramStats:
    state: GramStats | None = None
    for start in range(0, E.shape[0], _CHUNK_ROWS):
        state = _merge_stats(state, GramStats.of_rows(E[start:start + _CHUNK_ROWS], T[start:start + _CHUNK_ROWS]))
    assert state is not None
    return state


def gram_block(e: np.ndarray, lo: int, t: Any) -> GramStats:
    """Block kernel: the Gram state of one block of unit embeddings and its rows of tag vectors."""
    return GramStats.of_rows(e, t)


def gram_stats_blocks(E: BlockSource, t_blocks: list[Any], runner: TileRunner | None = None) -> GramStats:
    """The Gram state of a whole source, one task per block; ``t_blocks[b]`` are block b's tag rows
    (unit, dense or sparse). Merged in block order. Driver memory O((dE + dT)^2 + one block's tags)."""
    if E.n == 0:
        raise ValueError("no rows to correlate")
    return reduce_blocks(gram_block, E, _merge_stats, None, per_block=t_blocks, runner=runner)


def pearson_all_pairs_cosine(E: np.ndarray, T: np.ndarray) -> PearsonResult:
    """Pearson r over all pairs i < j between x_ij = e_i.e_j and y_ij = t_i.t_j, exactly.

    Inputs: E (N, dE) and T (N, dT) with unit rows (callers normalise and drop zero rows; non-unit
    rows raise ``ValueError``, as do NaN/Inf rows or N mismatch). Output r (NaN if undefined), the
    number of pairs and the float64 sums. Cost O(N (dE + dT)^2) time, O((dE + dT)^2) memory.
    """
    E, T = as_unit_pair(E, T)
    return all_pairs_from_stats(_gram_stats(E, T))


def all_pairs_from_stats(g: GramStats) -> PearsonResult:
    """The all-pairs Pearson (pairs i < j) from a merged Gram state: O((dE + dT)^2)."""
    d = g.diag
    # Sums over ordered pairs with i != j, halved to unordered pairs i < j (x and y are symmetric).
    sums = PearsonSums(
        n=float(g.n) * (g.n - 1) / 2.0,
        sx=(float(g.sum_e @ g.sum_e) - d.sx) / 2.0,
        sy=(float(g.sum_t @ g.sum_t) - d.sy) / 2.0,
        sxx=(float(np.sum(g.gram_ee * g.gram_ee)) - d.sxx) / 2.0,
        syy=(float(np.sum(g.gram_tt * g.gram_tt)) - d.syy) / 2.0,
        sxy=(float(np.sum(g.gram_et * g.gram_et)) - d.sxy) / 2.0,
    )
    return PearsonResult(r=float(sums.pearson()), n_pairs=g.n * (g.n - 1) // 2, sums=sums)


def per_anchor_sums_cosine(E: np.ndarray, T: np.ndarray, anchors: np.ndarray | None = None) -> AnchorSums:
    """Per anchor i, the six Pearson sums of (x_ij, y_ij) over all j != i, exactly (float64).

    Inputs as ``pearson_all_pairs_cosine``; ``anchors`` are row indices (default: all rows; repeats
    allowed). Cost O(N (dE + dT)^2 + A (dE + dT)^2) time, O((dE + dT)^2 + A) memory.
    """
    E, T = as_unit_pair(E, T)
    anchor_idx = as_row_indices("anchors", anchors, E.shape[0])
    return anchor_sums_from_stats(_gram_stats(E, T), anchor_idx, lambda rows: (E[rows], T[rows]))


def anchor_sums_from_stats(g: GramStats, anchors: np.ndarray, rows_of: Callable[[np.ndarray], tuple[Any, Any]]
                           ) -> AnchorSums:
    """Per-anchor sums from a merged Gram state; ``rows_of(idx)`` returns the anchors' (e, t) rows
    (t dense or sparse). Memory O((dE + dT)^2 + chunk x (dE + dT))."""
    n = g.n
    out = {name: np.empty(anchors.size) for name in ("sx", "sy", "sxx", "syy", "sxy")}
    for start in range(0, anchors.size, _CHUNK_ROWS):
        rows = anchors[start:start + _CHUNK_ROWS]
        e_rows, t_rows = rows_of(rows)
        e = np.asarray(e_rows, dtype=np.float64)
        t = np.asarray(t_rows.toarray() if hasattr(t_rows, "toarray") else t_rows, dtype=np.float64)
        xii = np.einsum("ij,ij->i", e, e)
        yii = np.einsum("ij,ij->i", t, t)
        part = slice(start, start + rows.size)
        out["sx"][part] = e @ g.sum_e - xii
        out["sy"][part] = t @ g.sum_t - yii
        out["sxx"][part] = np.einsum("ij,ij->i", e @ g.gram_ee, e) - xii * xii
        out["syy"][part] = np.einsum("ij,ij->i", t @ g.gram_tt, t) - yii * yii
        out["sxy"][part] = np.einsum("ij,ij->i", e @ g.gram_et, t) - xii * yii
    return AnchorSums(anchors=anchors, n=np.full(anchors.size, float(n - 1)), **out)
