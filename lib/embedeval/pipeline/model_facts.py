"""What the pipeline needs to know about a model before embedding, from the registry's public API.

Kept apart from the registry so the pipeline depends only on ``load_model`` and ``describe_spec``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from embedeval.io.storage import S3Options
from embedeval.models.base import ALL_MODALITIES, IMAGE_MODALITIES, EmbeddingModel, ModelInfo

if TYPE_CHECKING:
    from embedeval.models.inference import SplitPreprocess

_lock = threading.Lock()
_loaded: dict[str, EmbeddingModel] = {}


def model_family(spec: str) -> str:
    from embedeval.models.registry import describe_spec

    return describe_spec(spec).family


def model_modalities(spec: str) -> tuple[str, ...]:
    """Modalities a model embeds: text towers (open_clip) and imported vectors do text too."""
    return ALL_MODALITIES if model_family(spec) in ("open_clip", "precomputed") else IMAGE_MODALITIES


def loaded_model(spec: str, s3: S3Options | None = None, cache_dir: str | None = None) -> EmbeddingModel:
    """A CPU replica of a model, loaded once per process (for facts, preprocessing and imports)."""
    from embedeval.models.registry import load_model

    with _lock:
        if spec not in _loaded:
            _loaded[spec] = load_model(spec, device="cpu", s3=s3, cache_dir=cache_dir)
        return _loaded[spec]


def describe_model(spec: str, s3: S3Options | None = None, cache_dir: str | None = None) -> ModelInfo:
    """The ModelInfo of a spec (loads it once per process on CPU; weights checksums need the file)."""
    return loaded_model(spec, s3, cache_dir).info


def load_preprocessor(spec: str, s3: S3Options | None = None,
                      cache_dir: str | None = None) -> Callable[[Image.Image], np.ndarray]:
    """The model's own image preprocessing, for the CPU prepare stage."""
    try:
        from embedeval.models.registry import load_preprocessor as registry_preprocessor
    except ImportError:
        return loaded_model(spec, s3, cache_dir).preprocess_image
    return registry_preprocessor(spec, s3=s3, cache_dir=cache_dir)


def load_split(spec: str, s3: S3Options | None = None, cache_dir: str | None = None) -> "SplitPreprocess | None":
    """The model's preprocessing split for the uint8 path, or None (then the pipeline ships float32)."""
    from embedeval.models.registry import load_split_preprocess

    return load_split_preprocess(spec, s3=s3, cache_dir=cache_dir)
