"""Small synthetic inputs shared by the model tests (a module with a unique name: tests/ has no packages)."""

from __future__ import annotations

import numpy as np
from PIL import Image

CLIP_ARCH = "ViT-S-32"  # the smallest open_clip config with a built-in tokenizer: ~63M params, loads in ~1 s


def solid_image(colour: tuple[int, int, int], size: tuple[int, int] = (96, 80)) -> Image.Image:
    return Image.new("RGB", size, colour)


def square_on_white(colour: tuple[int, int, int], side: int, canvas: int = 128, offset: int = 0) -> Image.Image:
    """A filled square of ``side`` pixels on a white canvas: catalogue-style object photos."""
    arr = np.full((canvas, canvas, 3), 255, dtype=np.uint8)
    top = (canvas - side) // 2 + offset
    arr[top:top + side, top:top + side] = colour
    return Image.fromarray(arr)
