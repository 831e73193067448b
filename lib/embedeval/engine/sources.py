"""Where tile tasks get their rows: a matrix cut into row blocks that any process can load on its own.

The score stage never ships a whole N x d matrix through the driver. A ``BlockSource`` describes an
(n, d) float32 matrix as ``n_blocks`` row blocks; ``load(b)`` returns block b and works inside any Ray
worker, so a tile task reads exactly the blocks it needs:

- ``StoredBlocks``: ``.npy`` block files under a storage root (local folder or S3), written by
  :mod:`embedeval.scoring.prepare`. This is the catalogue-scale case: the driver holds the handle only.
- ``ArrayBlocks``: an in-memory array (engine calls on numpy inputs, tests, small samples). Before a Ray
  run, :func:`embedeval.engine.runner.TileRunner.place` turns it into ``RefBlocks`` (one ``ray.put`` per
  block), so every task fetches its own block, never the whole array.
- ``Selection``: the rows ``rows`` (sorted) of another source, e.g. the items with tags in one category
  or the labelled items. Its blocks are the base blocks that hold selected rows.
- ``Centred``: another source with a vector subtracted from every row and rows re-normalised (the
  modality gap's "remove each modality's mean"), applied as each block is loaded.

Row numbering: a source's rows are 0..n-1; block b holds rows ``offsets[b]:offsets[b + 1]``.
Workers keep the last few loaded blocks (``_BLOCK_CACHE_BYTES``) so consecutive tiles of one gallery
block do not re-read it.
"""

from __future__ import annotations

import io
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, Iterator

import numpy as np

from embedeval.io.storage import Storage

# Blocks a worker process keeps after loading them (least recently used first out).
_BLOCK_CACHE_BYTES = 256 * 1024 * 1024
_cache: "OrderedDict[tuple[Any, int], np.ndarray]" = OrderedDict()
_cache_lock = threading.Lock()


def _cached(key: tuple[Any, int], load: Any, keep: bool = True) -> np.ndarray:
    """The cached block under ``key``, or ``load()``, kept in the cache unless ``keep`` is False."""
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    value = load()
    value.setflags(write=False)
    if not keep:
        return value
    with _cache_lock:
        _cache[key] = value
        total = sum(v.nbytes for v in _cache.values())
        while total > _BLOCK_CACHE_BYTES and len(_cache) > 1:
            _, old = _cache.popitem(last=False)
            total -= old.nbytes
    return value


def clear_block_cache() -> None:
    """Forget every cached block of this process (tests; a rewritten block file)."""
    with _cache_lock:
        _cache.clear()


class BlockSource(ABC):
    """An (n, d) float32 matrix as row blocks; see the module docstring. Picklable, small."""

    n: int
    dim: int
    offsets: np.ndarray  # (n_blocks + 1,) int64: block b is rows offsets[b]:offsets[b + 1]

    @property
    def n_blocks(self) -> int:
        return int(self.offsets.size - 1)

    def block_range(self, b: int) -> tuple[int, int]:
        return int(self.offsets[b]), int(self.offsets[b + 1])

    @abstractmethod
    def load(self, b: int) -> np.ndarray:
        """Block b as a read-only (rows, d) float32 array."""

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, block) for every block, in order (streams: one block in memory at a time)."""
        for b in range(self.n_blocks):
            yield int(self.offsets[b]), self.load(b)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), d) float32 of the given rows (any order, repeats allowed), loading only the blocks
        that hold them. Memory O(len(rows) x d + one block): for samples, anchors, positives."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        if rows.size == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.n:
            raise ValueError(f"row indices must lie in [0, {self.n})")
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for b in np.unique(which):
            at = np.flatnonzero(which == b)
            out[at] = self.load(int(b))[rows[at] - self.offsets[b]]
        return out

    def select(self, rows: np.ndarray) -> "BlockSource":
        """The source of rows ``rows`` (sorted, distinct) of this one; this source when it is all rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == self.n and (rows.size == 0 or (rows[0] == 0 and rows[-1] == self.n - 1)):
            return self
        return Selection(self, rows)

    def load_passing(self, b: int) -> np.ndarray:
        """Block b for a derived source (a selection, a centred copy) that keeps its own blocks in the
        worker's block cache: a cached copy of this block is used, but one read now is not kept. Keeping
        both would double the working set of a derived gallery (treble it for the first of two captions
        per item), and a gallery that no longer fits the cache is read from storage again on every tile."""
        return self.load(b)

    def cache_key(self) -> tuple[Any, ...] | None:
        """What identifies this source's blocks in a worker's block cache; None: not cached (in-memory
        and object-store blocks cost nothing to load)."""
        return None

    def to_array(self) -> np.ndarray:
        """The whole matrix: O(n x d). Only for small sources (tests, samples, oracles)."""
        return np.concatenate([blk for _, blk in self.blocks()]) if self.n_blocks else np.zeros((0, self.dim), np.float32)


def even_offsets(n: int, block_rows: int) -> np.ndarray:
    """Block boundaries cutting n rows into blocks of ``block_rows`` (the last may be short)."""
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1; got {block_rows}")
    return np.append(np.arange(0, n, block_rows, dtype=np.int64), np.int64(n)) if n else np.zeros(1, np.int64)


class ArrayBlocks(BlockSource):
    """An in-memory matrix as blocks of ``block_rows`` rows (no copy)."""

    def __init__(self, X: np.ndarray, block_rows: int = 32768) -> None:
        self.array = np.ascontiguousarray(X, dtype=np.float32)
        if self.array.ndim != 2:
            raise ValueError(f"a block source needs a 2-D matrix; got shape {self.array.shape}")
        self.n, self.dim = (int(v) for v in self.array.shape)
        self.offsets = even_offsets(self.n, block_rows)

    def load(self, b: int) -> np.ndarray:
        lo, hi = self.block_range(b)
        return self.array[lo:hi]


class RefBlocks(BlockSource):
    """Blocks held in Ray's object store, one object per block (made by ``TileRunner.place``)."""

    def __init__(self, refs: list[Any], n: int, dim: int, offsets: np.ndarray) -> None:
        self.refs = refs
        self.n, self.dim = n, dim
        self.offsets = offsets

    def load(self, b: int) -> np.ndarray:
        import ray

        return ray.get(self.refs[b])


class _CachedBlocks(BlockSource):
    """A source whose blocks are made (read, gathered, centred) by :meth:`_make` and kept in the worker's
    block cache under ``cache_key``; without a key (over in-memory blocks) each load makes the block."""

    @abstractmethod
    def _make(self, b: int) -> np.ndarray:
        """Block b, made from scratch."""

    def load(self, b: int) -> np.ndarray:
        return self._through_cache(b, keep=True)

    def load_passing(self, b: int) -> np.ndarray:
        return self._through_cache(b, keep=False)

    def _through_cache(self, b: int, keep: bool) -> np.ndarray:
        key = self.cache_key()
        return self._make(b) if key is None else _cached((key, b), lambda: self._make(b), keep)


class StoredBlocks(_CachedBlocks):
    """Block files ``<prefix>/block-<b>.npy`` under a storage root (see :mod:`embedeval.scoring.prepare`)."""

    def __init__(self, storage: Storage, prefix: str, n: int, dim: int, offsets: np.ndarray, tag: str = "") -> None:
        self.storage = storage
        self.prefix = prefix
        self.n, self.dim = n, dim
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.tag = tag  # identifies the content (the commit's checksum): cache keys survive a rewrite

    @staticmethod
    def block_path(prefix: str, b: int) -> str:
        return f"{prefix}/block-{b:06d}.npy"

    def cache_key(self) -> tuple[Any, ...]:
        # the layout is part of the key: a rewritten folder with other block sizes never hits old blocks
        return (self.storage.root, self.prefix, self.tag, self.n, hash(self.offsets.tobytes()))

    def _make(self, b: int) -> np.ndarray:
        arr = np.load(io.BytesIO(self.storage.read_bytes(self.block_path(self.prefix, b))), allow_pickle=False)
        lo, hi = self.block_range(b)
        if arr.shape != (hi - lo, self.dim) or arr.dtype != np.float32:
            raise ValueError(f"{self.storage.uri(self.block_path(self.prefix, b))}: expected ({hi - lo}, "
                             f"{self.dim}) float32, found {arr.shape} {arr.dtype}; delete the blocks folder")
        return arr


class Selection(_CachedBlocks):
    """Rows ``rows`` (sorted, distinct) of ``base``.

    Its blocks are as large as the base's largest: the selected rows of consecutive base blocks are grouped
    until the next would not fit. One block per base block would leave a selection of a quarter of the items
    with blocks a quarter the size, and four times the tiles (each with its fixed costs) for the same work.
    """

    def __init__(self, base: BlockSource, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= base.n):
            raise ValueError(f"a selection needs sorted distinct rows in [0, {base.n})")
        self.base = base
        self.rows = rows
        self.n, self.dim = int(rows.size), base.dim
        which = np.searchsorted(base.offsets, rows, side="right") - 1
        counts = np.bincount(which, minlength=base.n_blocks) if rows.size else np.zeros(base.n_blocks, np.int64)
        # the base blocks holding selected rows, and where their rows start in ``rows``
        self.base_blocks = np.flatnonzero(counts).astype(np.int64)
        self._row_starts = np.concatenate([[0], np.cumsum(counts[self.base_blocks])]).astype(np.int64)
        target = int(np.diff(base.offsets).max()) if base.n_blocks else 0
        bounds, size = [0], 0
        for j, count in enumerate(counts[self.base_blocks].tolist()):
            if size and size + count > target:
                bounds.append(j)
                size = 0
            size += count
        if self.base_blocks.size:
            bounds.append(int(self.base_blocks.size))
        self._groups = np.asarray(bounds, dtype=np.int64)   # block b: base_blocks[groups[b]:groups[b + 1]]
        self.offsets = self._row_starts[self._groups]
        base_key = base.cache_key()
        self._key = None if base_key is None else ("selection", base_key, hash(rows.tobytes()))

    def _make(self, b: int) -> np.ndarray:
        # over stored blocks the selected rows are cached like the block itself: tiles load each block many
        # times, and gathering half a block's rows cost a tenth of a tile's GEMM each time
        parts = []
        for j in range(int(self._groups[b]), int(self._groups[b + 1])):
            bb = int(self.base_blocks[j])
            picked = self.rows[self._row_starts[j]:self._row_starts[j + 1]] - self.base.offsets[bb]
            parts.append(self.base.load_passing(bb)[picked])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def cache_key(self) -> tuple[Any, ...] | None:
        # made where the selection is made (the driver) and pickled with it, not hashed again by every task
        return self._key


class Centred(_CachedBlocks):
    """``base`` with ``shift`` subtracted from every row, rows re-normalised (zero rows stay zero)."""

    def __init__(self, base: BlockSource, shift: np.ndarray) -> None:
        self.base = base
        self.shift = np.asarray(shift, dtype=np.float64)
        self.n, self.dim, self.offsets = base.n, base.dim, base.offsets
        base_key = base.cache_key()
        self._key = None if base_key is None else ("centred", base_key, hash(self.shift.tobytes()))

    def _make(self, b: int) -> np.ndarray:
        # Every tile of a chunk (and every chunk of a gallery block) loads the same block: over a stored
        # base, the centred block is kept in the worker's block cache like the base block itself, so it is
        # computed once per worker rather than once per tile (it cost a third of a tile's GEMM).
        centred = self.base.load_passing(b).astype(np.float64) - self.shift
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        return (centred / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    def cache_key(self) -> tuple[Any, ...] | None:
        return self._key


class IndexedRows(BlockSource):
    """Row i is ``table[index[i]]``: a small (m, d) table read through an (n,) index, in ``offsets`` blocks.

    For queries that are one of a few vectors each (a sketch's zero-shot class prompt): no (n, d) matrix
    is ever built; a block costs O(block x d). Picklable: ``table`` and ``index`` travel with the source.
    """

    def __init__(self, table: np.ndarray, index: np.ndarray, offsets: np.ndarray) -> None:
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.index = np.asarray(index, dtype=np.int64)
        self.n, self.dim = int(self.index.size), int(self.table.shape[1])
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if self.offsets[-1] != self.n:
            raise ValueError(f"offsets end at {int(self.offsets[-1])}, index has {self.n} rows")

    def load(self, b: int) -> np.ndarray:
        lo, hi = self.block_range(b)
        return self.table[self.index[lo:hi]]


class SoftmaxMix(BlockSource):
    """Row i is the unit vector of ``sum_c softmax(<x_i, p_c> / temperature)_c p_c`` over the rows p_c of
    ``table`` (a softmax-weighted mix of class prompt vectors); ``base`` gives the x_i.

    Computed in float64 per block, O(block x (m + d)); zero mixes stay zero.
    """

    def __init__(self, base: BlockSource, table: np.ndarray, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.base = base
        self.table = np.asarray(table, dtype=np.float64)
        self.temperature = float(temperature)
        self.n, self.dim, self.offsets = base.n, base.dim, base.offsets

    def load(self, b: int) -> np.ndarray:
        logits = self.base.load(b).astype(np.float64) @ self.table.T / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        weights /= weights.sum(axis=1, keepdims=True)
        mix = weights @ self.table
        norms = np.linalg.norm(mix, axis=1, keepdims=True)
        return (mix / np.where(norms > 0, norms, 1.0)).astype(np.float32)
