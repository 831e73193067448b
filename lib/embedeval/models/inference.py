"""Batch inference shared by the torch-based families: PIL -> CHW array, numpy batch -> numpy vectors."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

from embedeval.models.base import ModelError


def transform_to_chw(transform: Callable[[Image.Image], torch.Tensor], image: Image.Image) -> np.ndarray:
    """Apply a torchvision-style transform to an RGB image and return a float32 CHW numpy array."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    out = transform(image)
    return np.ascontiguousarray(out.detach().cpu().numpy(), dtype=np.float32)


def run_batch(encode: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, *, device: str,
              dim: int, spec: str) -> np.ndarray:
    """``encode`` on ``inputs`` moved to ``device`` without autograd; (n, dim) float32 numpy on the CPU.

    The output width is checked against ``dim`` because a wrong width would only surface much later,
    as an unreadable embeddings partition.
    """
    if inputs.shape[0] == 0:
        return np.zeros((0, dim), dtype=np.float32)
    with torch.inference_mode():
        out = encode(inputs.to(device, non_blocking=True))
    if isinstance(out, (tuple, list)):  # e.g. GoogLeNet/Inception named tuples
        out = out[0]
    out = out.reshape(out.shape[0], -1).float().cpu().numpy()
    if out.shape[1] != dim:
        raise ModelError(f"{spec}: the model produced vectors of width {out.shape[1]}, expected {dim}")
    return np.ascontiguousarray(out, dtype=np.float32)


def image_batch_tensor(batch: np.ndarray, *, spec: str) -> torch.Tensor:
    """A (n, C, H, W) float32 tensor view of a preprocessed batch; other shapes are a caller bug."""
    arr = np.asarray(batch, dtype=np.float32)
    if arr.ndim != 4:
        raise ModelError(f"{spec}: embed_images expects a (n, C, H, W) batch, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))
