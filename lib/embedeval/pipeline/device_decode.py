"""JPEG decoding inside the embed actor, on its device (nvjpeg on CUDA), with Pillow as the per-image fallback.

A GPU node rarely has the cores to decode thousands of JPEGs a second with Pillow, so where a GPU embeds,
the prepare stage ships the JPEG bytes that :func:`embedeval.pipeline.media.device_decodable_jpeg` accepts
and this module decodes and resizes them next to the model. An image the device decoder refuses is decoded
by :func:`embedeval.pipeline.media.decode_image` instead, so it is embedded or quarantined exactly as on
the CPU path. Memory: one batch of decoded images on the device.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from embedeval.models.inference import SplitPreprocess, uint8_chw
from embedeval.pipeline.media import BadItem, decode_image

log = logging.getLogger(__name__)


def _decode_on(device: str, datas: list[bytes]) -> list[torch.Tensor | None]:
    """Decoded RGB uint8 CHW tensors on ``device``, None where the device decoder failed on that image."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notice for its image decoders
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except Exception as exc:  # noqa: BLE001 - find the image(s) at fault, decode the rest on the device
            log.info("batch JPEG decode on %s failed (%s); decoding one by one", device, str(exc)[:200])
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except Exception:  # noqa: BLE001 - this one takes the Pillow path
                out.append(None)
        return out


def decode_jpegs(datas: list[bytes], split: SplitPreprocess, device: str,
                 max_pixels: int) -> list[torch.Tensor | BadItem]:
    """Per JPEG: its geometric preprocessing as a uint8 (3, H, W) tensor on ``device``, or why it failed.

    Decoded on ``device`` and resized/cropped there by ``split.geometric``; an image the device decoder
    fails on is decoded by Pillow with the usual limits (``max_pixels``) and its :class:`BadItem` returned
    when that fails too, for the caller to quarantine.
    """
    out: list[torch.Tensor | BadItem] = []
    for data, decoded in zip(datas, _decode_on(device, datas)):
        if decoded is not None:
            try:
                out.append(split.geometric(decoded).contiguous())
                continue
            except Exception:  # noqa: BLE001 - the Pillow path below decides
                pass
        try:
            pixels = uint8_chw(split, decode_image(data, max_pixels))
            out.append(torch.from_numpy(pixels).to(device))
        except BadItem as bad:
            out.append(bad)
        except Exception as exc:  # noqa: BLE001 - quarantined like any preprocessing failure on the CPU path
            out.append(BadItem("decode", f"preprocessing failed: {type(exc).__name__}: {str(exc)[:200]}"))
    return out


def pixels_from_row(pixels: bytes, shape: list[int]) -> torch.Tensor:
    """A uint8 CHW tensor (on the CPU) from a prepared row's bytes."""
    return torch.from_numpy(np.frombuffer(pixels, dtype=np.uint8).reshape(shape).copy())
