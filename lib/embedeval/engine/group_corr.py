"""Per-anchor Pearson of embedding and tag cosines against a gallery of groups, tiled (CorrEmbed paper-code).

For anchors a (query rows) and gallery entries o (one representative vector and one tag vector per group):
x_ao = cos(e_a, g_o), y_ao = t_a . u_o with unit (or zero) tag vectors, and per anchor the six Pearson
sums over every o. ``x`` is computed in float64 (optionally from float16-rounded vectors and rounded to
a number of decimals, the released notebooks' storage), so a tile's values do not depend on the tiling.

Tag sides are CSR matrices of unit rows (zero rows allowed) or ``RandomTags`` (seeded uniform vectors made
where they are used, so a G x dT random matrix never exists on the driver). ``UniformRandomBlocks`` is the
embedding-side equivalent: seeded uniform vectors of a given dimension as a block source.

Memory: driver O(A x 6 + the tag rows of the anchors and of each gallery block); task O(chunk x block +
(chunk + block) x (d + dT)). Sums are merged in gallery-block order: the same bits on every runner for one
block layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from embedeval.engine.runner import TileRunner
from embedeval.engine.sources import BlockSource, even_offsets
from embedeval.engine.tiles import QueryChunk, tile_reduce

# Random rows are made in fixed chunks of this many rows, each from its own seeded generator, so row i's
# vector depends only on (seed, i), never on block sizes or on which rows are asked for together.
_RANDOM_CHUNK = 64


def uniform_rows(seed: int, dim: int, rows: np.ndarray) -> np.ndarray:
    """(len(rows), dim) float64 uniform [0, 1) vectors, row i a function of (seed, i) only."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((rows.size, dim))
    chunk_of = rows // _RANDOM_CHUNK
    for c in np.unique(chunk_of):
        at = np.flatnonzero(chunk_of == c)
        block = np.random.default_rng([int(seed), int(c)]).random((_RANDOM_CHUNK, dim))
        out[at] = block[rows[at] - c * _RANDOM_CHUNK]
    return out


class UniformRandomBlocks(BlockSource):
    """n seeded uniform [0, 1) vectors of dimension ``dim`` (float32), made when a block is loaded."""

    def __init__(self, n: int, dim: int, seed: int, block_rows: int = 32768) -> None:
        self.n, self.dim, self.seed = int(n), int(dim), int(seed)
        self.offsets = even_offsets(self.n, block_rows)

    def load(self, b: int) -> np.ndarray:
        lo, hi = self.block_range(b)
        return uniform_rows(self.seed, self.dim, np.arange(lo, hi)).astype(np.float32)


@dataclass(frozen=True)
class RandomTags:
    """Seeded uniform random tag vectors of dimension ``dim`` for entities ``codes`` (unit when used)."""

    seed: int
    dim: int
    codes: np.ndarray

    def __getitem__(self, index: Any) -> "RandomTags":
        """The entities at ``index`` (a slice or an index array), like rows of a CSR tag side."""
        return RandomTags(self.seed, self.dim, np.asarray(self.codes[index], dtype=np.int64))

    def unit(self) -> np.ndarray:
        v = uniform_rows(self.seed, self.dim, self.codes)
        return v / np.linalg.norm(v, axis=1, keepdims=True)



def _tag_rows(side: Any) -> Any:
    return side.unit() if isinstance(side, RandomTags) else side


def paper_cosines(q: np.ndarray, g: np.ndarray, float16: bool = False, decimals: int | None = None) -> np.ndarray:
    """(len(q), len(g)) float64 cosines; with ``float16`` the vectors are first stored as float16, with
    ``decimals`` the cosines are rounded (numpy's half-to-even, as pandas ``round``)."""
    dtype = np.float16 if float16 else np.float32
    q64 = np.asarray(q, dtype=dtype).astype(np.float64)
    g64 = np.asarray(g, dtype=dtype).astype(np.float64)
    x = (q64 @ g64.T) / np.outer(np.linalg.norm(q64, axis=1), np.linalg.norm(g64, axis=1))
    return np.round(x, decimals) if decimals is not None else x


def group_pearson_tile(q: np.ndarray, q_lo: int, g: np.ndarray, g_lo: int, q_tags: Any, g_tags: Any, *,
                       float16: bool, decimals: int | None) -> np.ndarray:
    """Tile kernel: (len(q), 6) Pearson sums (n, sx, sy, sxx, syy, sxy) of each query over this block."""
    x = paper_cosines(q, g, float16, decimals)
    a, b = _tag_rows(q_tags), _tag_rows(g_tags)
    y = a @ b.T
    y = np.asarray(y.toarray() if sp.issparse(y) else y, dtype=np.float64)
    return np.column_stack([np.full(x.shape[0], float(x.shape[1])), x.sum(axis=1), y.sum(axis=1),
                            (x * x).sum(axis=1), (y * y).sum(axis=1), (x * y).sum(axis=1)])


def group_anchor_sums(anchors: BlockSource, anchor_tags: Any, gallery: BlockSource, gallery_tags: Any, *,
                      float16: bool = False, decimals: int | None = None, chunk_rows: int = 1024,
                      runner: TileRunner | None = None) -> np.ndarray:
    """(A, 6) per-anchor Pearson sums of (x_ao, y_ao) over every gallery row o; see the module docstring.

    ``anchor_tags`` / ``gallery_tags``: a CSR of unit (or zero) rows aligned with ``anchors`` / ``gallery``
    rows, or ``RandomTags`` with one code per row. Memory as stated in the module docstring.
    """
    out = np.zeros((anchors.n, 6))
    block_args = [gallery_tags[slice(*gallery.block_range(b))] for b in range(gallery.n_blocks)]

    def on_chunk(chunk: QueryChunk, state: np.ndarray) -> None:
        out[chunk.lo:chunk.hi] = state

    tile_reduce(group_pearson_tile, anchors, gallery,
                init=lambda c: np.zeros((c.hi - c.lo, 6)), merge=lambda s, t: s + t, on_chunk=on_chunk,
                chunk_rows=chunk_rows, params={"float16": float16, "decimals": decimals},
                chunk_arg=lambda c: anchor_tags[c.lo:c.hi], block_args=block_args, runner=runner)
    return out


__all__: Sequence[str] = ["RandomTags", "UniformRandomBlocks", "group_anchor_sums", "group_pearson_tile",
                          "paper_cosines", "uniform_rows"]
