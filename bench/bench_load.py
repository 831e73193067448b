"""Load: generate, embed and score the demo catalogue at N items on this machine; time and peak memory.

Peak memory is the highest total resident memory of this process and all its children (the in-process
Ray: raylet, object store, workers), sampled every 0.5 s. Run:

    .venv/bin/python bench/bench_load.py --items 100000 --work-dir /tmp/load
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


class PeakMemory:
    """Samples the resident memory of a process tree in a background thread."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree_rss(self) -> int:
        me = psutil.Process(os.getpid())
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--model", default="builtin:pixelstats")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--anchors", default="1000", help="CorrEmbed anchors ('all' or a number)")
    parser.add_argument("--label-max-queries", type=int, default=1000,
                        help="sketch->image: seeded sample of queries ranked against the whole gallery")
    args = parser.parse_args()

    from embedeval.config import parse_config
    from embedeval.demo.corpus import write_demo_corpus
    from embedeval.pipeline.embed import embed_run
    from embedeval.workflow import score_from_config

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-load-"))
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB; items: {args.items}")
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        corpus = write_demo_corpus(work, args.items, progress=lambda n: print(f"  corpus: {n} items", flush=True))
        t_corpus = time.perf_counter() - t0
        config = parse_config({
            "root": str(work / "out"), "run_id": f"load-{args.items}", "manifest": str(corpus.manifest),
            "tag_categories": str(corpus.tag_categories), "models": [args.model],
            "embed": {"batch_size": 256, "rows_per_file": 16384, "modalities": ["image", "sketch"]},
            "score": {"corr_anchors": args.anchors if args.anchors == "all" else int(args.anchors),
                      "label_max_queries": args.label_max_queries},
        })
        t1 = time.perf_counter()
        summary = embed_run(config, echo=lambda line: print(line, flush=True))
        t_embed = time.perf_counter() - t1
        t2 = time.perf_counter()
        scores = score_from_config(config, echo=lambda line: print(line, flush=True))
        t_score = time.perf_counter() - t2
    embedded = sum(p.embedded for p in summary.partitions)
    print(f"corpus generation : {t_corpus:8.1f} s")
    print(f"embed             : {t_embed:8.1f} s  ({embedded} vectors, {embedded / t_embed:.0f}/s)")
    print(f"score             : {t_score:8.1f} s  ({scores.num_rows} score rows)")
    print(f"peak memory (RSS of the process tree): {mem.peak / 2**30:.2f} GiB "
          f"of {psutil.virtual_memory().total / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
