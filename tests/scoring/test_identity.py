"""Score identity is stable as a catalogue grows: counts, seeds and sample sizes are parameters, so a
nightly diff compares every score with last night's instead of listing it as removed and added."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from embedeval.io.embeddings import CommitRecord, PartFile, embeddings_table, partition_dir, table_checksum, \
    write_commit_marker
from embedeval.io.storage import Storage
from embedeval.report.build import build_report
from embedeval.report.diff import diff_scores
from embedeval.report.scores import load_scores
from embedeval.report.settings import ReportSettings
from embedeval.scoring.job import score_run
from embedeval.scoring.settings import ScoreSettings

from .synthetic import CATEGORIES, COLOURS, SHAPES


def _partition(storage: Storage, run: str, model: str, modality: str, ids: list[str], subs: list[int],
               vectors: np.ndarray) -> None:
    table = embeddings_table(ids, subs, vectors)
    rel = f"{partition_dir(run, model, modality)}/part-00000.parquet"
    storage.write_parquet(rel, table)
    write_commit_marker(storage, CommitRecord(run, model, modality, vectors.shape[1],
                                              [PartFile(rel, table.num_rows, table_checksum(table))],
                                              table.num_rows, 0, {}))


def _catalogue(storage: Storage, run: str, n: int, n_labels: int, base: np.ndarray) -> pa.Table:
    """n items whose vectors are rows of ``base`` (shared across runs); labels cycle over n_labels."""
    rng = np.random.default_rng(7)
    colour = np.arange(n) % len(COLOURS)
    shape = np.arange(n) % len(SHAPES)
    label = np.arange(n) % n_labels
    ids = [f"item{i:05d}" for i in range(n)]
    table = pa.table({
        "id": ids,
        "tags": [[COLOURS[c], SHAPES[s]] for c, s in zip(colour, shape)],
        "label": [f"class{x}" for x in label],
        "captions": [[f"{COLOURS[c]} {SHAPES[s]}"] for c, s in zip(colour, shape)],
        "attr_size": base[:n, 0].astype(np.float64),
        "split": ["train" if i % 3 else "test" for i in range(n)],
        "class_split": ["unseen" if x % 4 == 0 else "seen" for x in label],
    })
    image = base[:n].copy()
    image[np.arange(n), 8 + label % 8] += 3.0
    _partition(storage, run, "m", "image", ids, [0] * n, image)
    _partition(storage, run, "m", "text", ids, [0] * n, image + 0.1 * rng.normal(size=image.shape))
    _partition(storage, run, "m", "sketch", ids, [0] * n, image + 0.5 * rng.normal(size=image.shape))
    return table


def test_a_growing_catalogue_compares_every_score(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    base = np.random.default_rng(0).normal(size=(1200, 24)).astype(np.float32)
    settings = ScoreSettings(use_ray=False, bootstrap_resamples=10, corr_ks=[10], fewshot_ns=[5], fewshot_repeats=2,
                             spearman_max_pairs=50_000, kmeans_iters=10)
    # night 1: 800 tagged items (fewer than the 1,000 CorrEmbed anchors: every item anchors), 8 labels
    score_run(storage, "night1", _catalogue(storage, "night1", 800, 8, base), CATEGORIES, settings)
    # night 2: 1,200 items (a seeded sample of 1,000 anchors now) and a ninth label (k-means k 8 -> 9)
    score_run(storage, "night2", _catalogue(storage, "night2", 1200, 9, base), CATEGORIES, settings)

    old, new = load_scores(storage, "night1"), load_scores(storage, "night2")
    d = diff_scores(new, old, "night2", "night1", "given")
    assert not d.added and not d.removed, ([r.metric for r in d.added], [r.metric for r in d.removed])
    assert len(d.compared) == len(new) == len(old) > 40
    changed = {(x.new.task, x.new.metric, x.new.protocol): x.params_change for x in d.compared if x.params_change}
    assert changed[("corrembed", "corrembed", "per-anchor")] == "anchors all→1000, seed —→0"
    assert changed[("prototypes", "nmi", "kmeans")] == "k 8→9"
    # Spearman samples the same number of items both nights: same params, a plain comparison
    sp = next(x for x in d.compared if x.new.metric == "spearman_all" and x.new.target == "all")
    assert sp.new.params["pairs"] == "sampled-items" and not sp.params_change

    build_report(storage, "night2", previous_run_id="night1", settings=ReportSettings(dpi=50))
    md = storage.read_bytes("runs/night2/report/diff.md").decode()
    assert "score rows added: 0; removed: 0" in md
    assert "changed: anchors all→1000" in md and "changed: k 8→9" in md
