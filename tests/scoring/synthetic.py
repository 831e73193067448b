"""A tiny tagged catalogue whose embeddings encode colour (and optionally nothing), for direction tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
CATEGORIES = {**{c: "colour" for c in COLOURS}, **{s: "shape" for s in SHAPES}}


def tagged_catalogue(n: int, rng: np.random.Generator, untagged: int = 0) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(manifest, colour index, shape index); the first ``untagged`` items have no colour tag."""
    colour = rng.integers(0, len(COLOURS), n)
    shape = rng.integers(0, len(SHAPES), n)
    tags = [([COLOURS[c]] if i >= untagged else []) + [SHAPES[s]] for i, (c, s) in enumerate(zip(colour, shape))]
    table = pa.table({"id": [f"it{i:04d}" for i in range(n)], "tags": tags,
                      "label": [SHAPES[s] for s in shape]})
    return table, colour, shape


def colour_embeddings(colour: np.ndarray, rng: np.random.Generator, d: int = 16, strength: float = 3.0) -> np.ndarray:
    X = rng.normal(size=(colour.size, d))
    X[np.arange(colour.size), colour] += strength
    return X
