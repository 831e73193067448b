"""The prompt-vectors contract: text-prompt embeddings a model supplies for zero-shot scores.

A model's prompt vectors are one committed embeddings partition, ``modality=prompt`` (same files and
marker as every partition, :mod:`embedeval.io.embeddings`), whose ids are *not* manifest ids:

- ``<label>``: a prompt of one class name (the manifest's ``label`` values); ``sub`` = template index.
- ``attr:<name>:low`` / ``attr:<name>:high``: the two ends of a zero-shot attribute axis (rankability's
  ``prompt-axis``), e.g. "a photo of a small {}" / "a photo of a large {}"; ``sub`` = template index.

A precomputed model supplies these rows itself (``modality = 'prompt'`` rows of its vectors file, imported
as they are); a model with a text tower gets them from :func:`prompt_texts` (labels x templates, axis
prompts), embedded by the embed stage (:mod:`embedeval.pipeline.prompts` picks the labels, templates and
axes of a run). The score stage reads the partition
once per model (it is small: labels x templates rows) and reduces it with :func:`prompt_means`: each id's
vectors are L2-normalised, averaged over its subs and renormalised (CLIP's prompt ensembling).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from embedeval.io.embeddings import read_commit_marker, read_committed
from embedeval.io.storage import Storage

PROMPT_MODALITY = "prompt"

#: Modalities whose inputs are strings embedded by a text tower: captions and prompts share its cache kind.
TEXT_MODALITIES: tuple[str, ...] = ("text", PROMPT_MODALITY)

#: CLIP's recommended 7-template ImageNet ensemble (Radford et al., the "prompt engineering" notebook)
#: plus the plain "a photo of a {}.": the templates used when the config adds none.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

AXIS_ENDS = ("low", "high")


def axis_id(attribute: str, end: str) -> str:
    """The prompt id of one end (``low`` / ``high``) of an attribute's zero-shot axis."""
    if end not in AXIS_ENDS:
        raise ValueError(f"axis end must be one of {AXIS_ENDS}, got {end!r}")
    return f"attr:{attribute}:{end}"


def prompt_texts(labels: Iterable[str], templates: Sequence[str],
                 axes: Mapping[str, Sequence[str]] | None = None, subject: str = "object") -> pa.Table:
    """The (id, sub, source) rows a text tower embeds into the ``prompt`` partition.

    Every label x template (``template.format(label)``, sub = template index), and for each attribute of
    ``axes`` (name -> [low prompt, high prompt]) its two ends with ``{}`` filled by ``subject``.
    """
    ids: list[str] = []
    subs: list[int] = []
    texts: list[str] = []
    for label in sorted(set(labels)):
        for t, template in enumerate(templates):
            ids.append(label)
            subs.append(t)
            texts.append(template.format(label))
    for name, pair in sorted((axes or {}).items()):
        for end, prompt in zip(AXIS_ENDS, pair):
            ids.append(axis_id(name, end))
            subs.append(0)
            texts.append(prompt.format(subject))
    return pa.table({"id": pa.array(ids, pa.string()), "sub": pa.array(subs, pa.int16()),
                     "source": pa.array(texts, pa.string())})


@dataclass(frozen=True)
class PromptVectors:
    """One vector per prompt id: the renormalised mean of its unit prompt vectors.

    ``ids`` sorted; ``vectors`` (len(ids), d) float64 unit rows; ``templates`` the subs averaged per id;
    ``dropped`` rows with a non-finite or zero vector (not averaged).
    """

    ids: list[str]
    vectors: np.ndarray
    templates: np.ndarray
    dropped: int = 0

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def lookup(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors of the names that have one, boolean mask of which names have one), in ``names`` order."""
        where = {name: i for i, name in enumerate(self.ids)}
        found = np.array([n in where for n in names], dtype=bool)
        rows = [where[n] for n in names if n in where]
        return self.vectors[rows].reshape(len(rows), self.dim), found

    def axis(self, attribute: str) -> np.ndarray | None:
        """text(high) - text(low) of an attribute's prompt pair, or None when either end is missing."""
        ends, found = self.lookup([axis_id(attribute, e) for e in AXIS_ENDS])
        return ends[1] - ends[0] if found.all() else None


def prompt_means(ids: Sequence[str] | np.ndarray, vectors: np.ndarray) -> PromptVectors:
    """Group rows by id: normalise each row, average per id, renormalise (float64)."""
    ids_a = np.asarray(ids, dtype=object)
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1) if x.size else np.zeros(len(ids_a))
    good = np.isfinite(x).all(axis=1) & (norms > 0) if x.size else np.zeros(len(ids_a), bool)
    unit = x[good] / norms[good, None]
    names, inverse, counts = np.unique(ids_a[good].astype(str), return_inverse=True, return_counts=True)
    sums = np.zeros((names.size, x.shape[1] if x.ndim == 2 else 0))
    np.add.at(sums, inverse, unit)
    length = np.linalg.norm(sums, axis=1, keepdims=True)
    means = np.divide(sums, length, out=np.zeros_like(sums), where=length > 0)
    return PromptVectors([str(n) for n in names], means, counts.astype(np.int64), int((~good).sum()))


def read_prompt_vectors(storage: Storage, run_id: str, model: str) -> PromptVectors | None:
    """The model's prompt vectors (``modality=prompt`` partition), or None when it committed none.

    Memory O(prompt rows x d): labels x templates, a few hundred rows for a typical catalogue."""
    if read_commit_marker(storage, run_id, model, PROMPT_MODALITY) is None:
        return None
    part = read_committed(storage, run_id, model, PROMPT_MODALITY)
    return prompt_means(part.ids, part.vectors)
