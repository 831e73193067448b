"""Images/s of the Ray embed pipeline against a plain single-process torch loop, measured in one run.

Both sides read the same PNG files, decode them with the same code, apply the model's own preprocessing
and run the same model at the same batch size. The loop is the baseline a user would write by hand:

    for batch in chunks(paths): embed_images(stack(preprocess(decode(read(p))) for p in batch))

The pipeline is `embed_run` (Ray Data: prepare actor -> embed actor -> writer tasks, Parquet output).
It runs twice, on a quarter of the images and on all of them: the difference gives its steady-state
rate (images/s once running) and its fixed cost (actor start, model load, dataset planning), so "where
the rest goes" is visible. The loop's model load is excluded from its time, as a user's loop would
load the model once; the pipeline's end-to-end ratio includes its fixed cost.

    .venv/bin/python bench/bench_embed.py --images 512 --model torchvision:resnet18:random --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), cuda={torch.cuda.is_available()}")


def plain_loop(paths: list[str], spec: str, batch_size: int, device: str) -> tuple[float, int]:
    """The hand-written baseline. Returns (seconds for the images, images embedded); model load excluded."""
    from embedeval.models.registry import load_model
    from embedeval.pipeline.media import MediaReader

    model = load_model(spec, device=device)
    reader = MediaReader()
    done = 0
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = np.stack([model.preprocess_image(reader.read_image(p)) for p in paths[start:start + batch_size]])
        vectors = model.embed_images(batch)
        done += len(vectors)
    return time.perf_counter() - started, done


def ray_pipeline(manifest: Path, root: Path, spec: str, batch_size: int, run_id: str) -> tuple[float, int]:
    from embedeval.config import parse_config
    from embedeval.pipeline.embed import embed_run

    config = parse_config({
        "root": str(root), "run_id": run_id, "manifest": str(manifest), "models": [spec],
        "embed": {"batch_size": batch_size, "modalities": ["image"], "rows_per_file": 4096},
    })
    started = time.perf_counter()
    summary = embed_run(config, echo=lambda _: None)
    return time.perf_counter() - started, sum(p.embedded for p in summary.partitions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--model", default="torchvision:resnet18:random")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()

    import ray

    from embedeval.demo.corpus import write_demo_corpus

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-embed-"))
    corpus = write_demo_corpus(work, args.images)
    paths = sorted(str(p) for p in (corpus.root / "images").rglob("*.png"))[: args.images]
    print(f"machine: {machine()}")
    print(f"images: {len(paths)}  model: {args.model}  batch size: {args.batch_size}")

    loop_s, loop_n = plain_loop(paths, args.model, args.batch_size, args.device)
    print(f"plain torch loop   : {loop_n} images in {loop_s:7.2f} s = {loop_n / loop_s:7.1f} images/s")

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start_s = time.perf_counter() - t0
    import pyarrow.parquet as pq

    quarter = corpus.root / "manifest.quarter.parquet"
    pq.write_table(pq.read_table(corpus.manifest).slice(0, max(1, len(paths) // 4)), quarter)
    small_s, small_n = ray_pipeline(quarter, work / "small", args.model, args.batch_size, "quarter")
    pipe_s, pipe_n = ray_pipeline(corpus.manifest, work / "out", args.model, args.batch_size, "bench")
    steady = (pipe_n - small_n) / max(pipe_s - small_s, 1e-9)
    fixed = pipe_s - pipe_n / steady
    loop_rate = loop_n / loop_s
    print(f"ray pipeline       : {pipe_n} images in {pipe_s:7.2f} s = {pipe_n / pipe_s:7.1f} images/s end to end")
    print(f"  steady state     : {steady:7.1f} images/s  (from {small_n} and {pipe_n} images)")
    print(f"  fixed cost       : {fixed:7.2f} s per run (actor start, model load, planning); "
          f"ray.init once: {ray_start_s:.2f} s")
    print(f"ratio end to end   : {(pipe_n / pipe_s) / loop_rate:.2f}x  (goal >= 0.80x)")
    print(f"ratio steady state : {steady / loop_rate:.2f}x")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
