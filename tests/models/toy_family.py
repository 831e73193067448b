"""A model family defined outside the library, the way ARCHITECTURE.md's "Add a model family" says.

``toy:<dim>`` embeds an image as its mean colour repeated to ``dim`` values and a text as its length and
vowel count; ``loads`` counts how often a model was loaded, so a test can tell describing from loading.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from embedeval.models.base import ALL_MODALITIES, ModelError, ModelInfo
from embedeval.models.family import ModelFamily, register_family
from embedeval.models.spec import LoadOptions, ParsedSpec

loads: list[str] = []


class ToyModel:
    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize((8, 8)), np.float32).transpose(2, 0, 1) / 255.0

    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        means = np.asarray(batch, np.float32).mean(axis=(2, 3))                  # (n, 3)
        return means[:, np.arange(self.info.dim) % 3] + np.float32(1e-3)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        feats = np.asarray([[len(t), sum(c in "aeiou" for c in t)] for t in texts], np.float32).reshape(-1, 2)
        return feats[:, np.arange(self.info.dim) % 2]


class ToyFamily(ModelFamily):
    name = "toy"
    forms = ("toy:<dim>",)
    modalities = ALL_MODALITIES

    def parse(self, spec: str, rest: str) -> ParsedSpec:
        if not rest.isdigit() or int(rest) < 1:
            raise ModelError(f"model spec {spec!r}: the dimension must be a positive integer")
        return ParsedSpec(spec=spec, family=self.name, architecture="toy", weights="none", kind="builtin")

    def describe(self, parsed: ParsedSpec, opts: LoadOptions) -> ModelInfo:
        return ModelInfo(spec=parsed.spec, family=self.name, architecture="toy", weights_source="none",
                         weights_sha256=None, weights_random=False, preprocessing="toy: 8x8 RGB",
                         dim=int(parsed.spec.split(":")[1]), modalities=self.modalities)

    def load(self, parsed: ParsedSpec, opts: LoadOptions) -> ToyModel:
        loads.append(parsed.spec)
        return ToyModel(self.describe(parsed, opts))


register_family(ToyFamily())
