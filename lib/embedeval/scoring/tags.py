"""Weighted tag vectors: the human side of CorrEmbed.

One dimension per tag; an item's vector holds the tag's weight where the item has the tag, 0 elsewhere,
and human similarity of two items is the cosine of their vectors. Vectors exist per tag category (colour,
pattern, ...) and overall (``all``).

Weights. With a category-weight table every tag of a category carries that category's weight, as in the
CorrEmbed paper (there: 1 - mean normalised entropy of the category over customers' order histories).
Without one, a tag is weighed by how informative its presence is over the catalogue:

- ``entropy`` (default): the binary entropy, in bits, of the presence indicator, H(p) with p the share of
  tagged items carrying the tag. A tag on every item (p = 1) or on none weighs 0, a tag splitting the
  catalogue in half weighs 1. Rare tags weigh little: a tag on 1 item in 10,000 says almost nothing about
  the similarity structure of the catalogue, and IDF would let it dominate its items' vectors.
- ``idf``: log(N / df), the text-retrieval classic; also 0 for tags on every item, largest for rare tags.

p and df are counted over items with at least one tag (an item with no tag list is unknown, not
"absent from every tag"). Items whose vector is zero in a target (no tags in that category, or only
weight-0 tags) have no defined cosine there; callers exclude them and count them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from embedeval.errors import EmbedevalError

ALL_TARGET = "all"
UNCATEGORISED = "uncategorised"


class TagError(EmbedevalError, ValueError):
    """Tag inputs cannot produce a vector; the message names the tag or category and the remedy."""


@dataclass
class TagVectors:
    """Weighted tag vectors of every catalogue item for one target (a category or ``all``)."""

    target: str
    tags: list[str]               # column names
    weights: np.ndarray           # (n_tags,) float64 weight per column
    matrix: sp.csr_matrix         # (n_items, n_tags) float64: weight where the item has the tag
    presence: sp.csr_matrix | None = None   # (n_items, n_tags) 0/1: which item carries which tag

    def binary(self) -> "TagVectors":
        """The same tags with every weight 1 (the binary-weight control); needs ``presence``."""
        if self.presence is None:
            raise TagError(f"target {self.target!r}: binary tag weights need the presence matrix "
                           "(build tag vectors with build_tag_vectors)")
        return TagVectors(self.target, list(self.tags), np.ones(len(self.tags)), sp.csr_matrix(self.presence),
                          self.presence)

    def unit_or_zero(self, rows: np.ndarray) -> sp.csr_matrix:
        """L2-normalised vectors of ``rows`` as CSR; rows without a vector stay 0 (their cosines are 0)."""
        sub = sp.csr_matrix(self.matrix[np.asarray(rows, dtype=np.int64)], dtype=np.float64)
        norms = np.sqrt(np.asarray(sub.multiply(sub).sum(axis=1)).ravel())
        sub.data = sub.data / np.repeat(np.where(norms > 0, norms, 1.0), np.diff(sub.indptr))
        return sub

    @property
    def norms(self) -> np.ndarray:
        return np.sqrt(np.asarray(self.matrix.multiply(self.matrix).sum(axis=1)).ravel())

    @property
    def has_vector(self) -> np.ndarray:
        """Items with a non-zero vector here (the only ones with a defined tag cosine)."""
        return self.norms > 0

    def unit_sparse(self, rows: np.ndarray) -> sp.csr_matrix:
        """L2-normalised vectors of ``rows`` as CSR (callers pass only rows with ``has_vector``).

        The same values as ``unit_rows``, kept sparse: memory O(tags of those rows).
        """
        sub = sp.csr_matrix(self.matrix[np.asarray(rows, dtype=np.int64)], dtype=np.float64)
        norms = np.sqrt(np.asarray(sub.multiply(sub).sum(axis=1)).ravel())
        if np.any(norms == 0):
            raise TagError(f"target {self.target!r}: unit_sparse got items without tags; filter with has_vector")
        sub.data = sub.data / np.repeat(norms, np.diff(sub.indptr))
        return sub

    def unit_rows(self, rows: np.ndarray) -> np.ndarray:
        """Dense L2-normalised vectors of ``rows`` (callers pass only rows with ``has_vector``)."""
        dense = np.asarray(self.matrix[rows].todense(), dtype=np.float64)
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise TagError(f"target {self.target!r}: unit_rows got items without tags; filter with has_vector")
        return dense / norms


def presence_matrix(tags: "pa.Array | Sequence[Sequence[str] | None]") -> tuple[sp.csr_matrix, list[str]]:
    """(n_items, n_tags) 0/1 CSR of which item carries which tag, and the sorted tag names.

    ``tags`` is an Arrow list<string> column (or a Python list of lists). Built with Arrow kernels:
    no Python loop over items, memory O(number of tags given).
    """
    arr = tags if isinstance(tags, (pa.Array, pa.ChunkedArray)) else pa.array(list(tags), pa.list_(pa.string()))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.list_(pa.string()))
    n = len(arr)
    item = np.asarray(pc.list_parent_indices(arr).to_numpy(zero_copy_only=False), dtype=np.int64) if n else \
        np.zeros(0, np.int64)
    values = pc.list_flatten(arr)
    valid = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)
    vocab = sorted(v for v in pc.unique(values).to_pylist() if v is not None)
    col = pc.index_in(values, value_set=pa.array(vocab, pa.string()))
    cols = np.asarray(pc.fill_null(col, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    item, cols = item[valid], cols[valid]
    m = sp.csr_matrix((np.ones(item.size, dtype=np.float64), (item, cols)), shape=(n, len(vocab)))
    m.sum_duplicates()
    m.data[:] = 1.0  # a tag listed twice for an item is present once
    return m, vocab


def informative_weights(presence: sp.csr_matrix, method: Literal["entropy", "idf"] = "entropy") -> np.ndarray:
    """Per-tag weight from its presence over tagged items (see module docstring); 0 for tags on every item."""
    tagged = np.asarray(presence.sum(axis=1)).ravel() > 0
    n = int(tagged.sum())
    df = np.asarray(presence.sum(axis=0), dtype=np.float64).ravel()
    if n == 0:
        return np.zeros_like(df)
    p = np.clip(df / n, 0.0, 1.0)
    if method == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        return np.nan_to_num(h, nan=0.0)
    if method == "idf":
        with np.errstate(divide="ignore"):
            return np.where(df > 0, np.log(n / np.maximum(df, 1)), 0.0)
    raise TagError(f"unknown tag weighting {method!r}; use 'entropy' or 'idf' (score.tag_weighting)")


def build_tag_vectors(tags: Sequence[Sequence[str] | None], categories: dict[str, str] | None = None,
                      category_weights: dict[str, float] | None = None,
                      weighting: Literal["entropy", "idf"] = "entropy") -> list[TagVectors]:
    """Tag vectors for ``all`` and, when ``categories`` (tag -> category) is given, for each category.

    Tags missing from ``categories`` fall in the category ``uncategorised``. With ``category_weights``
    every category that has tags must have a weight (a missing one raises: silently weighing it 0 would
    drop those tags from the analysis without a trace).
    """
    presence, vocab = presence_matrix(tags)
    tag_category = {t: (categories or {}).get(t, UNCATEGORISED) for t in vocab}
    if category_weights is not None:
        used = sorted(set(tag_category.values()))
        missing = [c for c in used if c not in category_weights]
        if missing:
            raise TagError(f"category_weights has no weight for categories {missing}; add them "
                           f"(or map their tags to a weighted category in the tag-category table)")
        bad = {c: w for c, w in category_weights.items() if not np.isfinite(w) or w < 0}
        if bad:
            raise TagError(f"category_weights must be finite and >= 0, got {bad}")
        weights = np.array([float(category_weights[tag_category[t]]) for t in vocab], dtype=np.float64)
    else:
        weights = informative_weights(presence, weighting)

    weighted = sp.csr_matrix(presence.multiply(weights[None, :])) if vocab else presence
    out = [TagVectors(ALL_TARGET, list(vocab), weights, weighted, presence)]
    if categories is not None:
        for cat in sorted(set(tag_category.values())):
            cols = np.array([j for j, t in enumerate(vocab) if tag_category[t] == cat], dtype=np.int64)
            out.append(TagVectors(cat, [vocab[j] for j in cols], weights[cols], sp.csr_matrix(weighted[:, cols]),
                                  sp.csr_matrix(presence[:, cols])))
    return out


_DOT_CHUNK = 262144


def sparse_row_dots(T: sp.csr_matrix, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 ``T[a[m]] . T[b[m]]`` for each m, without densifying: memory O(chunk x tags per row)."""
    a = np.asarray(a, dtype=np.int64).ravel()
    b = np.asarray(b, dtype=np.int64).ravel()
    out = np.empty(a.size)
    for s in range(0, a.size, _DOT_CHUNK):
        out[s:s + _DOT_CHUNK] = np.asarray(T[a[s:s + _DOT_CHUNK]].multiply(T[b[s:s + _DOT_CHUNK]]).sum(axis=1)).ravel()
    return out
