"""Agreement between a clustering and reference labels, from their contingency table.

NMI (arithmetic-mean normalisation), ARI (Hubert & Arabie) and purity, with scikit-learn's conventions
for the degenerate cases so its functions serve as the test oracle. The contingency table is kept sparse
(only the label pairs that occur), so memory is O(N) whatever the numbers of classes and clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Contingency:
    """Sparse contingency table: ``counts[m]`` items have class ``rows[m]`` and cluster ``cols[m]``."""

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray  # int64
    class_sizes: np.ndarray  # (n_classes,) int64
    cluster_sizes: np.ndarray  # (n_clusters,) int64
    n: int


def contingency(labels_true: np.ndarray, labels_pred: np.ndarray) -> Contingency:
    """The contingency table of two labelings of the same N items (labels of any comparable dtype)."""
    true = np.asarray(labels_true)
    pred = np.asarray(labels_pred)
    if true.ndim != 1 or pred.ndim != 1 or true.shape != pred.shape:
        raise ValueError(f"labels_true and labels_pred must be 1-D of equal length; got {true.shape} and {pred.shape}")
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    t = t.ravel().astype(np.int64)
    p = p.ravel().astype(np.int64)
    n_clusters = int(p.max()) + 1 if p.size else 0
    pair, counts = np.unique(t * max(n_clusters, 1) + p, return_counts=True)
    return Contingency(rows=pair // max(n_clusters, 1), cols=pair % max(n_clusters, 1),
                       counts=counts.astype(np.int64), class_sizes=np.bincount(t).astype(np.int64),
                       cluster_sizes=np.bincount(p, minlength=n_clusters).astype(np.int64), n=int(t.size))


def _entropy(sizes: np.ndarray, n: int) -> float:
    p = sizes[sizes > 0] / n
    return float(-np.sum(p * np.log(p)))


def nmi(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Normalised mutual information, MI / mean(H(true), H(pred)) (natural log; sklearn's default).

    1.0 when both labelings have a single group (or no items); 0.0 when MI is 0.
    """
    c = contingency(labels_true, labels_pred)
    if c.class_sizes.size == c.cluster_sizes.size and c.class_sizes.size <= 1:
        return 1.0
    outer = c.class_sizes[c.rows].astype(np.float64) * c.cluster_sizes[c.cols]
    mi = float(np.sum(c.counts / c.n * (np.log(c.counts * float(c.n)) - np.log(outer))))
    mi = max(mi, 0.0)
    if mi == 0.0:
        return 0.0
    normaliser = (_entropy(c.class_sizes, c.n) + _entropy(c.cluster_sizes, c.n)) / 2.0
    return float(mi / max(normaliser, np.finfo(np.float64).eps))


def _pairs(x: np.ndarray) -> int:
    """sum of C(x, 2) as an exact Python int (products below overflow int64 at catalogue scale)."""
    x = x.astype(np.int64)
    return int(np.sum(x * (x - 1) // 2, dtype=np.int64))


def ari(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985); 1.0 when both labelings agree on every pair."""
    c = contingency(labels_true, labels_pred)
    together = _pairs(c.counts)
    same_class = _pairs(c.class_sizes)
    same_cluster = _pairs(c.cluster_sizes)
    total = c.n * (c.n - 1) // 2
    # Ordered-pair confusion counts as scikit-learn defines them; exact integers.
    tp = together
    fp = same_cluster - together
    fn = same_class - together
    tn = total - tp - fp - fn
    if fn == 0 and fp == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def purity(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Share of items whose cluster's most common class is their own class (NaN for no items)."""
    c = contingency(labels_true, labels_pred)
    if c.n == 0:
        return float("nan")
    best = np.zeros(c.cluster_sizes.size, dtype=np.int64)
    np.maximum.at(best, c.cols, c.counts)
    return float(best.sum() / c.n)
