"""The tile driver: the one loop behind every reduction of the score stage.

Two shapes, both as *tile -> mergeable state* (torchmetrics' update / merge / compute, faiss'
blockwise heap merge):

- ``reduce_blocks`` / ``map_blocks_of`` (1-D): one call per row block of a source (Gram sums, ridge
  normal equations, k-means assignment, projections). The kernel is ``kernel(block, lo, extra, **params)``.
- ``tile_reduce`` (2-D): one call per (query chunk, gallery block) tile (exact top-k, ranks of
  positives). The kernel is ``kernel(q, q_lo, g, g_lo, chunk_arg, **params)`` and returns a state; the
  states of one query chunk are merged **in gallery-block order** (buffered), so float merges give the
  same bits whatever order tiles finish in, and ``on_chunk(lo, hi, state)`` receives each chunk as soon
  as its last tile is merged. 1,000 queries against 10M items are ~300 tiles over every worker, not
  one task.

Both run on any ``TileRunner``: in-process (``LocalRunner``) or Ray tasks (``RayRunner``), at most
``max_in_flight`` at once. Tasks load their own blocks (``BlockSource.load``): the driver sends handles,
chunk arguments (once per chunk, via ``put_object``) and receives small states.

Memory: driver O(in-flight states + per-chunk arguments); task O(chunk x d + block x d + kernel's tile).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from embedeval.engine.runner import TileRunner, default_runner
from embedeval.engine.sources import ArrayBlocks, BlockSource


def pack_in_order(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive indices of ``sizes`` grouped so that each group's total stays within ``budget`` (an item
    larger than the budget is a group of its own). The memory bound of every wave or group loop."""
    groups: list[list[int]] = []
    current: list[int] = []
    load = 0
    for i, size in enumerate(sizes):
        if current and load + size > budget:
            groups.append(current)
            current, load = [], 0
        current.append(i)
        load += int(size)
    if current:
        groups.append(current)
    return groups


def _block_call(kernel: Callable[..., Any], source: BlockSource, b: int, extra: Any, **params: Any) -> Any:
    lo, _ = source.block_range(b)
    return kernel(source.load(b), lo, extra, **params)


def map_blocks_of(kernel: Callable[..., Any], source: BlockSource, *, params: Mapping[str, Any] | None = None,
                  per_block: Sequence[Any] | None = None, runner: TileRunner | None = None
                  ) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(lo, hi, kernel(block, lo, per_block[b], **params))`` for every block, as calls finish."""
    runner = runner or default_runner()
    placed = runner.place(source)
    calls = ((kernel, placed, b, None if per_block is None else per_block[b]) for b in range(placed.n_blocks))
    for b, value in runner.map_calls(_block_call, calls, params):
        lo, hi = placed.block_range(b)
        yield lo, hi, value


def reduce_blocks(kernel: Callable[..., Any], source: BlockSource, merge: Callable[[Any, Any], Any], initial: Any,
                  *, params: Mapping[str, Any] | None = None, per_block: Sequence[Any] | None = None,
                  runner: TileRunner | None = None) -> Any:
    """Fold every block's state with ``merge``, in block order (same bits on every runner)."""
    buffered: dict[int, Any] = {}
    order = {int(lo): i for i, lo in enumerate(source.offsets[:-1])}
    state, expected = initial, 0
    for lo, _, value in map_blocks_of(kernel, source, params=params, per_block=per_block, runner=runner):
        buffered[order[lo]] = value
        while expected in buffered:
            state = merge(state, buffered.pop(expected))
            expected += 1
    return state


def gather_rows(source: BlockSource, rows: np.ndarray, runner: TileRunner | None = None) -> np.ndarray:
    """(len(rows), d) of the given rows (any order), read by tasks where the blocks are; O(len(rows) x d)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((rows.size, source.dim), dtype=np.float32)
    if rows.size == 0:
        return out
    which = np.searchsorted(source.offsets, rows, side="right") - 1
    per_block: list[Any] = [None] * source.n_blocks
    positions: dict[int, np.ndarray] = {}
    for b in np.unique(which):
        at = np.flatnonzero(which == b)
        positions[int(b)] = at
        per_block[int(b)] = rows[at] - source.offsets[b]
    wanted = sorted(positions)
    sub = _BlocksSubset(source, wanted)
    for lo, _, value in map_blocks_of(_take_rows, sub, per_block=[per_block[b] for b in wanted], runner=runner):
        out[positions[wanted[sub.index_of(lo)]]] = value
    return out


# Query rows gathered into memory (rather than read as a selection of blocks) up to this many bytes.
_GATHER_QUERIES_BYTES = 256 * 1024 * 1024


def query_rows(source: BlockSource, rows: np.ndarray, runner: TileRunner | None = None,
               block_rows: int = 32768) -> BlockSource:
    """The rows ``rows`` of a source as queries for ``tile_reduce``.

    A sparse, small set (at most a quarter of the rows: anchors, a seeded query sample) is gathered into
    dense blocks, so each tile multiplies a full chunk; a dense one stays a ``Selection`` read where the
    blocks are. Rows out of order are always gathered. Memory: at most ``_GATHER_QUERIES_BYTES`` (and
    a quarter of the source) on the driver.
    """
    rows = np.asarray(rows, dtype=np.int64)
    ordered = rows.size < 2 or bool(np.all(np.diff(rows) > 0))
    if not ordered or (4 * rows.size <= source.n and rows.size * source.dim * 4 <= _GATHER_QUERIES_BYTES):
        return ArrayBlocks(gather_rows(source, rows, runner), block_rows)
    return source.select(rows)


def _take_rows(block: np.ndarray, lo: int, local: np.ndarray) -> np.ndarray:
    return np.array(block[local], dtype=np.float32)


class _BlocksSubset(BlockSource):
    """Some whole blocks of a source (so a gather touches only the blocks that hold its rows)."""

    def __init__(self, base: BlockSource, blocks: list[int]) -> None:
        self.base = base
        self.which = list(blocks)
        sizes = [base.block_range(b)[1] - base.block_range(b)[0] for b in self.which]
        self.n, self.dim = int(sum(sizes)), base.dim
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def index_of(self, lo: int) -> int:
        return int(np.searchsorted(self.offsets, lo))

    def load(self, b: int) -> np.ndarray:
        return self.base.load(self.which[b])


@dataclass(frozen=True)
class QueryChunk:
    """Query rows ``lo:hi`` of the query source: rows ``a:z`` of its block ``block``."""

    lo: int
    hi: int
    block: int
    a: int
    z: int


def query_chunks(queries: BlockSource, chunk_rows: int) -> list[QueryChunk]:
    """Cut every query block into chunks of at most ``chunk_rows`` rows."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1; got {chunk_rows}")
    out = []
    for b in range(queries.n_blocks):
        lo, hi = queries.block_range(b)
        for s in range(lo, hi, chunk_rows):
            e = min(hi, s + chunk_rows)
            out.append(QueryChunk(s, e, b, s - lo, e - lo))
    return out


def _tile_call(kernel: Callable[..., Any], queries: BlockSource, chunk: QueryChunk, gallery: BlockSource, gb: int,
               chunk_arg: Any, block_arg: Any, **params: Any) -> Any:
    q = queries.load(chunk.block)[chunk.a:chunk.z]
    g_lo, _ = gallery.block_range(gb)
    return kernel(q, chunk.lo, gallery.load(gb), g_lo, chunk_arg, block_arg, **params)


# Query chunks whose tiles are interleaved block by block (see ``_chunk_groups``).
CHUNKS_PER_GROUP = 8


def _chunk_groups(chunks: Sequence[QueryChunk]) -> list[list[int]]:
    """Consecutive chunks of one query block, at most ``CHUNKS_PER_GROUP`` together (indices into chunks).

    ``tile_reduce`` submits a group's tiles gallery block by gallery block, so consecutive tiles share
    their gallery block (and the group its query block) and a worker's block cache answers them. Chunk
    by chunk, a gallery of more blocks than the cache holds was read again for every tile.
    """
    groups: list[list[int]] = []
    for ci, chunk in enumerate(chunks):
        if groups and len(groups[-1]) < CHUNKS_PER_GROUP and chunks[groups[-1][-1]].block == chunk.block:
            groups[-1].append(ci)
        else:
            groups.append([ci])
    return groups


def tile_reduce(kernel: Callable[..., Any], queries: BlockSource, gallery: BlockSource, *,
                init: Callable[[QueryChunk], Any], merge: Callable[[Any, Any], Any],
                on_chunk: Callable[[QueryChunk, Any], None], chunk_rows: int,
                params: Mapping[str, Any] | None = None, chunk_arg: Callable[[QueryChunk], Any] | None = None,
                wanted: Callable[[QueryChunk], Sequence[int]] | None = None,
                block_args: Sequence[Any] | None = None, chunks: Sequence[QueryChunk] | None = None,
                runner: TileRunner | None = None) -> None:
    """Run ``kernel`` on every (query chunk, gallery block) tile; merge per chunk; hand each chunk over.

    ``init(chunk)`` is the empty state of a chunk; ``merge(state, tile_state)`` folds a tile in (called
    in ascending gallery-block order); ``on_chunk(chunk, state)`` receives the finished state.
    ``chunk_arg(chunk)`` makes the chunk's own argument (placed once, shared by its tiles);
    ``wanted(chunk)`` lists the gallery blocks a chunk needs (default all, e.g. only those holding a
    query's positives). ``block_args[gb]`` is gallery block gb's own argument (placed once, e.g. its
    labels). ``chunks`` runs only those chunks (of ``query_chunks(queries, chunk_rows)``). The kernel
    is ``kernel(q, q_lo, g, g_lo, chunk_arg, block_arg, **params)``. Tiles are submitted a group of
    chunks at a time (``_chunk_groups``: up to ``CHUNKS_PER_GROUP`` chunks of one query block, gallery
    block by gallery block), so finished chunks leave the driver early; driver memory O(group x state).
    """
    runner = runner or default_runner()
    q_src = runner.place(queries)
    g_src = q_src if gallery is queries else runner.place(gallery)
    chunks = list(chunks) if chunks is not None else query_chunks(q_src, chunk_rows)
    placed_args = [runner.put_object(a) for a in block_args] if block_args is not None else None
    all_blocks = list(range(g_src.n_blocks))
    plan: list[list[int]] = []
    states: dict[int, Any] = {}
    buffers: dict[int, dict[int, Any]] = {}
    next_pos: dict[int, int] = {}

    # call number -> (chunk, gallery block), known once the lazy generator has produced it
    index: list[tuple[int, int]] = []

    def indexed_calls() -> Iterator[tuple[Any, ...]]:
        for group in _chunk_groups(chunks):
            args: dict[int, Any] = {}
            for ci in group:
                blocks = sorted(int(b) for b in (wanted(chunks[ci]) if wanted is not None else all_blocks))
                plan.append(blocks)
                states[ci] = init(chunks[ci])
                buffers[ci] = {}
                next_pos[ci] = 0
                if not blocks:  # a chunk with no tile at all finishes at once
                    finish_ready(ci)
                elif chunk_arg is not None:
                    args[ci] = runner.put_object(chunk_arg(chunks[ci]))
            # Gallery block by gallery block across the group's chunks: a worker's cached gallery block
            # serves the next chunks' tiles instead of being evicted by the chunk's other blocks.
            wants = {ci: set(plan[ci]) for ci in group}
            for gb in sorted(set().union(*wants.values())):
                for ci in group:
                    if gb in wants[ci]:
                        index.append((ci, gb))
                        yield (kernel, q_src, chunks[ci], g_src, gb, args.get(ci),
                               None if placed_args is None else placed_args[gb])

    def finish_ready(ci: int) -> None:
        blocks = plan[ci]
        while next_pos[ci] < len(blocks) and blocks[next_pos[ci]] in buffers[ci]:
            states[ci] = merge(states[ci], buffers[ci].pop(blocks[next_pos[ci]]))
            next_pos[ci] += 1
        if next_pos[ci] == len(blocks):
            on_chunk(chunks[ci], states.pop(ci))
            del buffers[ci], next_pos[ci]

    for i, value in runner.map_calls(_tile_call, indexed_calls(), params):
        ci, gb = index[i]
        buffers[ci][gb] = value
        finish_ready(ci)
    if states:
        raise RuntimeError(f"tile driver: {len(states)} query chunk(s) never completed")
