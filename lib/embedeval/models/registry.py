"""One factory from a spec string to a loaded model, and the registry of families it dispatches to.

A spec is ``<family>:<rest>``; each family module parses and validates its own ``<rest>`` and loads the
model. Adding a family is adding a module with ``FORMS``, ``parse(spec, rest)`` and
``load(parsed, opts)`` and one line in :data:`FAMILIES`. Family modules are imported only when used, so
validating ``builtin:pixelstats`` never imports open_clip.

Examples: ``torchvision:resnet50``, ``torchvision:vit_b_16:IMAGENET1K_V1``, ``torchvision:resnet18:random``,
``open_clip:ViT-B-32:laion2b_s34b_b79k``, ``open_clip:ViT-B-32:s3://bucket/weights.pt``,
``precomputed:s3://bucket/vectors/?dim=512``, ``builtin:pixelstats``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from embedeval.io.storage import S3Options
from embedeval.models.base import EmbeddingModel, ModelError
from embedeval.models.spec import LoadOptions, ParsedSpec, did_you_mean, resolve_device

if TYPE_CHECKING:  # torch is imported only by the families that use it
    from embedeval.models.inference import SplitPreprocess

__all__ = ["FAMILIES", "ParsedSpec", "describe_spec", "load_model", "load_split_preprocess", "spec_forms"]

# family name -> module implementing it
FAMILIES: dict[str, str] = {
    "torchvision": "embedeval.models.torchvision_models",
    "open_clip": "embedeval.models.open_clip_models",
    "precomputed": "embedeval.models.precomputed",
    "builtin": "embedeval.models.builtin",
}


def _family_module(name: str) -> ModuleType:
    return importlib.import_module(FAMILIES[name])


def spec_forms() -> list[str]:
    """Every valid spec form, for help texts and error messages."""
    return [form for name in FAMILIES for form in _family_module(name).FORMS]


def describe_spec(spec: str) -> ParsedSpec:
    """Parse and validate ``spec`` without loading weights or data (cheap enough for config validation).

    Raises :class:`ModelError` naming the spec, listing the valid forms, and suggesting close names for
    typos (``torchvision:resnet05`` -> did you mean 'resnet50').
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"empty model spec {spec!r}; valid forms: {'; '.join(spec_forms())}")
    spec = spec.strip()
    family, sep, rest = spec.partition(":")
    if family not in FAMILIES:
        hint = did_you_mean(family, FAMILIES)
        raise ModelError(f"model spec {spec!r}: unknown model family {family!r}{hint}. "
                         f"Families: {', '.join(FAMILIES)}. Valid forms: {'; '.join(spec_forms())}")
    if not sep or not rest:
        forms = "; ".join(_family_module(family).FORMS)
        raise ModelError(f"model spec {spec!r} is incomplete; valid forms: {forms}")
    return _family_module(family).parse(spec, rest)


def load_model(spec: str, *, device: str = "cpu", s3: S3Options | None = None, cache_dir: str | None = None,
               dim_hint: int | None = None) -> EmbeddingModel:
    """Load the model ``spec`` names, in eval mode on ``device`` ("cpu", "cuda", "cuda:<n>" or "auto").

    ``s3`` reaches s3:// weights or data; s3:// weights are copied to ``cache_dir`` (default
    ``~/.cache/embedeval/weights``). ``dim_hint`` is the dimension the caller expects: for precomputed
    vectors it is the dimension to check rows against, for other families a mismatch is an error (it
    catches a config that pairs a model with embeddings made by another).
    """
    parsed = describe_spec(spec)
    opts = LoadOptions(device=resolve_device(device), s3=s3, cache_dir=cache_dir, dim_hint=dim_hint)
    model = _family_module(parsed.family).load(parsed, opts)
    if dim_hint is not None and model.info.dim != dim_hint:
        raise ModelError(f"{parsed.spec}: embeds into {model.info.dim} dimensions but {dim_hint} were expected")
    return model


def load_preprocessor(spec: str, *, s3: S3Options | None = None,
                      cache_dir: str | None = None) -> Callable[[Image.Image], np.ndarray]:
    """The model's own image preprocessing (PIL RGB -> float32 CHW), without loading weights where possible.

    The pipeline's CPU prepare stage needs only this; loading a large model there just for its transforms
    would cost memory and start-up time on every prepare actor. Families that can build their transforms
    from the spec alone say so with a ``load_preprocessor(parsed)`` function; the others fall back to a
    CPU replica of the model.
    """
    parsed = describe_spec(spec)
    module = _family_module(parsed.family)
    if hasattr(module, "load_preprocessor"):
        return module.load_preprocessor(parsed)
    return load_model(spec, device="cpu", s3=s3, cache_dir=cache_dir).preprocess_image


def load_split_preprocess(spec: str, *, s3: S3Options | None = None,
                          cache_dir: str | None = None) -> "SplitPreprocess | None":
    """The model's preprocessing split for the uint8 path (see ``models.inference.SplitPreprocess``), or None.

    None: the model takes float32 images only (its transform does not split, or it embeds no images),
    and the pipeline ships float32 CHW arrays for it. Like :func:`load_preprocessor`, it builds no model
    where the family can say from the spec alone (``load_split_preprocess(parsed)``).
    """
    parsed = describe_spec(spec)
    if parsed.family in ("precomputed", "builtin"):
        return None
    module = _family_module(parsed.family)
    if hasattr(module, "load_split_preprocess"):
        return module.load_split_preprocess(parsed)
    model = load_model(spec, device="cpu", s3=s3, cache_dir=cache_dir)
    return getattr(model, "split_preprocess", None)
