"""Batch inference shared by the torch-based families: PIL -> CHW array, numpy batch -> numpy vectors.

Images reach a model either as float32 CHW arrays (the whole transform ran on the CPU worker) or, where
the transform splits (:func:`split_transform`), as uint8 CHW arrays that the model normalises on its own
device (:func:`normalise_uint8`): a quarter of the object-store bytes, the same vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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
              dim: int, spec: str, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """``encode`` on ``inputs`` moved to ``device`` without autograd; (n, dim) float32 numpy on the CPU.

    ``prepare`` runs on the device between the move and ``encode`` (the normalise half of a split
    transform). The output width is checked against ``dim`` because a wrong width would only surface
    much later, as an unreadable embeddings partition.
    """
    if inputs.shape[0] == 0:
        return np.zeros((0, dim), dtype=np.float32)
    with torch.inference_mode():
        moved = inputs.to(device, non_blocking=True)
        out = encode(prepare(moved) if prepare is not None else moved)
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


@dataclass(frozen=True)
class SplitPreprocess:
    """A model's image preprocessing cut in two where its pixels become numbers.

    ``geometric`` is everything before the conversion to a tensor (resize, centre crop, mode
    conversion); it takes a PIL RGB image on a CPU worker, or a uint8 CHW tensor on any device (the
    GPU JPEG path), and returns the same kind. :func:`uint8_chw` turns its PIL result into the uint8 CHW
    array that crosses the object store (a quarter of the float32 bytes). ``normalise`` is everything
    after the conversion (mean/std), run in the embed actor on its device on a float batch in [0, 1]
    (:func:`normalise_uint8`). ``geometric`` then ``uint8_chw`` then ``normalise_uint8`` computes exactly
    what the whole transform computes on a PIL image: to-tensor is ``pixels.to(float32) / 255`` there
    too, and mean/std are elementwise.
    """

    geometric: Callable[[Any], Any]
    normalise: Callable[[torch.Tensor], torch.Tensor]


def split_transform(transform: Any) -> SplitPreprocess | None:
    """Split a torchvision classification preset or a ``Compose`` with one to-tensor step; else None.

    None means the transform has a shape this function does not recognise (say a to-tensor step in the
    middle of PIL-only steps, or a custom callable): the caller then keeps the float32 path, which runs
    the whole transform on the CPU worker as before.
    """
    from torchvision.transforms import Compose, Normalize, PILToTensor, ToTensor
    from torchvision.transforms import functional as F
    from torchvision.transforms._presets import ImageClassification

    if isinstance(transform, ImageClassification):
        t = transform

        def geometric(img: Any) -> Any:
            return F.center_crop(F.resize(img, t.resize_size, interpolation=t.interpolation, antialias=t.antialias),
                                 t.crop_size)

        def normalise(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(x, mean=t.mean, std=t.std)

        return SplitPreprocess(geometric, normalise)
    if isinstance(transform, Compose):
        steps = list(transform.transforms)
        cut = [i for i, s in enumerate(steps) if isinstance(s, (ToTensor, PILToTensor))]
        if len(cut) != 1 or not all(isinstance(s, Normalize) for s in steps[cut[0] + 1:]):
            return None
        before, after = Compose(steps[:cut[0]]), steps[cut[0] + 1:]

        def normalise_steps(x: torch.Tensor) -> torch.Tensor:
            for step in after:
                x = step(x)
            return x

        return SplitPreprocess(before, normalise_steps)
    return None


def uint8_chw(split: SplitPreprocess, image: Image.Image) -> np.ndarray:
    """The geometric part on a PIL image: a contiguous uint8 (3, H, W) array (what the worker ships)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    out = split.geometric(image)
    if isinstance(out, Image.Image):
        if out.mode != "RGB":
            out = out.convert("RGB")
        return np.ascontiguousarray(np.asarray(out, dtype=np.uint8).transpose(2, 0, 1))
    return np.ascontiguousarray(out.detach().cpu().numpy(), dtype=np.uint8)


def normalise_uint8(split: SplitPreprocess, batch: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) uint8 on any device -> the model's float32 input on that device: /255, then mean/std."""
    if batch.dtype != torch.uint8 or batch.ndim != 4:
        raise ModelError(f"expected a (n, C, H, W) uint8 batch, got {tuple(batch.shape)} {batch.dtype}")
    return split.normalise(batch.to(torch.float32).div(255))


def uint8_batch_tensor(batch: np.ndarray | torch.Tensor, *, spec: str) -> torch.Tensor:
    """A (n, C, H, W) uint8 tensor from a stacked numpy batch (or the tensor itself, on its device)."""
    if isinstance(batch, torch.Tensor):
        out = batch
    else:
        out = torch.from_numpy(np.ascontiguousarray(batch))
    if out.dtype != torch.uint8 or out.ndim != 4:
        raise ModelError(f"{spec}: embed_uint8_images expects a (n, C, H, W) uint8 batch, "
                         f"got shape {tuple(out.shape)} {out.dtype}")
    return out


def embed_uint8(encode: Callable[[torch.Tensor], torch.Tensor], split: SplitPreprocess | None,
                batch: np.ndarray | torch.Tensor, *, device: str, dim: int, spec: str) -> np.ndarray:
    """``run_batch`` on a uint8 batch, normalised on ``device`` by ``split`` (None: the model cannot)."""
    if split is None:
        raise ModelError(f"{spec}: its preprocessing does not split into a uint8 part; embed float32 images")
    return run_batch(encode, uint8_batch_tensor(batch, spec=spec), device=device, dim=dim, spec=spec,
                     prepare=lambda x: normalise_uint8(split, x))
