"""A vectors-only manifest (id and metadata, no media) with precomputed models: embed and score end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from embedeval.cli import main
from embedeval.io.embeddings import read_commit_marker, read_committed
from embedeval.io.storage import Storage

CLASSES = ("cat", "dog", "owl", "eel")
N_PHOTOS, N_SKETCHES, DIM = 32, 12, 8


def _catalogue(tmp_path: Path) -> tuple[Path, Path]:
    """A manifest of photos and sketches (no media columns) and vectors that cluster by class.

    Image vectors: the class direction plus ``size`` along a shared axis, so labels, tags and the
    attribute are all recoverable; sketch vectors: the class direction. One image vector is NaN, one
    vector belongs to no manifest item.
    """
    rng = np.random.default_rng(3)
    centres = np.eye(DIM)[: len(CLASSES)] * 4.0
    axis = np.eye(DIM)[-1]
    ids, labels, tags, sizes, splits, class_splits = [], [], [], [], [], []
    rows = []
    for i in range(N_PHOTOS + N_SKETCHES):
        sketch = i >= N_PHOTOS
        c = i % len(CLASSES)
        size = float(rng.uniform(-1, 1))
        rid = f"{'sketch' if sketch else 'photo'}-{i:03d}"
        ids.append(rid)
        labels.append(CLASSES[c])
        tags.append([CLASSES[c], "big" if size > 0 else "small"])
        sizes.append(size)
        splits.append("train" if i % 2 else "test")
        class_splits.append("unseen" if CLASSES[c] == "eel" else "seen")
        vector = centres[c] + 0.3 * rng.normal(size=DIM) + (0.0 if sketch else 2.0 * size * axis)
        rows.append((rid, 0, "sketch" if sketch else "image", vector))
        if not sketch:  # two captions' vectors per photo, near its image vector
            rows.extend((rid, k, "text", vector + 0.2 * rng.normal(size=DIM)) for k in (0, 1))
    rows[15] = ("photo-005", 0, "image", np.full(DIM, np.nan))
    rows.append(("not-in-manifest", 0, "image", np.ones(DIM)))
    manifest = pa.table({"id": ids, "tags": pa.array(tags, pa.list_(pa.string())), "label": labels,
                         "attr_size": sizes, "split": splits, "class_split": class_splits})
    pq.write_table(manifest, tmp_path / "manifest.parquet")
    vectors = pa.table({
        "id": [r[0] for r in rows], "sub": [r[1] for r in rows], "modality": [r[2] for r in rows],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate([r[3] for r in rows]), pa.float32()), DIM),
    })
    pq.write_table(vectors, tmp_path / "vectors.parquet")
    return tmp_path / "manifest.parquet", tmp_path / "vectors.parquet"


def _config(tmp_path: Path, models: list) -> Path:
    manifest, _ = _catalogue(tmp_path)
    config = {"root": str(tmp_path / "out"), "run_id": "v1", "manifest": str(manifest), "models": models,
              "score": {"bootstrap_resamples": 20, "fewshot_repeats": 2, "fewshot_ns": [2], "corr_anchors": "all",
                        "corr_ks": [5], "map_cutoffs": [5], "precision_ks": [5]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_vectors_only_manifest_embeds_and_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, [{"spec": f"precomputed:{tmp_path / 'vectors.parquet'}", "name": "mine"}])
    assert main(["embed", "--config", str(config)]) == 0, capsys.readouterr().err
    storage = Storage(str(tmp_path / "out"))
    image = read_committed(storage, "v1", "mine", "image")
    sketch = read_committed(storage, "v1", "mine", "sketch")
    # Each modality holds the items that have a vector of it; the NaN one is quarantined, the stranger ignored.
    assert sorted(image.ids.tolist()) == [f"photo-{i:03d}" for i in range(N_PHOTOS) if i != 5]
    assert sorted(sketch.ids.tolist()) == [f"sketch-{i:03d}" for i in range(N_PHOTOS, N_PHOTOS + N_SKETCHES)]
    marker = read_commit_marker(storage, "v1", "mine", "image")
    assert (marker.rows, marker.quarantined) == (N_PHOTOS - 1, 1)
    text = read_committed(storage, "v1", "mine", "text")   # no captions column: the file's (id, sub) rows
    assert sorted(zip(text.ids.tolist(), text.subs.tolist())) == [(f"photo-{i:03d}", k) for i in range(N_PHOTOS)
                                                                  for k in (0, 1)]

    assert main(["score", "--config", str(config)]) == 0, capsys.readouterr().err
    scores = pq.read_table(tmp_path / "out" / "runs" / "v1" / "scores" / "scores.parquet").to_pylist()

    def value(task: str, target: str, metric: str, **kw: object) -> float:
        (row,) = [r for r in scores if (r["task"], r["target"], r["metric"]) == (task, target, metric)
                  and all(r[k] == v for k, v in kw.items())]
        assert row["model"] == "mine" and row["value"] is not None, row
        return row["value"]

    # The vectors carry the classes, the tags and the attribute; wrong ids or rows would score near chance.
    assert value("retrieval", "sketch->image", "mAP@all", split="all") > 0.9
    assert value("retrieval", "sketch->image", "mAP@all", split="unseen") > 0.9
    assert value("rankability", "size", "spearman", protocol="regression") > 0.8
    assert value("corrembed", "all", "pearson_all", protocol="all-pairs") > 0.5
    assert value("prototypes", "image", "nmi") > 0.9
    assert value("retrieval", "text->image", "R@5") > 0.9
    assert not [r for r in scores if r["metric"] == "failed"]


def test_a_media_model_with_a_vectors_only_manifest_is_one_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, [f"precomputed:{tmp_path / 'vectors.parquet'}", "builtin:pixelstats"])
    assert main(["embed", "--config", str(config)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"embedeval: error: manifest {tmp_path / 'manifest.parquet'} has no image, sketch or captions column, but "
        "model 'builtin-pixelstats' (builtin:pixelstats) embeds media; add a media column, or list only "
        "precomputed: models for a vectors-only manifest"]
