"""Preparing committed embeddings into scoring blocks: the blocks hold exactly the checked, normalised,
(id, sub)-ordered vectors; the shuffle's waves and block sizes change nothing; unchanged inputs are reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedeval.engine.runner import LocalRunner, RayRunner, TileRunner
from embedeval.io.embeddings import read_committed
from embedeval.io.storage import Storage
from embedeval.scoring.context import CatalogueView, ScoringError
from embedeval.scoring.prepare import blocks_dir, prepare_partition

from .test_job import RUN, make_manifest, write_partition


def _expected(storage: Storage, catalogue: CatalogueView, modality: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """The reference: read the whole partition, keep usable ids of the manifest, normalise (old job path)."""
    raw = read_committed(storage, RUN, "m", modality)
    rows = catalogue.rows_of(list(raw.ids))
    finite = np.isfinite(raw.vectors).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], raw.vectors, 0).astype(np.float64), axis=1)
    keep = (rows >= 0) & finite & (norms > 0)
    unit = (raw.vectors[keep].astype(np.float64) / norms[keep, None]).astype(np.float32)
    return rows[keep], unit


@pytest.fixture
def run(tmp_path: Path, rng: np.random.Generator) -> tuple[Storage, CatalogueView]:
    storage = Storage(str(tmp_path))
    manifest, _, _, _ = make_manifest(rng)
    ids = manifest.column("id").to_pylist()
    order = rng.permutation(len(ids))                      # files not in id order: the shuffle must sort
    X = rng.normal(size=(len(ids), 6))
    X[3] = np.nan
    X[4] = 0.0
    shuffled = [ids[i] for i in order] + ["ghost"]
    write_partition(storage, "m", "image", shuffled, [0] * len(shuffled), np.vstack([X[order], np.ones(6)]), n_files=5)
    return storage, CatalogueView.from_table(manifest)


@pytest.mark.parametrize("block_rows,wave_bytes", [(7, 10**9), (7, 100), (1000, 10**9)])
def test_blocks_hold_the_checked_sorted_unit_vectors(run: tuple[Storage, CatalogueView], block_rows: int,
                                                     wave_bytes: int) -> None:
    storage, catalogue = run
    prepared = prepare_partition(storage, RUN, "m", "image", catalogue, LocalRunner(), block_rows=block_rows,
                                 wave_bytes=wave_bytes)
    emb = prepared.embeddings
    rows, unit = _expected(storage, catalogue)
    assert np.array_equal(emb.rows, rows) and emb.source.n == 58
    assert emb.unit.tobytes() == unit.tobytes()            # bit for bit
    assert emb.excluded == {"ids not in manifest": 1, "NaN/Inf vectors": 1, "zero vectors": 1}
    assert emb.source.n_blocks == -(-58 // block_rows)


def test_ray_shuffle_writes_the_same_blocks(run: tuple[Storage, CatalogueView], ray_local: None) -> None:
    storage, catalogue = run
    local = prepare_partition(storage, RUN, "m", "image", catalogue, LocalRunner(), block_rows=9, wave_bytes=200)
    storage.delete_dir(blocks_dir(RUN, "m", "image"))
    on_ray = prepare_partition(storage, RUN, "m", "image", catalogue, RayRunner(), block_rows=9, wave_bytes=200)
    assert on_ray.embeddings.unit.tobytes() == local.embeddings.unit.tobytes()
    assert np.array_equal(on_ray.embeddings.rows, local.embeddings.rows)


def test_unchanged_inputs_reuse_the_blocks_and_changed_ones_rebuild(run: tuple[Storage, CatalogueView],
                                                                    rng: np.random.Generator) -> None:
    storage, catalogue = run
    runner: TileRunner = LocalRunner()
    first = prepare_partition(storage, RUN, "m", "image", catalogue, runner, block_rows=10)
    block = Path(storage.path(f"{blocks_dir(RUN, 'm', 'image')}/block-000000.npy"))
    stamp = block.stat().st_mtime_ns
    again = prepare_partition(storage, RUN, "m", "image", catalogue, runner, block_rows=10)
    assert block.stat().st_mtime_ns == stamp               # reused, not rewritten
    assert again.embeddings.unit.tobytes() == first.embeddings.unit.tobytes()
    # re-embedded vectors (a new commit) are prepared again
    manifest_ids = catalogue.ids.to_pylist()
    write_partition(storage, "m", "image", manifest_ids, [0] * len(manifest_ids), rng.normal(size=(60, 6)), n_files=2)
    fresh = prepare_partition(storage, RUN, "m", "image", catalogue, runner, block_rows=10)
    rows, unit = _expected(storage, catalogue)
    assert fresh.embeddings.unit.tobytes() == unit.tobytes() and fresh.embeddings.excluded == {}


def test_duplicate_rows_are_a_clear_error(tmp_path: Path, rng: np.random.Generator) -> None:
    storage = Storage(str(tmp_path))
    manifest, _, _, _ = make_manifest(rng)
    write_partition(storage, "m", "image", ["item001", "item001", "item002"], [0, 0, 0], rng.normal(size=(3, 4)),
                    n_files=1)
    with pytest.raises(ScoringError, match="duplicate \\(id, sub\\) 'item001'"):
        prepare_partition(storage, RUN, "m", "image", CatalogueView.from_table(manifest), LocalRunner())


def test_catalogue_view_holds_codes_not_python_objects(rng: np.random.Generator) -> None:
    manifest, _, shape, _ = make_manifest(rng)
    manifest = manifest.set_column(manifest.column_names.index("label"), "label",
                                   pa.array([None, ""] + manifest.column("label").to_pylist()[2:]))
    view = CatalogueView.from_table(manifest)
    assert view.labels is not None and view.labels.codes.dtype == np.int64
    assert (view.labels.codes[:2] == -1).all() and (view.labels.codes[2:] >= 0).all()
    assert view.rows_of(["item005", "nope", "item000"]).tolist() == [5, -1, 0]
    assert view.split is not None and view.split.mask("train").sum() == 40
    with pytest.raises(ScoringError, match="appears more than once"):
        CatalogueView.from_table(pa.table({"id": ["a", "b", "a"]}))
