"""What `embedeval demo` runs by default: two nights of a small catalogue, sized for 2 CPU cores (38-46 s for
the command from a fresh clone on a quiet machine, 70 s on a slower one, README "Set up"; the goal is under 60 s).

Every score family, the report and the diff are still shown; what is smaller than a real run is said in
README "Set up": 150 items with two captions instead of a catalogue, and small architectures on random
weights (nothing can be downloaded) instead of pretrained ones. Measured costs on one core, per item (2026-12, torch 2.14):
resnet18 63 ms vs mobilenet_v3_small 11 ms; open_clip ViT-B-32 89 ms/image + 70 ms/caption vs ViT-S-32-alt
28 + 20 ms.
"""

from __future__ import annotations

DEMO_ITEMS = 150
# The demo runs two nights: the first has DEMO_ITEMS - DEMO_GROWTH items, the second all of them, so the
# cache (only the new items are embedded) and the night-over-night diff are shown.
DEMO_GROWTH = 30
# Still "several captions per image" for image<->text retrieval; the third was a third of the text tower's time.
DEMO_CAPTIONS = 2
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

# The demo's 150 items need no engine tiles on Ray: in-process tiles give the same bits
# (tests/scoring/test_job.py) without a task's latency per tile on a busy 2-core machine.
DEMO_SCORE: dict = {"use_ray": False}
# Fewer, smaller thumbnails: the example plots were most of the report's time.
DEMO_REPORT: dict = {"max_prototypes": 3, "max_thumbnails": 5, "max_ambiguity": 3, "thumbnail_px": 96, "dpi": 80}
# Read, decode and embed in plain Ray tasks: the two pooled worker processes serve all three models in
# turn, instead of two new actor processes (each importing torch and building the model) per model.
# All three models at once: their fixed costs (pipeline start, model builds) overlap on the two CPUs.
DEMO_EMBED: dict = {"replicas": "tasks", "models_at_once": 3}
