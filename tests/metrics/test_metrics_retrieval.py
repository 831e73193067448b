"""Retrieval metrics against scikit-learn, the zero-shot SBIR reference code's definition, brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from embedeval.engine.ranks import best_positive_rank, positive_ranks
from embedeval.engine.runner import LocalRunner
from embedeval.metrics.retrieval import (average_precision_from_ranks, mean_rank, median_rank, precision_at_k,
                                         recall_at_k, rsum)


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def voc_interpolated_ap(relevant: np.ndarray, scores: np.ndarray, top: int | None = None) -> float:
    """The zs-SBIR evaluation code's AP (eval_AP_inner + VOCap), restated from its definition."""
    order = np.argsort(-scores, kind="stable")
    tp = relevant[order]
    fp = ~tp
    total_pos = tp.sum()
    if top is not None:
        tp, fp = tp[:top], fp[:top]
        total_pos = min(top, total_pos)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / total_pos
    prec = tp / (tp + fp)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(mpre.size - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    step = mrec[1:] != mrec[:-1]
    return float(np.sum((mrec[1:][step] - mrec[:-1][step]) * mpre[1:][step]))


@pytest.fixture
def retrieval_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    rng = np.random.default_rng(7)
    Q, G = unit(rng, 30, 16), unit(rng, 97, 16)
    ql, gl = rng.integers(0, 6, 30), rng.integers(0, 5, 97)  # label 5: queries with no relevant item
    ranks = positive_ranks(Q, G, ql, gl, block_size=32, runner=LocalRunner())
    scores = Q.astype(np.float64) @ G.T.astype(np.float64)
    return scores, ql[:, None] == gl[None, :], ranks.n_relevant, ranks


def test_map_all_matches_sklearn(retrieval_case: tuple) -> None:
    scores, relevant, n_rel, ranks = retrieval_case
    ap = average_precision_from_ranks(ranks.indptr, ranks.ranks, n_rel)
    has = relevant.any(axis=1)
    want = [average_precision_score(relevant[i], scores[i]) for i in np.flatnonzero(has)]
    assert np.allclose(ap.values[has], want, atol=1e-12)
    assert ap.n_excluded == int((~has).sum()) > 0 and np.isnan(ap.values[~has]).all()
    assert ap.mean() == pytest.approx(np.mean(want))


@pytest.mark.parametrize("cutoff", [None, 5, 200])
def test_zs_sbir_convention_matches_reference_code(retrieval_case: tuple, cutoff: int | None) -> None:
    scores, relevant, n_rel, ranks = retrieval_case
    ap = average_precision_from_ranks(ranks.indptr, ranks.ranks, n_rel, cutoff=cutoff, convention="zs-sbir")
    for i in np.flatnonzero(relevant.any(axis=1)):
        assert ap.values[i] == pytest.approx(voc_interpolated_ap(relevant[i], scores[i], cutoff), abs=1e-12)


def test_standard_ap_at_k_follows_trec_map_cut(retrieval_case: tuple) -> None:
    scores, relevant, n_rel, ranks = retrieval_case
    ap = average_precision_from_ranks(ranks.indptr, ranks.ranks, n_rel, cutoff=10)
    for i in np.flatnonzero(relevant.any(axis=1)):
        hits = relevant[i][np.argsort(-scores[i])][:10]
        want = np.sum(np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)) / relevant[i].sum()
        assert ap.values[i] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("k", [1, 5, 100])
def test_precision_at_k_both_conventions(retrieval_case: tuple, k: int) -> None:
    scores, relevant, n_rel, ranks = retrieval_case
    std = precision_at_k(ranks.indptr, ranks.ranks, n_rel, k)
    zs = precision_at_k(ranks.indptr, ranks.ranks, n_rel, k, convention="zs-sbir")
    for i in range(len(scores)):
        hits = relevant[i][np.argsort(-scores[i])][:k].sum()
        if not relevant[i].any():
            assert np.isnan(std.values[i]) and np.isnan(zs.values[i])
            continue
        assert std.values[i] == pytest.approx(hits / k)
        assert zs.values[i] == pytest.approx(hits / min(k, relevant[i].sum()))


def test_identical_order_gives_perfect_scores() -> None:
    n_rel = np.array([3, 1])
    indptr = np.array([0, 3, 4])
    ranks = np.array([1, 2, 3, 1])  # every relevant item ranked first
    for convention in ("standard", "zs-sbir"):
        assert np.all(average_precision_from_ranks(indptr, ranks, n_rel, convention=convention).values == 1.0)
        at_2 = average_precision_from_ranks(indptr, ranks, n_rel, cutoff=2, convention=convention)
        assert at_2.values[1] == 1.0
    assert precision_at_k(indptr, ranks, n_rel, 3, convention="zs-sbir").values.tolist() == [1.0, 1.0]


def test_recall_and_rank_summaries_from_best_ranks() -> None:
    rng = np.random.default_rng(2)
    Q, G = unit(rng, 25, 8), unit(rng, 60, 8)
    positives = [rng.choice(60, 5, replace=False) for _ in range(24)] + [np.zeros(0, int)]
    indptr = np.concatenate([[0], np.cumsum([p.size for p in positives])])
    best = best_positive_rank(Q, G, indptr, np.concatenate(positives), block_size=16, runner=LocalRunner())
    scores = Q.astype(np.float64) @ G.T.astype(np.float64)
    want = [1 + np.sum(scores[i] > scores[i, p].max()) for i, p in enumerate(positives[:24])]
    assert best[:24].tolist() == want and best[24] == 0
    for k in (1, 5, 10):
        r = recall_at_k(best, k)
        assert r.n_excluded == 1 and np.isnan(r.values[24])
        assert r.mean() == pytest.approx(np.mean(np.array(want) <= k))
    assert median_rank(best) == np.median(want) and mean_rank(best) == pytest.approx(np.mean(want))
    assert rsum(best, best) == pytest.approx(2 * 100 * sum(np.mean(np.array(want) <= k) for k in (1, 5, 10)))


def test_no_scored_query_is_nan_not_zero() -> None:
    r = recall_at_k(np.zeros(3, dtype=np.int64), 5)
    assert r.n_excluded == 3 and np.isnan(r.mean())
    assert np.isnan(median_rank(np.zeros(2, dtype=np.int64)))
    ap = average_precision_from_ranks(np.zeros(3, int), np.zeros(0, int), np.zeros(2, int))
    assert ap.n_excluded == 2 and np.isnan(ap.mean())


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="all relevant items"):
        average_precision_from_ranks(np.array([0, 1]), np.array([1]), np.array([2]))
    with pytest.raises(ValueError, match="strictly ascending"):
        average_precision_from_ranks(np.array([0, 2]), np.array([3, 1]), np.array([2]))
    with pytest.raises(ValueError, match="convention"):
        average_precision_from_ranks(np.array([0, 1]), np.array([1]), np.array([1]),
                                     convention="map")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(np.array([1, 2]), 0)
    with pytest.raises(ValueError, match="integer"):
        recall_at_k(np.array([1.5]), 1)
