"""builtin:pixelstats: colour decides similarity, and object size is linearly readable."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedeval.models.registry import load_model
from modelkit import solid_image, square_on_white


def _embed(model, images) -> np.ndarray:  # noqa: ANN001
    return model.embed_images(np.stack([model.preprocess_image(im) for im in images]))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_info_marks_it_as_builtin_not_random() -> None:
    info = load_model("builtin:pixelstats").info
    assert (info.family, info.weights_source, info.weights_random) == ("builtin", "builtin", False)
    assert 64 <= info.dim <= 256 and info.modalities == ("image", "sketch")


def test_same_colour_is_closer_than_different_colour() -> None:
    model = load_model("builtin:pixelstats")
    red_a, red_b, blue = _embed(model, [square_on_white((220, 20, 20), 60),
                                        square_on_white((200, 0, 30), 90, offset=10),  # hue wraps past 360
                                        square_on_white((20, 30, 220), 60)])
    assert _cos(red_a, red_b) > _cos(red_a, blue) + 0.3
    full_red, full_blue = _embed(model, [solid_image((230, 10, 10)), solid_image((10, 10, 230))])
    assert _cos(full_red, red_a) > _cos(full_red, full_blue)


def test_object_size_is_linearly_recoverable() -> None:
    model = load_model("builtin:pixelstats")
    rng = np.random.default_rng(0)
    sides = rng.integers(10, 120, size=60)
    colours = rng.integers(0, 200, size=(60, 3))
    feats = _embed(model, [square_on_white(tuple(int(c) for c in col), int(s)) for col, s in zip(colours, sides)])
    X = np.c_[feats, np.ones(len(feats))]
    area = (sides / 128.0) ** 2
    coef, *_ = np.linalg.lstsq(X[:40], area[:40], rcond=None)
    pred = X[40:] @ coef
    r2 = 1 - ((pred - area[40:]) ** 2).sum() / ((area[40:] - area[40:].mean()) ** 2).sum()
    assert r2 > 0.95


def test_deterministic_and_shape_checked() -> None:
    model = load_model("builtin:pixelstats")
    images = [square_on_white((0, 128, 0), 50), solid_image((5, 5, 5))]
    a, b = _embed(model, images), _embed(load_model("builtin:pixelstats"), images)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, model.info.dim) and a.dtype == np.float32 and np.isfinite(a).all()


def test_embedding_with_it_never_imports_torch() -> None:
    """A worker that embeds only with pixel statistics must not pay torch's import (2 CPU-seconds a process);
    the device check (``device: cpu``) was where it slipped in. A fresh interpreter: this one has torch."""
    import subprocess
    import sys

    probe = ("import sys\n"
             "import numpy as np\n"
             "from embedeval.pipeline.stages import Embedder\n"
             "from modelkit import solid_image\n"
             "replica = Embedder('builtin:pixelstats', None, 'cpu', torch_threads=1)\n"
             "model = replica.model\n"
             "vectors = model.embed_images(np.stack([model.preprocess_image(solid_image((200, 10, 10)))]))\n"
             "assert vectors.shape == (1, model.info.dim), vectors.shape\n"
             "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
