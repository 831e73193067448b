"""What `embedeval demo` runs by default: two nights of a small catalogue, sized for 2 CPU cores (98 s measured
on a quiet machine; the goal is under 60 s).

Every score family, the report and the diff are still shown; what is smaller than a real run is said in
README "Set up": 200 items instead of a catalogue, and small architectures on random weights (nothing can
be downloaded) instead of pretrained ones. Measured costs on one core, per item (2026-12, torch 2.14):
resnet18 63 ms vs mobilenet_v3_small 11 ms; open_clip ViT-B-32 89 ms/image + 70 ms/caption vs ViT-S-32-alt
28 + 20 ms.
"""

from __future__ import annotations

DEMO_ITEMS = 200
# The demo runs two nights: the first has DEMO_ITEMS - DEMO_GROWTH items, the second all of them, so the
# cache (only the new items are embedded) and the night-over-night diff are shown.
DEMO_GROWTH = 40
DEMO_IMAGE_PX = 96   # the rendered PNGs; every model resizes to its own input size anyway

DEMO_MODELS: list[dict] = [
    # Sees colour and shape with no learned weights: the baseline that must beat random weights.
    {"spec": "builtin:pixelstats", "name": "pixelstats"},
    # Real architectures, random weights (nothing can be downloaded here): flagged in every output.
    {"spec": "torchvision:mobilenet_v3_small:random", "name": "mobilenet-v3-small-random",
     "columns": {"imagenet_top1": 0.1}},
    # The smallest open_clip image+text architecture: image<->text retrieval and the modality gap.
    {"spec": "open_clip:ViT-S-32-alt:random", "name": "clip-vit-s-32-random", "batch_size": 64},
]

# The demo's 200 items need no engine tiles on Ray: in-process tiles give the same bits
# (tests/scoring/test_job.py) without a task's latency per tile on a busy 2-core machine.
DEMO_SCORE: dict = {"use_ray": False}
# Fewer, smaller thumbnails: the example plots were most of the report's time.
DEMO_REPORT: dict = {"max_prototypes": 4, "max_thumbnails": 6, "max_ambiguity": 5, "thumbnail_px": 96, "dpi": 80}
# Read, decode and embed in plain Ray tasks: the two pooled worker processes serve all three models in
# turn, instead of two new actor processes (each importing torch and building the model) per model.
DEMO_EMBED: dict = {"replicas": "tasks"}
