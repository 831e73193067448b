"""Modality gap: centroid distance by brute force; removing a planted offset helps R@1."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from embedeval.scoring.modality_gap import centre_and_normalise, score_modality_gap

from . import reference as ref
from .conftest import make_context, make_embeddings, unit_rows


def test_gap_and_gain(rng: np.random.Generator) -> None:
    n, d = 50, 16
    ids = [f"i{j:03d}" for j in range(n)]
    base = rng.normal(size=(n, d))
    offset = np.zeros(d)
    offset[0] = 6.0                                       # a strong shared direction per modality
    images = base + offset
    texts = base + 0.8 * rng.normal(size=(n, d)) - offset
    table = pa.table({"id": ids})
    ctx = make_context(table, bootstrap_resamples=40)
    rows = {r.metric: r for r in score_modality_gap(ctx, make_embeddings(ctx, "image", ids, images),
                                                       make_embeddings(ctx, "text", ids, texts))}
    I, T = unit_rows(images), unit_rows(texts)
    gap = np.linalg.norm(I.mean(0) - T.mean(0))
    assert rows["centroid_distance"].value == pytest.approx(gap, rel=1e-5)
    assert rows["centroid_distance"].ci_low <= gap <= rows["centroid_distance"].ci_high
    before = np.mean(ref.best_ranks(I, T, [[i] for i in range(n)]) == 1)
    Ic, Tc = centre_and_normalise(I.astype(np.float32)), centre_and_normalise(T.astype(np.float32))
    after = np.mean(ref.best_ranks(Ic.astype(np.float64), Tc.astype(np.float64), [[i] for i in range(n)]) == 1)
    gain = rows["gap_gain@R@1"]
    assert gain.value == pytest.approx(after - before) and gain.value > 0
    assert gain.k == 1 and gain.n == n
