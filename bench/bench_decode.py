"""Decode + preprocess rate per CPU core, and object-store bytes per image, uint8 vs float32 transport.

One process, one thread (``torch.set_num_threads(1)``), generated JPEGs (smooth content plus noise, so
their size is photo-like). Each path reads the same in-memory bytes:

  decode      ``media.decode_image`` only (Pillow, with the decompression-bomb guard): the baseline
  uint8       decode + the geometric half of the model's preprocessing (resize, centre crop, uint8 CHW):
              what a prepare worker does now
  float32     decode + the whole transform to a float32 CHW array: what it did before
  gpu-jpeg    (only where CUDA is available) ``device_decode.decode_jpegs`` on the GPU, batches of 64

Rates are images/s on one core, with ratios against ``decode`` measured in the same run; bytes are the
``pixels`` payload a prepared row carries to the embed actor. ``cores per GPU`` is how many such cores
feed a GPU that embeds ``--gpu-rate`` images/s.

    nice -n 10 .venv/bin/python bench/bench_decode.py --images 500 --width 800 --height 600
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time

import numpy as np


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"cuda={torch.cuda.is_available()}")


def make_jpegs(n: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.002, 0.02, 3)
        base = np.stack([128 + 100 * np.sin(a * xx + b * yy + k * c * 50) for k in range(3)], axis=2)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def rate(fn, items: list[bytes]) -> tuple[float, object]:  # noqa: ANN001
    fn(items[0])  # warm up (first-call imports, allocator)
    start = time.perf_counter()
    last = None
    for data in items:
        last = fn(data)
    return len(items) / (time.perf_counter() - start), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--height", type=int, default=600)
    parser.add_argument("--model", default="torchvision:resnet50:random")
    parser.add_argument("--gpu-rate", type=float, default=3000.0, help="images/s one GPU embeds")
    args = parser.parse_args()

    import torch

    from embedeval.models.inference import uint8_chw
    from embedeval.models.registry import load_preprocessor, load_split_preprocess
    from embedeval.pipeline.media import decode_image

    torch.set_num_threads(1)
    max_pixels = 40_000_000
    jpegs = make_jpegs(args.images, args.width, args.height)
    split = load_split_preprocess(args.model)
    whole = load_preprocessor(args.model)
    assert split is not None, f"{args.model}: its preprocessing does not split"

    decode_rate, _ = rate(lambda d: decode_image(d, max_pixels), jpegs)
    uint8_rate, u8 = rate(lambda d: uint8_chw(split, decode_image(d, max_pixels)), jpegs)
    float_rate, f32 = rate(lambda d: np.ascontiguousarray(whole(decode_image(d, max_pixels)), np.float32), jpegs)
    jpeg_bytes = float(np.mean([len(j) for j in jpegs]))

    print(f"machine: {machine()}")
    print(f"{args.images} JPEGs of {args.width}x{args.height} (mean {jpeg_bytes / 1024:.0f} KiB), model {args.model}, "
          "1 thread")
    print(f"{'path':<10} {'images/s/core':>14} {'vs decode':>10} {'bytes/image':>12} {'cores per GPU':>14}")
    print(f"{'decode':<10} {decode_rate:>14.1f} {1.0:>10.2f} {'-':>12} {args.gpu_rate / decode_rate:>14.1f}")
    for name, r, payload in (("uint8", uint8_rate, u8), ("float32", float_rate, f32)):
        print(f"{name:<10} {r:>14.1f} {r / decode_rate:>10.2f} {payload.nbytes:>12d} {args.gpu_rate / r:>14.1f}")
    print(f"object store bytes per image: uint8 {u8.nbytes} / float32 {f32.nbytes} = {u8.nbytes / f32.nbytes:.2f}; "
          f"JPEG bytes (GPU decode path) {jpeg_bytes:.0f} = {jpeg_bytes / f32.nbytes:.2f} of float32")
    if torch.cuda.is_available():
        from embedeval.pipeline.device_decode import decode_jpegs

        decode_jpegs(jpegs[:64], split, "cuda", max_pixels)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(jpegs), 64):
            decode_jpegs(jpegs[i:i + 64], split, "cuda", max_pixels)
        torch.cuda.synchronize()
        gpu = len(jpegs) / (time.perf_counter() - start)
        print(f"gpu-jpeg   {gpu:>14.1f} images/s on the GPU ({gpu / decode_rate:.1f}x one core's decode)")


if __name__ == "__main__":
    main()
