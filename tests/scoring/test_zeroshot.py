"""Zero-shot classification and the text-bridged retrieval against a numpy zero-shot classifier and sklearn."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sklearn.metrics import balanced_accuracy_score

from embedeval.io.prompts import prompt_means, prompt_texts, read_prompt_vectors
from embedeval.io.storage import Storage
from embedeval.scoring.job import score_run
from embedeval.scoring.zeroshot import (mean_per_class_recall, mean_per_class_recall_interval, score_text_bridge,
                                        score_zero_shot)

from . import reference as ref
from .conftest import make_context, make_embeddings, unit_rows

CLASSES = ["cat", "cup", "dog", "fox", "owl", "pen"]
TEMPLATES = 3
N = 90


def _setup(rng: np.random.Generator, *, missing: str | None = "pen", d: int = 16, noise: float = 1.2):
    """Items of 6 classes around class centres; prompts = centres + template noise (one label without any)."""
    centres = rng.normal(size=(len(CLASSES), d))
    label = rng.integers(0, len(CLASSES), N)
    ids = [f"i{i:03d}" for i in range(N)]
    table = pa.table({"id": ids, "label": [CLASSES[c] for c in label],
                      "class_split": ["unseen" if c >= 3 else "seen" for c in label]})
    images = centres[label] + noise * rng.normal(size=(N, d))
    sketches = centres[label] + 1.5 * noise * rng.normal(size=(N, d))
    prompt_ids = [c for c in CLASSES if c != missing for _ in range(TEMPLATES)]
    prompt_vecs = np.array([centres[CLASSES.index(c)] for c in prompt_ids]) + 0.8 * rng.normal(size=(len(prompt_ids), d))
    prompt_vecs *= rng.uniform(0.5, 3.0, size=(len(prompt_ids), 1))   # raw, not unit: the mean must normalise first
    return table, ids, label, images, sketches, prompt_ids, prompt_vecs


def _reference_classes(prompt_ids: list[str], prompt_vecs: np.ndarray) -> tuple[list[str], np.ndarray]:
    """A numpy prompt ensemble: unit rows, per-class mean, renormalised (float32, as the engine stores it)."""
    names = sorted(set(prompt_ids))
    unit = unit_rows(prompt_vecs)
    means = np.array([unit[[i for i, p in enumerate(prompt_ids) if p == c]].mean(axis=0) for c in names])
    return names, unit_rows(means).astype(np.float32)


def _reference_topk(X: np.ndarray, P: np.ndarray, k: int) -> np.ndarray:
    scores = X.astype(np.float64) @ P.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _by(rows, **kw):  # noqa: ANN001, ANN202
    return {(r.target, r.metric, r.split, r.protocol): r for r in rows if all(getattr(r, k) == v for k, v in kw.items())}


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")   # a split's items miss some classes
def test_classification_equals_a_numpy_zero_shot_classifier(rng: np.random.Generator) -> None:
    table, ids, label, images, _, prompt_ids, prompt_vecs = _setup(rng)
    ctx = replace(make_context(table, bootstrap_resamples=40), prompts=prompt_means(prompt_ids, prompt_vecs))
    emb = make_embeddings(ctx, "image", ids, images)
    rows = _by(score_zero_shot(ctx, emb))

    names, P = _reference_classes(prompt_ids, prompt_vecs)
    X = emb.unit                                            # (id)-ordered unit rows, as the engine ranks them
    true_names = np.array([CLASSES[c] for c in label])[np.argsort(ids)]
    keep = np.isin(true_names, names)                       # items of 'pen' (no prompt) are skipped
    true = np.array([names.index(t) for t in true_names[keep]])
    top = _reference_topk(X[keep], P, 5)
    split = np.asarray(table.column("class_split").to_pylist())[np.argsort(ids)][keep]
    for name, mask in (("all", np.ones(true.size, bool)), ("seen", split == "seen"), ("unseen", split == "unseen")):
        for k in (1, 5):
            row = rows[("image", f"acc@{k}", name, "prompt-ensemble")]
            expected = np.mean((top[mask, :k] == true[mask, None]).any(axis=1))
            assert abs(row.value - expected) < 1e-9 and row.n == mask.sum() and row.k == k
            assert row.ci_low <= row.value <= row.ci_high
        mpcr = rows[("image", "mean_per_class_recall", name, "prompt-ensemble")]
        assert abs(mpcr.value - balanced_accuracy_score(true[mask], top[mask, 0])) < 1e-9
        assert mpcr.ci_low <= mpcr.value <= mpcr.ci_high
    acc1 = rows[("image", "acc@1", "all", "prompt-ensemble")]
    assert 0.3 < acc1.value < 1.0                           # neither trivial nor broken
    assert f"{int((~keep).sum())} items whose label has no prompt vector skipped" in acc1.note
    assert "1 labels without prompt vectors ('pen')" in acc1.note and acc1.params == {"classes": 5}


def test_planted_prompts_classify_perfectly(rng: np.random.Generator) -> None:
    table, ids, label, images, _, _, _ = _setup(rng, missing=None, noise=0.01)
    centres_by_item = images  # noise 0.01: every item sits on its class centre
    prompts = prompt_means([CLASSES[c] for c in label], centres_by_item)
    ctx = replace(make_context(table), prompts=prompts)
    rows = _by(score_zero_shot(ctx, make_embeddings(ctx, "image", ids, images)))
    assert rows[("image", "acc@1", "all", "prompt-ensemble")].value == 1.0
    assert rows[("image", "mean_per_class_recall", "all", "prompt-ensemble")].value == 1.0


def test_per_class_recall_bootstrap_matches_brute_force(rng: np.random.Generator) -> None:
    true = rng.integers(0, 4, 50)
    hits = rng.uniform(size=50) < 0.6
    got = mean_per_class_recall_interval(true, hits, 4, 30, seed=7, confidence=0.9)
    stats = []
    for idx in np.random.default_rng(7).integers(0, 50, size=(30, 50)):
        stats.append(np.mean([hits[idx][true[idx] == c].mean() for c in np.unique(true[idx])]))
    lo, hi = np.percentile(stats, [5, 95])
    assert abs(got.low - lo) < 1e-12 and abs(got.high - hi) < 1e-12
    assert abs(mean_per_class_recall(true, hits, 4) - np.mean([hits[true == c].mean() for c in range(4)])) < 1e-12


def test_without_prompts_rows_say_why(rng: np.random.Generator) -> None:
    table, ids, _, images, _, _, _ = _setup(rng)
    ctx = make_context(table)
    rows = score_zero_shot(ctx, make_embeddings(ctx, "image", ids, images))
    assert rows and all(r.value is None and "has no prompt vectors" in r.note for r in rows)


def test_text_bridges_equal_reference_rankings(rng: np.random.Generator) -> None:
    table, ids, label, images, sketches, prompt_ids, prompt_vecs = _setup(rng)
    T = 0.05
    ctx = replace(make_context(table, bootstrap_resamples=20, map_cutoffs=[20], precision_ks=[10],
                               options={"zeroshot": {"temperature": T}}),
                  prompts=prompt_means(prompt_ids, prompt_vecs))
    sk, im = make_embeddings(ctx, "sketch", ids, sketches), make_embeddings(ctx, "image", ids, images)
    rows = _by(score_text_bridge(ctx, sk, im))

    names, P = _reference_classes(prompt_ids, prompt_vecs)
    S, G = sk.unit.astype(np.float64), im.unit.astype(np.float64)
    labels = np.array([CLASSES[c] for c in label])[np.argsort(ids)]
    split = np.asarray(table.column("class_split").to_pylist())[np.argsort(ids)]
    P64 = P.astype(np.float64)
    hard = P64[_reference_topk(S, P, 1)[:, 0]]
    logits = S @ P64.T / T
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft = unit_rows((w / w.sum(axis=1, keepdims=True)) @ P64).astype(np.float32).astype(np.float64)
    centred_q = unit_rows(S - S.mean(axis=0)).astype(np.float32).astype(np.float64)
    centred_g = unit_rows(G - G.mean(axis=0)).astype(np.float32).astype(np.float64)
    for protocol, Q, gallery in (("text-bridge-hard", hard, G), ("text-bridge-soft", soft, G),
                                 ("mean-removed", centred_q, centred_g)):
        for name in ("all", "seen", "unseen"):
            q = np.ones(N, bool) if name == "all" else split == name
            g = q
            ap = ref.label_ap(Q[q], gallery[g], labels[q], labels[g])
            p10 = ref.precision_at(Q[q], gallery[g], labels[q], labels[g], 10)
            row = rows[("sketch->image", "mAP@all", name, protocol)]
            assert abs(row.value - ap.mean()) < 1e-9, (protocol, name)
            assert abs(rows[("sketch->image", "P@10", name, protocol)].value - p10.mean()) < 1e-9
            assert row.task == "zeroshot" and row.n == q.sum()
    assert "temperature=0.05" in rows[("sketch->image", "mAP@all", "all", "text-bridge-soft")].note


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        make_context(pa.table({"id": ["a"]}), options={"zeroshot": {"prompt_templates": ["no slot"]}})


def test_prompt_texts_cover_labels_templates_and_axes() -> None:
    t = prompt_texts(["dog", "cat", "dog"], ["a photo of a {}.", "a {}."], {"size": ["a small {}", "a large {}"]})
    assert t.column("id").to_pylist() == ["cat", "cat", "dog", "dog", "attr:size:low", "attr:size:high"]
    assert t.column("sub").to_pylist() == [0, 1, 0, 1, 0, 0]
    assert t.column("source").to_pylist()[1] == "a cat." and t.column("source").to_pylist()[-1] == "a large object"


@pytest.mark.slow
def test_score_run_reads_a_committed_prompt_partition(tmp_path: Path, rng: np.random.Generator) -> None:
    from embedeval.scoring.settings import ScoreSettings

    from .test_job import RUN, write_partition

    table, ids, label, images, sketches, prompt_ids, prompt_vecs = _setup(rng)
    storage = Storage(str(tmp_path))
    write_partition(storage, "clip", "image", ids, [0] * N, images)
    write_partition(storage, "clip", "sketch", ids, [0] * N, sketches)
    write_partition(storage, "clip", "prompt", prompt_ids, [i % TEMPLATES for i in range(len(prompt_ids))],
                    prompt_vecs, n_files=1)
    settings = ScoreSettings(tasks=["zeroshot", "prototypes"], bootstrap_resamples=10, use_ray=False,
                             block_rows=16, map_cutoffs=[20], precision_ks=[10])
    scores = score_run(storage, RUN, table, None, settings).to_pylist()
    zs = {(r["target"], r["metric"], r["split"], r["protocol"]): r for r in scores if r["task"] == "zeroshot"}
    prompts = read_prompt_vectors(storage, RUN, "clip")
    assert prompts is not None and prompts.ids == sorted(set(prompt_ids))
    ctx = replace(make_context(table, bootstrap_resamples=10), prompts=prompts)
    direct = _by(score_zero_shot(ctx, make_embeddings(ctx, "image", ids, images)))
    got = zs[("image", "acc@1", "all", "prompt-ensemble")]["value"]
    assert abs(got - direct[("image", "acc@1", "all", "prompt-ensemble")].value) < 1e-12
    assert ("sketch", "acc@5", "unseen", "prompt-ensemble") in zs
    assert zs[("sketch->image", "mAP@all", "unseen", "text-bridge-soft")]["value"] is not None
    assert {r["target"] for r in scores if r["task"] == "prototypes"} == {"image", "sketch"}   # no 'prompt'
