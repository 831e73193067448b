"""Which prompts a run embeds: the inputs of a model's ``prompt`` partition (:mod:`embedeval.io.prompts`).

A model with a text tower embeds, in the same Ray Data pipeline (and actors) as its other modalities:

- when the score task ``zeroshot`` runs and the manifest has a ``label`` column: every distinct non-empty
  label x ``score.options.zeroshot`` templates (``ZeroShotOptions.templates()``: the defaults unless
  ``default_templates: false``, plus ``prompt_templates``);
- when ``rankability`` runs: both ends of each ``score.options.rankability.prompt_axes`` attribute, ``{}``
  filled by ``axis_subject``.

The texts are read from the run config's ``score.options``, so embed and score agree on them; when they (or
the labels) change, the partition's inputs fingerprint changes and the embed stage rebuilds it (see
:func:`embedeval.pipeline.embed.embed_model`). Rows are labels x templates + 2 x axes: a few hundred to a few
thousand strings, held on the driver like any modality's inputs.

A ``precomputed:`` model supplies its own prompt rows instead (:func:`precomputed_prompt_inputs`).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from embedeval.config import RunConfig
from embedeval.io.manifest import ManifestReadResult
from embedeval.io.prompts import prompt_texts


def run_prompt_texts(config: RunConfig, manifest: ManifestReadResult) -> pa.Table:
    """The (id, sub, source) rows a text tower embeds for this run (possibly none; see the module docstring)."""
    tasks = set(config.score.tasks)
    labels: list[str] = []
    templates: list[str] = []
    if "zeroshot" in tasks and "label" in manifest.table.column_names:
        templates = config.score.options_for("zeroshot").templates()
        column = manifest.table.column("label").cast(pa.string())
        labels = [v for v in pc.unique(column).to_pylist() if v is not None and v.strip()]
    axes: dict[str, list[str]] = {}
    subject = "object"
    if "rankability" in tasks:
        options = config.score.options_for("rankability")
        axes, subject = dict(options.prompt_axes), options.axis_subject
    return prompt_texts(labels, templates, axes, subject)


def precomputed_prompt_inputs(keys: pa.Table) -> pa.Table:
    """(id, sub, source=null) rows for a precomputed model's prompt keys: all of them (ids are labels and
    axis ids, not manifest ids), so each is imported or quarantined with its reason."""
    return pa.table({"id": keys.column("id").cast(pa.string()), "sub": keys.column("sub").cast(pa.int16()),
                     "source": pa.nulls(keys.num_rows, pa.string())})
