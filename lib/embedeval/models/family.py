"""What a model family declares, and the registry families add themselves to.

A family turns specs ``<name>:<rest>`` into models. It declares, without loading anything, which
modalities its models embed and whether it embeds at all (``precomputed`` imports vectors made elsewhere);
it parses and validates a spec; it describes a model (dimension, weights checksum, preprocessing) without
loading weights where it can; it loads a model (an :class:`~embedeval.models.base.EmbeddingModel`, which
preprocesses and embeds images and texts) and gives the image preprocessing alone.

A family is one module that subclasses :class:`ModelFamily` and calls :func:`register_family` when it is
imported. The built-in families are imported on first use (naming ``builtin:pixelstats`` never imports
open_clip); any other family is known once its module has been imported. Nothing outside a family's
module tests its name: the pipeline asks the declared attributes.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from embedeval.models.base import IMAGE_MODALITIES, EmbeddingModel, ModelError, ModelInfo
from embedeval.models.spec import LoadOptions, ParsedSpec

# Built-in families: name -> the module that registers it, imported on first use only.
_BUILTIN_MODULES: dict[str, str] = {
    "builtin": "embedeval.models.builtin",
    "torchvision": "embedeval.models.torchvision_models",
    "open_clip": "embedeval.models.open_clip_models",
    "precomputed": "embedeval.models.precomputed",
}
_REGISTERED: dict[str, "ModelFamily"] = {}


class ModelFamily(ABC):
    """One family of models. Subclass it, set the class attributes, implement :meth:`parse` and :meth:`load`."""

    #: the spec prefix, ``<name>:...``
    name: ClassVar[str]
    #: every valid spec form, for help texts and error messages
    forms: ClassVar[tuple[str, ...]]
    #: the modalities its models can embed (known before any model is loaded)
    modalities: ClassVar[tuple[str, ...]] = IMAGE_MODALITIES
    #: False when its models hold vectors made elsewhere (imported, not embedded; never cached)
    embeds: ClassVar[bool] = True
    #: the libraries its :meth:`load` imports (lazily, so naming a family imports nothing heavy), for a
    #: worker process to import ahead of its first batch
    imports: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def parse(self, spec: str, rest: str) -> ParsedSpec:
        """Validate ``rest`` (the spec after ``<name>:``) without loading weights; :class:`ModelError` if invalid."""

    @abstractmethod
    def load(self, parsed: ParsedSpec, opts: LoadOptions) -> EmbeddingModel:
        """A model replica in eval mode on ``opts.device``."""

    def describe(self, parsed: ParsedSpec, opts: LoadOptions) -> ModelInfo | None:
        """The :class:`ModelInfo` :meth:`load` would give, without loading the weights into a model; None
        when the family cannot tell without loading (then the registry loads a CPU replica)."""
        return None

    def preprocessor(self, parsed: ParsedSpec, opts: LoadOptions) -> Callable[[Image.Image], np.ndarray]:
        """The image preprocessing (PIL RGB -> float32 CHW). Default: a CPU replica's; override when the
        family can build it without the model."""
        return self.load(parsed, replace(opts, device="cpu")).preprocess_image

    def split_preprocess(self, parsed: ParsedSpec, opts: LoadOptions) -> Any:
        """The preprocessing split for the uint8 path (:class:`embedeval.models.inference.SplitPreprocess`:
        geometric part on CPU workers, normalisation on the device), or None when the family ships float32
        images (its transform does not split, or it embeds no images). Default: a CPU replica's
        ``split_preprocess`` attribute, if it has one."""
        if not self.embeds or not set(self.modalities) & {"image", "sketch"}:
            return None
        return getattr(self.load(parsed, replace(opts, device="cpu")), "split_preprocess", None)


def register_family(family: ModelFamily) -> ModelFamily:
    """Make ``family`` known under ``family.name`` (call it at the end of the family's module); returns it.

    Registering another instance of the same class again is a no-op (a module imported twice); a
    different family under a taken name is a :class:`ModelError`.
    """
    name = family.name
    if not name or ":" in name:
        raise ModelError(f"model family name {name!r}: use a non-empty name without ':'")
    known = _REGISTERED.get(name)
    if known is not None and type(known) is not type(family):
        raise ModelError(f"model family {name!r} is already registered by {type(known).__module__}."
                         f"{type(known).__name__}")
    if known is None:
        _REGISTERED[name] = family
    return _REGISTERED[name]


def unregister_family(name: str) -> None:
    """Forget a family registered at run time (tests); built-in families come back on next use."""
    _REGISTERED.pop(name, None)


def family_names() -> list[str]:
    """Every known family: the built-in ones and those registered so far."""
    return list(dict.fromkeys([*_BUILTIN_MODULES, *_REGISTERED]))


def find_family(name: str) -> ModelFamily | None:
    """The family called ``name`` (importing a built-in one on first use), or None."""
    if name not in _REGISTERED and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    return _REGISTERED.get(name)
