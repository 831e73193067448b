"""``builtin:pixelstats`` — a hand-crafted image embedder with no learned weights.

It is the demo's "sees colour" baseline: a model whose notion of similar is known in advance, so a
report that ranks it above a learned model says something about the judgements, not about the code.
Deterministic (pure numpy on a fixed 64x64 input), the same on every machine.

Vector layout (dim 96), blocks chosen so cosine similarity is dominated by colour while object size
stays linearly readable:

* 76 colour: a foreground-weighted HSV histogram — 12 hue x 2 saturation x 3 value bins for chromatic
  pixels plus 4 value bins for grey/dark pixels (whose hue is noise) — square-rooted (Hellinger), unit L2.
* 9 edges: a gradient-magnitude-weighted histogram of 8 unsigned orientations (square-rooted, scaled to
  L2 = 0.35) and the mean gradient magnitude.
* 11 shape: foreground area fraction, its square root, bounding-box width and height fractions, fill
  ratio (area / box area), centroid x/y and foreground occupancy of the four image quadrants, all
  scaled by 0.25.

The foreground is every pixel that differs from the median colour of the 2-pixel border (catalogue
images sit on plain backgrounds); when almost nothing differs (full-bleed photos), colour comes from all
pixels and the area features stay near zero.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from embedeval.models.base import IMAGE_MODALITIES, ModelError, ModelInfo
from embedeval.models.family import ModelFamily, register_family
from embedeval.models.spec import LoadOptions, ParsedSpec, did_you_mean

FAMILY = "builtin"
FORMS = ("builtin:pixelstats",)
BUILTINS = ("pixelstats",)

SIZE = 64
_HUE_BINS, _SAT_BINS, _VAL_BINS, _GREY_BINS = 12, 2, 3, 4
_ORIENT_BINS = 8
_COLOUR_DIM = _HUE_BINS * _SAT_BINS * _VAL_BINS + _GREY_BINS
DIM = _COLOUR_DIM + _ORIENT_BINS + 1 + 11
_FG_THRESHOLD = 0.12       # max channel difference from the background colour, on a 0..1 scale
_MIN_FG_FRACTION = 0.01
_GREY_SAT, _DARK_VAL = 0.2, 0.15
# Block weights against the unit-norm colour block: small enough that colour decides cosine similarity,
# while the shape features stay exactly linear in area/size (a scale does not change a linear read-out).
_EDGE_WEIGHT, _SHAPE_WEIGHT = 0.35, 0.25
PREPROCESSING = (f"pixelstats-v1: RGB, resize {SIZE}x{SIZE} bilinear, scale to [0,1]; "
                 f"border-median background, threshold {_FG_THRESHOLD}")


class BuiltinFamily(ModelFamily):
    """Hand-written embedders: no weights, so describing one costs nothing and loading one little."""

    name = FAMILY
    forms = FORMS
    modalities = IMAGE_MODALITIES

    def parse(self, spec: str, rest: str) -> ParsedSpec:
        if rest not in BUILTINS:
            raise ModelError(f"model spec {spec!r}: unknown builtin {rest!r}{did_you_mean(rest, BUILTINS)}; "
                             f"builtins: {', '.join(BUILTINS)}")
        return ParsedSpec(spec=spec, family=FAMILY, architecture=rest, weights="builtin", kind="builtin")

    def load(self, parsed: ParsedSpec, opts: LoadOptions) -> "PixelStatsModel":
        return PixelStatsModel(parsed.spec)

    def describe(self, parsed: ParsedSpec, opts: LoadOptions) -> ModelInfo:
        return PixelStatsModel(parsed.spec).info

    def preprocessor(self, parsed: ParsedSpec, opts: LoadOptions) -> Callable[[Image.Image], np.ndarray]:
        return PixelStatsModel(parsed.spec).preprocess_image


class PixelStatsModel:
    """Colour histogram + edge orientations + foreground geometry; see the module docstring."""

    def __init__(self, spec: str = "builtin:pixelstats") -> None:
        self.info = ModelInfo(
            spec=spec,
            family=FAMILY,
            architecture="pixelstats",
            weights_source="builtin",
            weights_sha256=None,
            weights_random=False,
            preprocessing=PREPROCESSING,
            dim=DIM,
            modalities=IMAGE_MODALITIES,
            extra={"version": "1"},
        )

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        arr = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, SIZE, SIZE):
            raise ModelError(f"{self.info.spec}: expects (n, 3, {SIZE}, {SIZE}) batches from preprocess_image, "
                             f"got {x.shape}")
        rgb = np.clip(x.transpose(0, 2, 3, 1), 0.0, 1.0)          # (n, H, W, 3)
        fg = _foreground(rgb)
        return np.concatenate([_colour(rgb, fg), _edges(rgb), _shape(fg)], axis=1).astype(np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise ModelError(f"{self.info.spec} embeds images only; it has no text tower")


def _foreground(rgb: np.ndarray) -> np.ndarray:
    border = np.concatenate([rgb[:, :2].reshape(len(rgb), -1, 3), rgb[:, -2:].reshape(len(rgb), -1, 3),
                             rgb[:, :, :2].reshape(len(rgb), -1, 3), rgb[:, :, -2:].reshape(len(rgb), -1, 3)], axis=1)
    background = np.median(border, axis=1)[:, None, None, :]
    return np.abs(rgb - background).max(axis=3) > _FG_THRESHOLD   # (n, H, W) bool


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    safe_c = np.maximum(c, 1e-12)
    h = np.where(v == r, ((g - b) / safe_c) % 6.0, np.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0))
    h = np.where(c > 0, h / 6.0, 0.0)                               # in [0, 1)
    return h, s, v


def _colour(rgb: np.ndarray, fg: np.ndarray) -> np.ndarray:
    n = len(rgb)
    h, s, v = _rgb_to_hsv(rgb)
    weights = fg.astype(np.float64)
    too_small = weights.reshape(n, -1).mean(axis=1) < _MIN_FG_FRACTION
    weights[too_small] = 1.0
    grey = (s < _GREY_SAT) | (v < _DARK_VAL)
    # shifted half a bin so pure red (hue 0 = 1) sits in the middle of bin 0 instead of on a boundary
    hue_bin = np.floor(h * _HUE_BINS + 0.5).astype(np.int64) % _HUE_BINS
    sat_bin = np.minimum(((s - _GREY_SAT) / (1 - _GREY_SAT) * _SAT_BINS).astype(np.int64), _SAT_BINS - 1).clip(0)
    val_bin = np.minimum((v * _VAL_BINS).astype(np.int64), _VAL_BINS - 1)
    grey_bin = np.minimum((v * _GREY_BINS).astype(np.int64), _GREY_BINS - 1)
    colour_bin = (hue_bin * _SAT_BINS + sat_bin) * _VAL_BINS + val_bin
    bins = np.where(grey, _HUE_BINS * _SAT_BINS * _VAL_BINS + grey_bin, colour_bin)
    flat = (bins + np.arange(n)[:, None, None] * _COLOUR_DIM).reshape(-1)
    hist = np.bincount(flat, weights=weights.reshape(-1), minlength=n * _COLOUR_DIM).reshape(n, _COLOUR_DIM)
    return _unit(np.sqrt(hist / np.maximum(hist.sum(axis=1, keepdims=True), 1e-12)))


def _edges(rgb: np.ndarray) -> np.ndarray:
    n = len(rgb)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gx = np.zeros_like(grey)
    gy = np.zeros_like(grey)
    gx[:, :, 1:-1] = (grey[:, :, 2:] - grey[:, :, :-2]) / 2
    gy[:, 1:-1, :] = (grey[:, 2:, :] - grey[:, :-2, :]) / 2
    magnitude = np.hypot(gx, gy)
    angle = np.arctan2(gy, gx) % np.pi                              # unsigned orientation
    obin = np.minimum((angle / np.pi * _ORIENT_BINS).astype(np.int64), _ORIENT_BINS - 1)
    flat = (obin + np.arange(n)[:, None, None] * _ORIENT_BINS).reshape(-1)
    hist = np.bincount(flat, weights=magnitude.reshape(-1).astype(np.float64),
                       minlength=n * _ORIENT_BINS).reshape(n, _ORIENT_BINS)
    hist = _EDGE_WEIGHT * _unit(np.sqrt(hist / np.maximum(hist.sum(axis=1, keepdims=True), 1e-12)))
    return np.concatenate([hist, magnitude.reshape(n, -1).mean(axis=1, keepdims=True)], axis=1)


def _shape(fg: np.ndarray) -> np.ndarray:
    n, height, width = fg.shape
    f = fg.astype(np.float64)
    area = f.reshape(n, -1).mean(axis=1)
    rows, cols = f.any(axis=2), f.any(axis=1)
    box_h = np.where(rows.any(axis=1), height - rows.argmax(axis=1) - rows[:, ::-1].argmax(axis=1), 0) / height
    box_w = np.where(cols.any(axis=1), width - cols.argmax(axis=1) - cols[:, ::-1].argmax(axis=1), 0) / width
    box_area = box_w * box_h
    fill = np.where(box_area > 0, area / np.maximum(box_area, 1e-12), 0.0)
    total = np.maximum(f.sum(axis=(1, 2)), 1e-12)
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    cy = np.where(area > 0, (f.sum(axis=2) * ys).sum(axis=1) / total, 0.5)
    cx = np.where(area > 0, (f.sum(axis=1) * xs).sum(axis=1) / total, 0.5)
    hh, hw = height // 2, width // 2
    quadrants = [f[:, :hh, :hw], f[:, :hh, hw:], f[:, hh:, :hw], f[:, hh:, hw:]]
    occupancy = [q.reshape(n, -1).mean(axis=1) for q in quadrants]
    return _SHAPE_WEIGHT * np.stack([area, np.sqrt(area), box_w, box_h, fill, cx, cy, *occupancy], axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


register_family(BuiltinFamily())
