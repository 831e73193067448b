"""The tile driver and block sources: stored blocks, selections, gathers and 2-D tiles give the bits of the
in-memory computation, whatever the block sizes or runner."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedeval.engine.exact import canonical_scores
from embedeval.engine.kmeans import kmeans
from embedeval.engine.knn import exact_topk, topk_search
from embedeval.engine.pairs import canonical_pair_scores
from embedeval.engine.ranks import Relevance, positive_ranks, rank_positives
from embedeval.engine.runner import LocalRunner, TileRunner
from embedeval.engine.sources import ArrayBlocks, Centred, StoredBlocks, clear_block_cache
from embedeval.engine.tiles import gather_rows, query_chunks, query_rows, reduce_blocks, tile_reduce
from embedeval.io.storage import Storage


def stored(tmp_path: Path, X: np.ndarray, block_rows: int) -> StoredBlocks:
    """Write X as block files the way the score stage's prepare step does."""
    storage = Storage(str(tmp_path))
    offsets = np.append(np.arange(0, len(X), block_rows), len(X))
    for b in range(len(offsets) - 1):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(X[offsets[b]:offsets[b + 1]], dtype=np.float32))
        storage.write_bytes(StoredBlocks.block_path("blocks", b), buf.getvalue())
    clear_block_cache()
    return StoredBlocks(storage, "blocks", len(X), X.shape[1], offsets, tag=f"t{block_rows}")


def test_stored_blocks_selection_and_gather(tmp_path: Path, rng: np.random.Generator,
                                           unit: Callable[..., np.ndarray]) -> None:
    X = unit(rng, 101, 8)
    src = stored(tmp_path, X, 17)
    assert np.array_equal(src.to_array(), X)
    rows = np.sort(rng.choice(101, 40, replace=False))
    sel = src.select(rows)
    assert np.array_equal(sel.to_array(), X[rows]) and sel.n == 40
    pick = rng.integers(0, 101, 33)                        # any order, repeats
    assert np.array_equal(gather_rows(src, pick, LocalRunner()), X[pick])
    assert np.array_equal(sel.gather(np.array([3, 0, 39])), X[rows][[3, 0, 39]])
    shift = X.mean(axis=0, dtype=np.float64)
    centred = (X.astype(np.float64) - shift)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    assert np.allclose(Centred(src, shift).to_array(), centred, atol=1e-6)
    assert query_rows(src, rows).to_array().tobytes() == X[rows].tobytes()
    with pytest.raises(ValueError, match="sorted distinct"):
        src.select(np.array([3, 3]))


def test_centred_stored_blocks_are_computed_once_per_block_and_shift(tmp_path: Path, rng: np.random.Generator,
                                                                     unit: Callable[..., np.ndarray],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker loads the same centred gallery block for every tile; the second load is the cached block.
    X = unit(rng, 40, 6)
    src = stored(tmp_path, X, 16)
    clear_block_cache()
    computed: list[int] = []
    original = Centred._make
    monkeypatch.setattr(Centred, "_make", lambda self, b: computed.append(b) or original(self, b))
    a, b = Centred(src, X.mean(axis=0)), Centred(src, np.zeros(6))
    first = a.load(1)
    assert a.load(1) is first and Centred(src, X.mean(axis=0)).load(1) is first and computed == [1]
    assert not np.array_equal(b.load(1), first) and computed == [1, 1]  # another shift: another block
    in_memory = Centred(ArrayBlocks(X, 16), X.mean(axis=0))  # no cache key: computed on each load
    assert np.array_equal(in_memory.load(1), first) and in_memory.load(1) is not in_memory.load(1)
    # a selection of stored rows is cached too, keyed by its rows
    rows = np.arange(0, 40, 3)
    picked = src.select(rows)
    assert picked.load(0) is src.select(rows.copy()).load(0) and np.array_equal(picked.to_array(), X[rows])
    assert not np.array_equal(src.select(rows[:-1] + 1).load(0), picked.load(0)[:-1])
    clear_block_cache()


def test_a_selection_has_blocks_as_large_as_its_base(rng: np.random.Generator,
                                                     unit: Callable[..., np.ndarray]) -> None:
    # A quarter of the rows in blocks a quarter the size would be four times the tiles for the same work:
    # the selected rows of consecutive base blocks share a block, up to the base's largest block.
    X = unit(rng, 1003, 4)
    base = ArrayBlocks(X, 100)
    for rows in (np.arange(0, 1003, 4), np.arange(1003), np.array([7]), np.array([], dtype=np.int64),
                 np.sort(rng.choice(1003, 611, replace=False)), np.arange(950, 1003)):
        picked = base.select(rows)
        sizes = np.diff(picked.offsets)
        assert picked.n == rows.size and int(sizes.sum()) == rows.size and (sizes > 0).all()
        assert (sizes <= 100).all() and (sizes[:-1] + sizes[1:] > 100).all(), sizes   # none could be merged
        assert np.array_equal(picked.to_array(), X[rows])
        assert all(np.array_equal(picked.load(b), X[rows[picked.offsets[b]:picked.offsets[b + 1]]])
                   for b in range(picked.n_blocks))
    assert base.select(np.arange(0, 1003, 4)).n_blocks == 3


def test_derived_blocks_keep_only_themselves_in_the_block_cache(tmp_path: Path, rng: np.random.Generator,
                                                                unit: Callable[..., np.ndarray],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A selection or centred copy of stored blocks is cached; the base block it was made from is not kept
    # as well (a first-caption gallery would take three times its size and stop fitting the cache), but a
    # base block already in the cache is used rather than read again.
    from embedeval.engine import sources

    X = unit(rng, 40, 6)
    src = stored(tmp_path, X, 16)
    reads: list[int] = []
    original = StoredBlocks._make
    monkeypatch.setattr(StoredBlocks, "_make", lambda self, b: reads.append(b) or original(self, b))
    rows = np.arange(0, 40, 2)
    picked, centred = src.select(rows), Centred(src, X.mean(axis=0))
    assert np.array_equal(picked.to_array(), X[rows]) and reads == [0, 1, 2]
    assert np.allclose(centred.to_array(), Centred(ArrayBlocks(X, 16), X.mean(axis=0)).to_array())
    assert reads == [0, 1, 2] * 2
    cached = {key[0][0] for key in sources._cache}
    assert cached == {"selection", "centred"}, cached
    assert picked.load(1) is picked.load(1) and reads == [0, 1, 2] * 2   # the selection's own block, cached
    base = src.load(2)                                                   # now the base block is cached ...
    assert reads == [0, 1, 2] * 2 + [2]
    assert np.allclose(Centred(src, np.zeros(6)).load(2), base, atol=1e-6)         # unit rows, no shift
    assert reads == [0, 1, 2] * 2 + [2]                                  # ... and used, not read again
    clear_block_cache()


def test_stored_block_of_the_wrong_shape_is_a_clear_error(tmp_path: Path, rng: np.random.Generator,
                                                          unit: Callable[..., np.ndarray]) -> None:
    src = stored(tmp_path, unit(rng, 20, 4), 10)
    broken = StoredBlocks(src.storage, src.prefix, 20, 5, src.offsets, tag="other")
    with pytest.raises(ValueError, match="expected \\(10, 5\\) float32"):
        broken.load(0)


def test_topk_on_stored_blocks_equals_the_in_memory_search(tmp_path: Path, rng: np.random.Generator,
                                                           unit: Callable[..., np.ndarray],
                                                           runner: TileRunner) -> None:
    X = unit(rng, 150, 12)
    X[7] = X[3]                                           # an exact tie crossing blocks
    want_s, want_i = exact_topk(X, X, 9, exclude_self=True, block_size=64, runner=LocalRunner())
    for block_rows, chunk in ((13, 5), (40, 64), (150, 150)):
        src = stored(tmp_path / str(block_rows), X, block_rows)
        top = topk_search(src, src, 9, exclude=np.arange(150), chunk_rows=chunk, runner=runner)
        assert np.array_equal(top.indices, want_i), block_rows
        assert np.array_equal(top.scores.astype(np.float32), want_s)


def test_ranks_on_stored_blocks_equal_the_in_memory_ranks(tmp_path: Path, rng: np.random.Generator,
                                                          unit: Callable[..., np.ndarray], runner: TileRunner) -> None:
    Q, G = unit(rng, 37, 10), unit(rng, 90, 10)
    ql, gl = rng.integers(0, 4, 37), rng.integers(0, 4, 90)
    want = positive_ranks(Q, G, ql, gl, block_size=16, runner=LocalRunner())
    got = rank_positives(stored(tmp_path / "q", Q, 11), stored(tmp_path / "g", G, 19),
                         Relevance(q_codes=ql.astype(np.int64), g_codes=gl.astype(np.int64)), best_only=False,
                         chunk_rows=7, runner=runner)
    assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.ranks, want.ranks)
    # brute force: rank = 1 + items scoring higher (ties: lower index first)
    S = Q.astype(np.float64) @ G.astype(np.float64).T
    for i in range(0, 37, 6):
        pos = np.flatnonzero(gl == ql[i])
        expect = sorted(int((S[i] > S[i, p]).sum()) + 1 for p in pos)
        assert got.ranks_of(i).tolist() == expect


def test_tile_reduce_merges_each_chunk_in_gallery_order(rng: np.random.Generator) -> None:
    """Tiles finish in any order; the merge still sees gallery blocks ascending, once each."""
    Q, G = ArrayBlocks(rng.random((25, 3)), 10), ArrayBlocks(rng.random((47, 3)), 9)
    seen: dict[int, list[int]] = {}

    def kernel(q, q_lo, g, g_lo, arg, barg):  # noqa: ANN001, ANN202
        return [g_lo]

    def finish(chunk, state):  # noqa: ANN001, ANN202
        seen[chunk.lo] = state

    tile_reduce(kernel, Q, G, init=lambda c: [], merge=lambda a, b: a + b, on_chunk=finish, chunk_rows=4,
                runner=LocalRunner())
    assert sorted(seen) == [c.lo for c in query_chunks(Q, 4)]
    assert all(v == [0, 9, 18, 27, 36, 45] for v in seen.values())


def test_chunks_with_no_wanted_block_still_complete(rng: np.random.Generator) -> None:
    Q, G = ArrayBlocks(rng.random((12, 2)), 4), ArrayBlocks(rng.random((8, 2)), 4)
    done = []
    tile_reduce(lambda *a: 1, Q, G, init=lambda c: 0, merge=lambda a, b: a + b,
                on_chunk=lambda c, s: done.append((c.lo, s)), chunk_rows=4,
                wanted=lambda c: [] if c.lo == 4 else [0, 1], runner=LocalRunner())
    assert sorted(done) == [(0, 2), (4, 0), (8, 2)]


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 60), st.integers(1, 25), st.integers(0, 10_000))
def test_pair_scores_are_canonical_for_any_block_size(n: int, block_rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    i, j = rng.integers(0, n, 40), rng.integers(0, n, 40)
    got = canonical_pair_scores(ArrayBlocks(X, block_rows), i, j, runner=LocalRunner())
    assert np.array_equal(got, canonical_scores(X, X, i, j))


def test_block_reductions_and_kmeans_on_a_source(tmp_path: Path, rng: np.random.Generator,
                                                 unit: Callable[..., np.ndarray], runner: TileRunner) -> None:
    X = unit(rng, 120, 6)
    src = stored(tmp_path, X, 25)
    total = reduce_blocks(lambda b, lo, _: b.astype(np.float64).sum(axis=0), src, np.add, np.zeros(6),
                          runner=LocalRunner())
    assert np.allclose(total, X.astype(np.float64).sum(axis=0))
    want = kmeans(X, 4, seed=3, block_size=16, runner=LocalRunner())
    got = kmeans(src, 4, seed=3, block_size=16, runner=runner)
    assert np.array_equal(got.labels, want.labels) and np.array_equal(got.centroids, want.centroids)
    par = kmeans(src, 4, seed=3, init="k-means||", block_size=16, runner=runner)
    assert par.labels.shape == (120,) and np.isfinite(par.inertia)


def test_torch_backend_gives_the_numpy_bits(rng: np.random.Generator, unit: Callable[..., np.ndarray]) -> None:
    from embedeval.engine.kernels import backend_for, current

    X = unit(rng, 130, 16)
    X[5] = X[2]
    ql = rng.integers(0, 3, 130)
    torch_runner = LocalRunner(backend=backend_for("torch"))
    for runner_pair in ((LocalRunner(), torch_runner),):
        a, b = (exact_topk(X, X, 7, exclude_self=True, block_size=20, runner=r) for r in runner_pair)
        assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
        ra, rb = (positive_ranks(X, X, ql, ql, block_size=20, runner=r, exclude_same_index=True)
                  for r in runner_pair)
        assert np.array_equal(ra.ranks, rb.ranks)
        ka, kb = (kmeans(X, 3, seed=1, block_size=20, runner=r) for r in runner_pair)
        assert np.array_equal(ka.labels, kb.labels)
    assert current().name == "numpy"                       # the runner restores the process's backend


def test_torch_backend_on_read_only_cached_blocks_is_silent(tmp_path: Path, rng: np.random.Generator,
                                                           unit: Callable[..., np.ndarray]) -> None:
    # Cached blocks are read-only; torch warned once per process ("The given NumPy array is not writable")
    # into a user's console. Run in a fresh interpreter: torch's warning fires only once per process.
    import subprocess
    import sys

    script = (
        "import warnings, numpy as np\n"
        "from embedeval.engine import kernels\n"
        "a = np.ones((3, 4), np.float32); a.setflags(write=False)\n"
        "kernels.use_backend(kernels.backend_for('torch'))\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    assert kernels.matmul_t(a, a).tolist() == [[4.0] * 3] * 3\n"
        "print(len(caught), [str(w.message)[:60] for w in caught])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("0 "), out.stdout + out.stderr
