"""What every embedding model looks like to the pipeline, whatever library it comes from.

The pipeline only ever calls :mod:`embedeval.models.registry` and the methods below, so a new model
family is one new module (a :class:`~embedeval.models.family.ModelFamily` that registers itself).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from embedeval.errors import EmbedevalError

IMAGE_MODALITIES = ("image", "sketch")
ALL_MODALITIES = ("image", "sketch", "text")


class ModelError(EmbedevalError, ValueError):
    """A model spec cannot be resolved or loaded; the message says which spec and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model that go into every output it produces (file metadata, scores, report)."""

    spec: str                      # what the user wrote, e.g. "open_clip:ViT-B-32:laion2b_s34b_b79k"
    family: str                    # the family's name: "torchvision", "open_clip", "precomputed", "builtin", ...
    architecture: str              # "resnet50", "ViT-B-32", ...
    weights_source: str            # "random", "hub:IMAGENET1K_V1", "file:/abs/path.pt", "s3://b/k.pt", ...
    weights_sha256: str | None     # checksum of the weights file actually loaded (None for random/builtin)
    weights_random: bool           # True when the weights are random: flagged loudly in every output
    preprocessing: str             # a stable description of the preprocessing (part of the cache key)
    dim: int                       # embedding dimension
    modalities: tuple[str, ...]    # which of image/sketch/text it embeds
    extra: dict[str, str] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, str]:
        """Flat string metadata for Parquet files (no secrets: weights URIs carry no credentials)."""
        d = asdict(self)
        d["modalities"] = ",".join(self.modalities)
        d["weights_random"] = str(self.weights_random).lower()
        d["dim"] = str(self.dim)
        d["weights_sha256"] = self.weights_sha256 or ""
        extra = d.pop("extra")
        out = {f"embedeval.model.{k}": str(v) for k, v in d.items()}
        out.update({f"embedeval.model.extra.{k}": str(v) for k, v in extra.items()})
        return out


@runtime_checkable
class EmbeddingModel(Protocol):
    """A loaded model replica. One lives in each Ray Data actor; methods run on batches."""

    info: ModelInfo

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        """The model's own preprocessing of one RGB image: a float32 CHW array."""
        ...

    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        """(n, C, H, W) float32 preprocessed images -> (n, dim) float32 embeddings, not normalised."""
        ...

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """n strings -> (n, dim) float32 embeddings. Raises ModelError for image-only models."""
        ...


def model_slug(spec: str) -> str:
    """A name safe for folder names and Parquet partition keys, derived deterministically from a spec."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-")
    return slug[:120] or "model"
