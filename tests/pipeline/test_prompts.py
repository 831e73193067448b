"""The ``prompt`` partition from the embed stage: an open_clip text tower's prompts and a precomputed file's rows,
committed in the embeddings contract and scored by zero-shot classification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedeval.config import parse_config
from embedeval.demo.corpus import write_demo_corpus
from embedeval.io.embeddings import read_commit_marker, read_committed
from embedeval.io.prompts import prompt_means, prompt_texts
from embedeval.io.storage import Storage
from embedeval.pipeline.embed import embed_run
from embedeval.workflow import score_from_config

pytestmark = pytest.mark.usefixtures("ray_local")

SPEC = "open_clip:ViT-S-32-alt:random"
AXES = {"size": ["a photo of a small {}", "a photo of a large {}"]}


def _by_key(part) -> dict[tuple[str, int], np.ndarray]:  # noqa: ANN001
    return {(i, int(s)): v for i, s, v in zip(part.ids.tolist(), part.subs.tolist(), part.vectors)}


def _zeroshot_acc1(images, prompts, labels_of: dict[str, str]) -> float:  # noqa: ANN001
    """A numpy zero-shot classifier: class vectors = renormalised means of unit prompt vectors (float32)."""
    classes = prompt_means(prompts.ids, prompts.vectors)
    names = [n for n in classes.ids if not n.startswith("attr:")]
    class_vecs, _ = classes.lookup(names)
    x = images.vectors.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pred = np.argmax(x @ class_vecs.astype(np.float32).astype(np.float64).T, axis=1)
    return float(np.mean([names[p] == labels_of[i] for p, i in zip(pred, images.ids.tolist())]))


def _rows(scores: pa.Table, task: str) -> dict[tuple, dict]:
    return {(r["target"], r["metric"], r["split"], r["protocol"]): r for r in scores.to_pylist() if r["task"] == task}


@pytest.mark.slow
def test_open_clip_text_tower_embeds_the_runs_prompts_and_zero_shot_scores_them(tmp_path: Path) -> None:
    corpus = write_demo_corpus(tmp_path / "demo", n_items=20)
    manifest = pq.read_table(corpus.manifest)
    labels_of = dict(zip(manifest.column("id").to_pylist(), manifest.column("label").to_pylist()))

    def config(templates: list[str]):  # noqa: ANN202
        return parse_config({
            "root": str(tmp_path / "out"), "run_id": "p1", "manifest": str(corpus.manifest),
            "models": [{"spec": SPEC, "name": "clip"}],
            "embed": {"batch_size": 16, "modalities": ["image"]},   # no captions: prompts need no text modality
            "score": {"tasks": ["zeroshot", "rankability"], "bootstrap_resamples": 10,
                      "options": {"zeroshot": {"prompt_templates": templates, "default_templates": False,
                                               "bridge_pairs": []},
                                  "rankability": {"prompt_axes": AXES, "axis_subject": "shape"}}}})

    templates = ["a photo of a {}.", "a drawing of a {}."]
    summary = embed_run(config(templates), echo=lambda _: None)
    storage = Storage(str(tmp_path / "out"))
    expected = prompt_texts(labels_of.values(), templates, AXES, "shape")
    assert expected.num_rows == 2 * len(set(labels_of.values())) + 2
    (prompt_part,) = [p for p in summary.partitions if p.modality == "prompt"]
    assert prompt_part.embedded == prompt_part.inputs == expected.num_rows and not prompt_part.skipped
    # The committed vectors are the text tower on the exact prompt strings.
    from embedeval.models.registry import load_model

    model = load_model(SPEC)
    texts = expected.column("source").to_pylist()
    want = np.asarray(model.embed_texts(texts), np.float32)
    marker = read_commit_marker(storage, "p1", "clip", "prompt")
    assert marker is not None and marker.rows == expected.num_rows and marker.dim == model.info.dim == want.shape[1]
    got = _by_key(read_committed(storage, "p1", "clip", "prompt"))
    keys = list(zip(expected.column("id").to_pylist(), expected.column("sub").to_pylist()))
    assert sorted(got) == sorted(keys)
    assert ("attr:size:low", 0) in got and texts[keys.index(("attr:size:high", 0))] == "a photo of a large shape"
    np.testing.assert_allclose(np.stack([got[k] for k in keys]), want, rtol=1e-4, atol=1e-5)

    scores = score_from_config(config(templates), echo=lambda _: None)
    zs = _rows(scores, "zeroshot")
    acc = zs[("image", "acc@1", "all", "prompt-ensemble")]
    images = read_committed(storage, "p1", "clip", "image")
    assert acc["n"] == 20 and acc["value"] == pytest.approx(
        _zeroshot_acc1(images, read_committed(storage, "p1", "clip", "prompt"), labels_of), abs=1e-12)
    assert zs[("image", "mean_per_class_recall", "all", "prompt-ensemble")]["value"] is not None
    axis_rows = [r for r in scores.to_pylist() if r["task"] == "rankability" and r["protocol"] == "prompt-axis"]
    assert axis_rows and all(r["value"] is not None for r in axis_rows if r["metric"] == "spearman")

    # Other templates: the prompt partition is rebuilt (its old strings from the cache), the images are kept.
    lines: list[str] = []
    again = embed_run(config([*templates, "art of the {}."]), echo=lines.append)
    by_modality = {p.modality: p for p in again.partitions}
    assert by_modality["image"].skipped and not by_modality["prompt"].skipped
    assert by_modality["prompt"].embedded == expected.num_rows + len(set(labels_of.values()))
    assert by_modality["prompt"].from_cache == expected.num_rows
    assert any("re-embedding its prompt partition" in line for line in lines), lines
    rebuilt = _by_key(read_committed(storage, "p1", "clip", "prompt"))
    assert len(rebuilt) == by_modality["prompt"].embedded and {s for _, s in rebuilt} == {0, 1, 2}
    np.testing.assert_allclose(np.stack([rebuilt[k] for k in keys]), want, rtol=1e-4, atol=1e-5)


CLASSES = ("cat", "dog", "owl", "eel")
DIM = 8


def test_precomputed_prompt_rows_are_committed_as_the_prompt_partition_and_scored(tmp_path: Path) -> None:
    """A vectors-only manifest; the file's prompt rows (ids = labels, axis ids) become the prompt partition."""
    rng = np.random.default_rng(5)
    centres = np.eye(DIM)[: len(CLASSES)] * 4.0
    ids = [f"item-{i:02d}" for i in range(20)]
    labels = [CLASSES[i % len(CLASSES)] for i in range(20)]
    rows = [(rid, 0, "image", centres[CLASSES.index(lab)] + 0.3 * rng.normal(size=DIM))
            for rid, lab in zip(ids, labels)]
    prompts = [(c, t, "prompt", centres[k] * (1 + t) + 0.2 * rng.normal(size=DIM))
               for k, c in enumerate(CLASSES) for t in (0, 1)]
    prompts += [("attr:size:low", 0, "prompt", -np.eye(DIM)[-1]), ("attr:size:high", 0, "prompt", np.eye(DIM)[-1])]
    bad = ("owl", 2, "prompt", np.full(DIM, np.nan))
    everything = rows + prompts + [bad]
    pq.write_table(pa.table({
        "id": [r[0] for r in everything], "sub": [r[1] for r in everything], "modality": [r[2] for r in everything],
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate([r[3] for r in everything]), pa.float32()), DIM)}), tmp_path / "vectors.parquet")
    pq.write_table(pa.table({"id": ids, "label": labels}), tmp_path / "manifest.parquet")
    config = parse_config({"root": str(tmp_path / "out"), "run_id": "v1", "manifest": str(tmp_path / "manifest.parquet"),
                           "models": [{"spec": f"precomputed:{tmp_path / 'vectors.parquet'}", "name": "mine"}],
                           "score": {"tasks": ["zeroshot"], "bootstrap_resamples": 10}})
    summary = embed_run(config, echo=lambda _: None)
    storage = Storage(str(tmp_path / "out"))
    by_modality = {p.modality: p for p in summary.partitions}
    assert set(by_modality) == {"image", "prompt"}
    assert (by_modality["prompt"].inputs, by_modality["prompt"].embedded, by_modality["prompt"].quarantined) == (11, 10, 1)
    got = _by_key(read_committed(storage, "v1", "mine", "prompt"))
    assert sorted(got) == sorted((r[0], r[1]) for r in prompts)
    for rid, sub, _, vector in prompts:
        np.testing.assert_array_equal(got[(rid, sub)], vector.astype(np.float32))
    errors = pq.read_table(storage.path("runs/v1/errors/model=mine/modality=prompt")).to_pylist()
    assert [(e["id"], e["sub"]) for e in errors] == [("owl", 2)] and "non-finite" in errors[0]["reason"]
    assert all(p.skipped for p in embed_run(config, echo=lambda _: None).partitions)   # resumes, same inputs

    zs = _rows(score_from_config(config, echo=lambda _: None), "zeroshot")
    acc = zs[("image", "acc@1", "all", "prompt-ensemble")]
    expected = _zeroshot_acc1(read_committed(storage, "v1", "mine", "image"),
                              read_committed(storage, "v1", "mine", "prompt"), dict(zip(ids, labels)))
    assert acc["n"] == 20 and acc["value"] == pytest.approx(expected, abs=1e-12) and expected == 1.0
