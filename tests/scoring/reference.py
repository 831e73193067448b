"""Slow, obviously-correct references (full N x N matrices) used as oracles by the scoring tests."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score


def per_anchor_pearson(E: np.ndarray, T: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The CorrEmbed paper's definition, one anchor at a time with scipy."""
    se, st = E @ E.T, T @ T.T
    out = []
    for i in anchors:
        others = np.arange(E.shape[0]) != i
        x, y = se[i, others], st[i, others]
        out.append(np.nan if np.ptp(x) == 0 or np.ptp(y) == 0 else pearsonr(x, y).statistic)
    return np.asarray(out)


def knn_pearson(E: np.ndarray, T: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    se, st = E @ E.T, T @ T.T
    out = []
    for i in anchors:
        s = se[i].copy()
        s[i] = -np.inf
        nn = np.argsort(-s, kind="stable")[:k]
        x, y = se[i, nn], st[i, nn]
        out.append(np.nan if np.ptp(x) == 0 or np.ptp(y) == 0 else pearsonr(x, y).statistic)
    return np.asarray(out)


def all_pairs(E: np.ndarray, T: np.ndarray) -> tuple[float, float]:
    """(Pearson, Spearman) over the upper triangle of the two similarity matrices.

    Similarities are rounded to 12 decimals for Spearman so that equal tag sets tie exactly (float
    rounding would otherwise break their ties at random).
    """
    iu = np.triu_indices(E.shape[0], 1)
    x, y = (E @ E.T)[iu], (T @ T.T)[iu]
    return pearsonr(x, y).statistic, spearmanr(np.round(x, 12), np.round(y, 12)).statistic


def best_ranks(Q: np.ndarray, G: np.ndarray, relevant: list[list[int]]) -> np.ndarray:
    """1-based rank of the best relevant gallery item per query (ties counted pessimistically: >=)."""
    s = Q @ G.T
    out = []
    for i, rel in enumerate(relevant):
        best = max(s[i, rel])
        out.append(int((s[i] > best).sum()) + 1)
    return np.asarray(out)


def label_ap(Q: np.ndarray, G: np.ndarray, ql: np.ndarray, gl: np.ndarray) -> np.ndarray:
    s = Q @ G.T
    return np.array([average_precision_score(gl == ql[i], s[i]) for i in range(len(ql))])


def precision_at(Q: np.ndarray, G: np.ndarray, ql: np.ndarray, gl: np.ndarray, k: int) -> np.ndarray:
    s = Q @ G.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return (gl[top] == ql[:, None]).sum(axis=1) / k
