"""Exact ranks of true matches against a brute-force sort of every query's full score row."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from embedeval.engine import ranks
from embedeval.engine.exact import canonical_scores
from embedeval.engine.ranks import NO_POSITIVE, best_positive_rank, positive_ranks
from embedeval.engine.runner import LocalRunner, TileRunner

BLOCK_SIZES = [10, 32, 97, 200]


def brute_ranks(Q: np.ndarray, G: np.ndarray, relevant: np.ndarray,
                exclude_same_index: bool = False) -> list[np.ndarray]:
    """Per query: sort the whole gallery by (canonical score desc, index asc); 1-based positions of the relevant."""
    out = []
    for i in range(len(Q)):
        keep = np.arange(len(G)) != i if exclude_same_index else np.ones(len(G), bool)
        idx = np.flatnonzero(keep)
        s = canonical_scores(Q, G, np.full(idx.size, i), idx)
        order = np.lexsort((idx, -s))
        out.append(np.flatnonzero(relevant[i, idx][order]) + 1)
    return out


def labelled(rng: np.random.Generator, unit: Callable[..., np.ndarray], nq: int = 37, ng: int = 97,
             classes: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return unit(rng, nq, 12), unit(rng, ng, 12), rng.integers(0, classes, nq), rng.integers(0, classes, ng)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_positive_ranks_match_brute_force(rng: np.random.Generator, unit: Callable[..., np.ndarray],
                                          block_size: int) -> None:
    Q, G, ql, gl = labelled(rng, unit)
    got = positive_ranks(Q, G, ql, gl, block_size=block_size, runner=LocalRunner())
    want = brute_ranks(Q, G, ql[:, None] == gl[None, :])
    assert np.array_equal(got.n_relevant, [(gl == c).sum() for c in ql])
    for i in range(len(Q)):
        assert np.array_equal(got.ranks_of(i), want[i])


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_best_positive_rank_matches_brute_force(rng: np.random.Generator, unit: Callable[..., np.ndarray],
                                                block_size: int) -> None:
    Q, G = unit(rng, 37, 12), unit(rng, 97, 12)
    positives = [rng.choice(97, size=rng.integers(0, 6), replace=False) for _ in range(37)]  # 0..5 captions
    indptr = np.concatenate([[0], np.cumsum([p.size for p in positives])])
    got = best_positive_rank(Q, G, indptr, np.concatenate(positives), block_size=block_size, runner=LocalRunner())
    relevant = np.zeros((37, 97), bool)
    for i, p in enumerate(positives):
        relevant[i, p] = True
    want = [r[0] if r.size else NO_POSITIVE for r in brute_ranks(Q, G, relevant)]
    assert np.array_equal(got, want)


def test_ray_and_numpy_give_identical_ranks(rng: np.random.Generator, unit: Callable[..., np.ndarray],
                                            runner: TileRunner) -> None:
    Q, G, ql, gl = labelled(rng, unit)
    base = positive_ranks(Q, G, ql, gl, block_size=16, runner=LocalRunner())
    got = positive_ranks(Q, G, ql, gl, block_size=7, runner=runner)
    assert np.array_equal(got.indptr, base.indptr) and np.array_equal(got.ranks, base.ranks)


def test_float32_and_float64_tiles_agree(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    # One class per query holding a third of the gallery: many positives switch tiles to float64.
    Q, G = unit(rng, 20, 12), unit(rng, 97, 12)
    ql = np.zeros(20, int)
    gl = (np.arange(97) % 3 == 0).astype(int) - 1
    gl[gl == -1] = 1
    many = positive_ranks(Q, G, ql, gl, block_size=8, runner=LocalRunner())
    want = brute_ranks(Q, G, ql[:, None] == gl[None, :])
    for i in range(20):
        assert np.array_equal(many.ranks_of(i), want[i])
    # The same relevant sets through best_positive_rank (float32 tiles) agree on the first rank.
    pos = np.flatnonzero(gl == 0)
    best = best_positive_rank(Q, G, np.arange(21) * pos.size, np.tile(pos, 20), block_size=8, runner=LocalRunner())
    assert np.array_equal(best, [r[0] for r in want])


def many_positives(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> tuple[np.ndarray, ...]:
    """Queries with 60-140 positives each (the sorted counting and float64 tiles), with exact duplicates
    in the gallery (tied thresholds, and windows that hold more than the positive itself)."""
    Q, G = unit(rng, 30, 12), unit(rng, 400, 12)
    G[200:230] = G[0:30]  # duplicates of items of every class
    Q[:3] = G[[5, 17, 230 - 30 + 2]]  # queries equal to gallery items (their own score ties)
    ql = rng.integers(0, 3, 30)
    gl = rng.integers(0, 3, 400)
    return Q, G, ql, gl


@pytest.mark.parametrize("block_size", [16, 100])
@pytest.mark.parametrize("slab_elements", [1, 37, 1 << 22])
def test_queries_with_hundreds_of_positives_match_brute_force(rng: np.random.Generator,
                                                              unit: Callable[..., np.ndarray],
                                                              monkeypatch: pytest.MonkeyPatch, block_size: int,
                                                              slab_elements: int) -> None:
    # Slabs of one row, a few rows and the whole chunk: every way of cutting the binned counting.
    monkeypatch.setattr(ranks, "_SLAB_ELEMENTS", slab_elements)
    Q, G, ql, gl = many_positives(rng, unit)
    got = positive_ranks(Q, G, ql, gl, block_size=block_size, runner=LocalRunner())
    assert got.n_relevant.min() >= ranks._BINNED_COUNT_FROM_POSITIVES
    want = brute_ranks(Q, G, ql[:, None] == gl[None, :])
    for i in range(len(Q)):
        assert np.array_equal(got.ranks_of(i), want[i])


@pytest.mark.parametrize("bins, compared, tile64", [
    (2, 8, True),  # two bins a row: nearly every item in a bin with many windows (crowded, decided exactly)
    (5, 1, True),  # bins of several windows compared one window at a time, the rest exact
    (5, 1, False),  # float32 windows spanning bins, next to crowded ones
    (64, 8, False),  # float32 tiles: wide windows holding many items besides the positive
    (100_000, 8, True),  # far more bins than items: mostly one window a bin, the positive alone in it
])
def test_binned_counting_in_every_kind_of_bin(rng: np.random.Generator, unit: Callable[..., np.ndarray],
                                              monkeypatch: pytest.MonkeyPatch, bins: int, compared: int,
                                              tile64: bool) -> None:
    # Coarse grids (values exactly on a quarter) give exact score ties, duplicates and overlapping windows;
    # the query set is the gallery itself with each query's own item excluded.
    monkeypatch.setattr(ranks, "_MIN_BINS", bins)
    monkeypatch.setattr(ranks, "_BINS_PER_COLUMN", 0.0)
    monkeypatch.setattr(ranks, "_WINDOWS_COMPARED", compared)
    monkeypatch.setattr(ranks, "_COUNT_ROWS", 3)
    if not tile64:
        monkeypatch.setattr(ranks, "_FLOAT64_TILES_ABOVE_MEAN_POSITIVES", 10 ** 9)
    G = np.round(unit(rng, 300, 6) * 4) / 4
    G[150:170] = G[:20]
    labels = rng.integers(0, 2, 300)
    got = positive_ranks(G, G, labels, labels, block_size=64, runner=LocalRunner(), exclude_same_index=True)
    relevant = labels[:, None] == labels[None, :]
    np.fill_diagonal(relevant, False)
    want = brute_ranks(G, G, relevant, exclude_same_index=True)
    for i in range(len(G)):
        assert np.array_equal(got.ranks_of(i), want[i])


def test_bin_index_is_monotone_and_clipped() -> None:
    # The exactness of the binned counting rests on this: a larger value never gets a lower bin.
    values = np.sort(np.random.default_rng(3).standard_normal(10_000)).astype(np.float32)
    values = np.concatenate([[-np.inf], values, [np.inf]]).astype(np.float32)
    got = ranks._bin_index(values, np.float32(3.7), np.float32(1.3), 7)
    assert np.all(np.diff(got) >= 0)
    assert got[0] == -1 and got[-1] == 7 and got.dtype == np.intp


def test_positive_scores_of_one_code_in_several_product_batches(rng: np.random.Generator,
                                                                unit: Callable[..., np.ndarray],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # One query per product batch: the batches of a code must all see that code's original gallery rows
    # (a batch once wrote its products over them, so every later batch scored the wrong vectors).
    monkeypatch.setattr(ranks, "_GROUP_ELEMENTS", 1)
    Q, G, ql, gl = many_positives(rng, unit)
    got = positive_ranks(Q, G, ql, gl, block_size=100, runner=LocalRunner())
    want = brute_ranks(Q, G, ql[:, None] == gl[None, :])
    for i in range(len(Q)):
        assert np.array_equal(got.ranks_of(i), want[i])


def test_tie_convention_lower_gallery_index_first(rng: np.random.Generator) -> None:
    """Equal scores are ordered by gallery index: rank(p) = 1 + #{s > s_p} + #{g < p: s == s_p}."""
    v = rng.standard_normal((3, 8)).astype(np.float32)
    G = v[[0, 1, 0, 2, 0, 1]]  # items 0, 2, 4 identical; 1, 5 identical
    Q = v[[0]]
    labels_g = np.array([9, 7, 7, 9, 7, 7])
    got = positive_ranks(Q, G, np.array([7]), labels_g, block_size=2, runner=LocalRunner())
    s = canonical_scores(Q, G, np.zeros(6, int), np.arange(6))
    order = np.lexsort((np.arange(6), -s))
    assert np.array_equal(order[:3], [0, 2, 4])  # the tie among identical items, lower index first
    assert np.array_equal(got.ranks_of(0), np.flatnonzero(labels_g[order] == 7) + 1)
    assert got.ranks_of(0)[:2].tolist() == [2, 3]  # items 2 and 4 come after item 0 (label 9)
    best = best_positive_rank(Q, G, np.array([0, 2]), np.array([4, 2]), runner=LocalRunner())
    assert best.tolist() == [2]  # of the tied positives 2 and 4, item 2 ranks first, after item 0


def test_exclude_same_index(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    X = unit(rng, 97, 12)
    labels = rng.integers(0, 4, 97)
    got = positive_ranks(X, X, labels, labels, block_size=32, exclude_same_index=True, runner=LocalRunner())
    want = brute_ranks(X, X, labels[:, None] == labels[None, :], exclude_same_index=True)
    assert np.array_equal(got.n_relevant, [(labels == c).sum() - 1 for c in labels])
    for i in range(97):
        assert np.array_equal(got.ranks_of(i), want[i])


def test_queries_without_positives(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    Q, G = unit(rng, 4, 6), unit(rng, 10, 6)
    got = positive_ranks(Q, G, np.array(["a", "b", "zzz", "a"]), np.array(["a", "b"] * 5), runner=LocalRunner())
    assert got.n_relevant.tolist() == [5, 5, 0, 5]
    assert got.ranks_of(2).size == 0
    assert best_positive_rank(Q, G, np.zeros(5, int), np.zeros(0, int), runner=LocalRunner()).tolist() == [0] * 4


def test_bad_inputs_raise(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    Q, G = unit(rng, 3, 6), unit(rng, 10, 6)
    with pytest.raises(ValueError, match="repeat a gallery item"):
        best_positive_rank(Q, G, np.array([0, 2, 2, 2]), np.array([1, 1]), runner=LocalRunner())
    with pytest.raises(ValueError, match=r"lie in \[0, 10\)"):
        best_positive_rank(Q, G, np.array([0, 1, 1, 1]), np.array([10]), runner=LocalRunner())
    with pytest.raises(ValueError, match="positives_indptr"):
        best_positive_rank(Q, G, np.array([0, 1]), np.array([1]), runner=LocalRunner())
    with pytest.raises(ValueError, match="columns"):
        positive_ranks(Q, G[:, :5], np.zeros(3), np.zeros(10), runner=LocalRunner())
    with pytest.raises(ValueError, match="labels"):
        positive_ranks(Q, G, np.zeros(2), np.zeros(10), runner=LocalRunner())
    with pytest.raises(ValueError, match="exclude_same_index"):
        positive_ranks(Q, G, np.zeros(3), np.zeros(10), exclude_same_index=True, runner=LocalRunner())
    bad = G.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"G has 1 row\(s\) with NaN"):
        positive_ranks(Q, bad, np.zeros(3), np.zeros(10), runner=LocalRunner())


def test_scoring_pass_visits_only_the_gallery_blocks_that_hold_a_chunks_positives() -> None:
    # Captions in item order: a chunk of 8 items' images needs the one or two blocks of their 16 captions,
    # not the whole gallery; a label held by every block needs them all.
    from embedeval.engine.sources import ArrayBlocks
    from embedeval.engine.tiles import query_chunks

    gallery = ArrayBlocks(np.zeros((80, 2), np.float32), 12)
    captions = ranks.Relevance(q_codes=np.arange(40), g_codes=np.repeat(np.arange(40), 2))
    wanted = ranks._blocks_with_positives(captions, gallery)
    chunks = query_chunks(ArrayBlocks(np.zeros((40, 2), np.float32), 40), 8)
    assert [wanted(c) for c in chunks] == [[0, 1], [1, 2], [2, 3], [4, 5], [5, 6]]
    labels = ranks.Relevance(q_codes=np.array([0, 1, -1]), g_codes=np.arange(80) % 2)
    assert ranks._blocks_with_positives(labels, gallery)(chunks[0]) == list(range(7))
    nothing = ranks.Relevance(q_codes=np.array([5, -1]), g_codes=np.where(np.arange(80) % 2, -1, 0))  # -1: none
    two_queries = query_chunks(ArrayBlocks(np.zeros((2, 2), np.float32)), 8)[0]
    assert ranks._blocks_with_positives(nothing, gallery)(two_queries) == []
