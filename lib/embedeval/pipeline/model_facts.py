"""What the pipeline needs to know about a model before embedding, from the registry's public API.

Everything here is asked of the model's family (its declared attributes) or the registry; no family is
named. The driver describes a model without loading its weights where the family allows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from embedeval.io.storage import Storage
from embedeval.models.base import EmbeddingModel, ModelInfo
from embedeval.models.family import ModelFamily

if TYPE_CHECKING:
    from embedeval.models.inference import SplitPreprocess

_lock = threading.Lock()
_loaded: dict[str, EmbeddingModel] = {}


def model_family(spec: str) -> ModelFamily:
    from embedeval.models.registry import family_of

    return family_of(spec)


def model_modalities(spec: str) -> tuple[str, ...]:
    """Modalities a model embeds, as its family declares them (text towers and imported vectors do text)."""
    return model_family(spec).modalities


def model_embeds(spec: str) -> bool:
    """False for families whose vectors are imported, not embedded (they get no pipeline and no cache)."""
    return model_family(spec).embeds


def loaded_model(spec: str, storage: Storage | None = None, cache_dir: str | None = None) -> EmbeddingModel:
    """A CPU replica of a model, loaded once per process (for preprocessing and imports)."""
    from embedeval.models.registry import load_model

    with _lock:
        if spec not in _loaded:
            _loaded[spec] = load_model(spec, device="cpu", storage=storage, cache_dir=cache_dir)
        return _loaded[spec]


def describe_model(spec: str, storage: Storage | None = None, cache_dir: str | None = None) -> ModelInfo:
    """The ModelInfo of a spec, without loading its weights where the family can tell (see the registry)."""
    from embedeval.models.registry import describe_model as registry_describe

    return registry_describe(spec, storage=storage, cache_dir=cache_dir)


def load_preprocessor(spec: str, storage: Storage | None = None,
                      cache_dir: str | None = None) -> Callable[[Image.Image], np.ndarray]:
    """The model's own image preprocessing, for the CPU prepare stage."""
    from embedeval.models.registry import load_preprocessor as registry_preprocessor

    return registry_preprocessor(spec, storage=storage, cache_dir=cache_dir)


def load_split(spec: str, storage: Storage | None = None, cache_dir: str | None = None) -> "SplitPreprocess | None":
    """The model's preprocessing split for the uint8 path, or None (then the pipeline ships float32)."""
    from embedeval.models.registry import load_split_preprocess

    return load_split_preprocess(spec, storage=storage, cache_dir=cache_dir)
