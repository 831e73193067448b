"""One factory from a spec string to a model, over the families of :mod:`embedeval.models.family`.

A spec is ``<family>:<rest>``; the family named parses and validates ``<rest>``, describes and loads the
model. Adding a family is one module (see ARCHITECTURE.md, "Add a model family"); this module never
names one.

Examples: ``torchvision:resnet50``, ``torchvision:vit_b_16:IMAGENET1K_V1``, ``torchvision:resnet18:random``,
``open_clip:ViT-B-32:laion2b_s34b_b79k``, ``open_clip:ViT-B-32:s3://bucket/weights.pt``,
``precomputed:s3://bucket/vectors/?dim=512``, ``builtin:pixelstats``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from embedeval.io.storage import Storage
from embedeval.models.base import EmbeddingModel, ModelError, ModelInfo
from embedeval.models.family import ModelFamily, family_names, find_family
from embedeval.models.spec import LoadOptions, ParsedSpec, did_you_mean, resolve_device

if TYPE_CHECKING:  # torch is imported only by the families that use it
    from embedeval.models.inference import SplitPreprocess

__all__ = ["ParsedSpec", "describe_model", "describe_spec", "family_of", "load_model", "load_preprocessor",
           "load_split_preprocess", "spec_forms"]


def spec_forms() -> list[str]:
    """Every valid spec form, for help texts and error messages (imports every built-in family)."""
    return [form for name in family_names() for form in (find_family(name) or _missing(name)).forms]


def _missing(name: str) -> ModelFamily:
    raise ModelError(f"model family {name!r} did not register itself when its module was imported")


def _split(spec: str) -> tuple[ModelFamily, str, str]:
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"empty model spec {spec!r}; valid forms: {'; '.join(spec_forms())}")
    spec = spec.strip()
    name, sep, rest = spec.partition(":")
    family = find_family(name)
    if family is None:
        names = family_names()
        raise ModelError(f"model spec {spec!r}: unknown model family {name!r}{did_you_mean(name, names)}. "
                         f"Families: {', '.join(names)}. Valid forms: {'; '.join(spec_forms())}")
    if not sep or not rest:
        raise ModelError(f"model spec {spec!r} is incomplete; valid forms: {'; '.join(family.forms)}")
    return family, spec, rest


def family_of(spec: str) -> ModelFamily:
    """The family a spec names (:class:`ModelError` for an unknown family); validates nothing else."""
    return _split(spec)[0]


def describe_spec(spec: str) -> ParsedSpec:
    """Parse and validate ``spec`` without loading weights or data (cheap enough for config validation).

    Raises :class:`ModelError` naming the spec, listing the valid forms, and suggesting close names for
    typos (``torchvision:resnet05`` -> did you mean 'resnet50').
    """
    family, spec, rest = _split(spec)
    return family.parse(spec, rest)


def _options(device: str, storage: Storage | None, cache_dir: str | None, dim_hint: int | None) -> LoadOptions:
    return LoadOptions(device=resolve_device(device), storage=storage, cache_dir=cache_dir, dim_hint=dim_hint)


def load_model(spec: str, *, device: str = "cpu", storage: Storage | None = None, cache_dir: str | None = None,
               dim_hint: int | None = None) -> EmbeddingModel:
    """Load the model ``spec`` names, in eval mode on ``device`` ("cpu", "cuda", "cuda:<n>" or "auto").

    ``storage`` reaches s3:// weights or data with its S3 settings (None: the AWS environment's); s3://
    weights are copied to ``cache_dir`` (default ``~/.cache/embedeval/weights``). ``dim_hint`` is the
    dimension the caller expects: for precomputed vectors it is the dimension to check rows against, for
    other families a mismatch is an error (it catches a config that pairs a model with embeddings made by
    another).
    """
    parsed = describe_spec(spec)
    model = family_of(spec).load(parsed, _options(device, storage, cache_dir, dim_hint))
    if dim_hint is not None and model.info.dim != dim_hint:
        raise ModelError(f"{parsed.spec}: embeds into {model.info.dim} dimensions but {dim_hint} were expected")
    return model


def describe_model(spec: str, *, storage: Storage | None = None, cache_dir: str | None = None) -> ModelInfo:
    """The :class:`ModelInfo` a loaded model would carry (dimension, weights checksum, preprocessing),
    without loading its weights where the family can tell; otherwise from a CPU replica."""
    parsed = describe_spec(spec)
    opts = LoadOptions(device="cpu", storage=storage, cache_dir=cache_dir)
    info = family_of(spec).describe(parsed, opts)
    return info if info is not None else family_of(spec).load(parsed, opts).info


def load_preprocessor(spec: str, *, storage: Storage | None = None,
                      cache_dir: str | None = None) -> Callable[[Image.Image], np.ndarray]:
    """The model's own image preprocessing (PIL RGB -> float32 CHW), without loading weights where possible.

    The pipeline's CPU prepare stage needs only this; loading a large model there just for its transforms
    would cost memory and start-up time on every prepare actor.
    """
    parsed = describe_spec(spec)
    return family_of(spec).preprocessor(parsed, LoadOptions(device="cpu", storage=storage, cache_dir=cache_dir))


def load_split_preprocess(spec: str, *, storage: Storage | None = None,
                          cache_dir: str | None = None) -> "SplitPreprocess | None":
    """The model's preprocessing split for the uint8 path (see ``models.inference.SplitPreprocess``), or None.

    None: the model takes float32 images only (its transform does not split, or it embeds no images),
    and the pipeline ships float32 CHW arrays for it. Like :func:`load_preprocessor`, it builds no model
    where the family can say from the spec alone.
    """
    parsed = describe_spec(spec)
    return family_of(spec).split_preprocess(parsed, LoadOptions(device="cpu", storage=storage, cache_dir=cache_dir))
