"""Small builders shared by the scoring tests: a catalogue view, a checked embedding set, a task context."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from embedeval.engine.runner import LocalRunner
from embedeval.engine.sources import ArrayBlocks
from embedeval.scoring.context import CatalogueView, ModalityEmbeddings, TaskContext
from embedeval.scoring.settings import ScoreSettings


TEST_BLOCK_ROWS = 23


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_context(manifest: pa.Table, **settings: Any) -> TaskContext:
    settings.setdefault("bootstrap_resamples", 50)
    settings.setdefault("use_ray", False)
    return TaskContext("run", "m", False, ScoreSettings(**settings), CatalogueView.from_table(manifest), LocalRunner())


def make_embeddings(ctx: TaskContext, modality: str, ids: list[str], vectors: np.ndarray,
                    subs: list[int] | None = None) -> ModalityEmbeddings:
    subs = list(subs) if subs is not None else [0] * len(ids)
    order = np.array(sorted(range(len(ids)), key=lambda i: (ids[i], subs[i])), dtype=np.int64)
    ids_a = np.asarray(ids, dtype=object)[order]
    subs_a = np.asarray(subs, dtype=np.int16)[order]
    rows = ctx.catalogue.rows_of(list(ids_a))
    assert (rows >= 0).all(), "every test embedding id must be in the manifest"
    unit = unit_rows(np.asarray(vectors)[order]).astype(np.float32)
    # small blocks, so the tests exercise multi-block tiles and merges
    return ModalityEmbeddings(modality, ArrayBlocks(unit, block_rows=TEST_BLOCK_ROWS), rows, subs_a)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
