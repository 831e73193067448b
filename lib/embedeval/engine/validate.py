"""Input checks shared by every engine entry point: shape, finiteness, matching dimensions, unit rows.

Each check raises a ``ValueError`` that names the argument, how many rows are bad and the first one, so
a wrong number is never returned silently. Checks stream over row chunks: memory O(chunk x d).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_CHUNK_ROWS = 65536
UNIT_TOLERANCE = 1e-3


def as_matrix(name: str, x: np.ndarray, dtype: type | None = np.float32) -> np.ndarray:
    """Return ``x`` as a C-contiguous 2-D array of ``dtype`` with only finite values.

    ``dtype=None`` keeps float64 input as float64 and makes anything else float32. Copies only when
    ``x`` is not already C-contiguous in the target dtype. Raises ``ValueError`` when ``x`` is
    not 2-D, is empty in its columns, or has rows with NaN or Inf (the message counts them).
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows x dims) matrix; got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns; embeddings need at least one dimension")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must hold floats; got dtype {arr.dtype}")
    check_finite_rows(name, arr)
    if dtype is None:
        dtype = np.float64 if arr.dtype == np.float64 else np.float32
    return np.ascontiguousarray(arr, dtype=dtype)


def _count_bad_rows(x: np.ndarray, is_bad: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int]:
    """(how many rows ``is_bad`` flags, index of the first or -1), in chunks so memory stays O(chunk)."""
    bad_count, first_bad = 0, -1
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        bad = is_bad(x[start:start + _CHUNK_ROWS])
        n_bad = int(bad.sum())
        if n_bad and first_bad < 0:
            first_bad = start + int(np.argmax(bad))
        bad_count += n_bad
    return bad_count, first_bad


def check_finite_rows(name: str, x: np.ndarray) -> None:
    """Raise ``ValueError`` naming the count and first index of rows of ``x`` holding NaN or Inf."""
    bad_count, first_bad = _count_bad_rows(x, lambda chunk: ~np.isfinite(chunk).all(axis=1))
    if bad_count:
        raise ValueError(
            f"{name} has {bad_count} row(s) with NaN or Inf values (first at row {first_bad}); "
            "drop or re-embed those items before scoring"
        )


def check_same_dim(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    """Raise ``ValueError`` when two matrices do not share their number of columns."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} has {a.shape[1]} columns but {name_b} has {b.shape[1]}; "
            "both must come from the same embedding space"
        )


def check_same_rows(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    """Raise ``ValueError`` when two row-aligned inputs differ in length."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} has {a.shape[0]} rows but {name_b} has {b.shape[0]}; they must describe the same items"
        )


def check_unit_rows(name: str, x: np.ndarray, tolerance: float = UNIT_TOLERANCE) -> None:
    """Raise ``ValueError`` when rows of ``x`` are not unit length (zero rows included).

    Cosine similarity is only the inner product on unit rows; callers normalise, and items without a
    vector (a zero row, e.g. an item with no tags) must be dropped by the caller, not scored as 0.
    """
    def not_unit(chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float64)
        return np.abs(np.sqrt(np.einsum("ij,ij->i", chunk, chunk)) - 1.0) > tolerance

    bad_count, first_bad = _count_bad_rows(x, not_unit)
    if bad_count:
        raise ValueError(
            f"{name} has {bad_count} row(s) that are not unit length (first at row {first_bad}); "
            "L2-normalise the vectors and drop zero rows (items with no vector) before scoring"
        )


def check_block_size(block_size: int) -> int:
    """Return ``block_size`` as an int, raising ``ValueError`` unless it is positive."""
    if int(block_size) < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size}")
    return int(block_size)


def as_query_gallery(Q: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q and G as float32 matrices of equal width; G stays the same object as Q when it was Q."""
    same = G is Q
    Q = as_matrix("Q", Q)
    G = Q if same else as_matrix("G", G)
    check_same_dim("Q", Q, "G", G)
    return Q, G


def as_unit_pair(E: np.ndarray, T: np.ndarray, e_dtype: type | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row-aligned embeddings E and tag vectors T with unit rows (``e_dtype`` as in ``as_matrix``)."""
    E = as_matrix("E", E, dtype=e_dtype)
    T = as_matrix("T", T, dtype=None)
    check_same_rows("E", E, "T", T)
    check_unit_rows("E", E)
    check_unit_rows("T", T)
    return E, T


def as_row_indices(name: str, rows: np.ndarray | None, n: int) -> np.ndarray:
    """``rows`` as int64 indices into range(n) (all of them when None); repeats allowed."""
    idx = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
        raise ValueError(f"{name} must be a 1-D array of row indices in [0, {n})")
    return idx
