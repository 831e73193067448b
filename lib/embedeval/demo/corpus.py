"""A deterministic demo catalogue whose structure is known, so every later score has a right direction.

Each item is a rendered shape: class (the label), colour, pattern, size, rotation and brightness are drawn
from a seeded generator. From those facts come the image, a sketch (a wobbly line drawing of a shape of
the same class), several captions, human-style tags with categories, continuous attributes and splits.
So we know in advance that an embedder that sees colour must beat random weights on the colour tags, that
a rank axis for ``attr_size`` must order items by size, and that sketches retrieve images of their class.

Nothing is downloaded; a few hundred items take a second or two, 1M items are possible for benchmarks.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring")
UNSEEN_SHAPES = ("hexagon", "diamond")   # held out as unseen classes for zero-shot sketch retrieval
COLOURS = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 210),
    "yellow": (230, 200, 40),
    "purple": (140, 60, 170),
    "orange": (240, 130, 30),
}
PATTERNS = ("solid", "striped", "dotted", "checked")
BACKGROUND = (235, 235, 230)
# A tag every item carries: it tells nothing, so informative-tag weighting must give it weight 0.
UNIVERSAL_TAG = "catalogue"


@dataclass(frozen=True)
class DemoItem:
    id: str
    shape: str
    colour: str
    pattern: str
    size: float        # fraction of the image side the shape spans, 0.3 .. 0.9
    rotation: float    # degrees
    brightness: float  # 0.6 .. 1.0 multiplier on the colour
    split: str         # train | test
    class_split: str   # seen | unseen


@dataclass(frozen=True)
class DemoCorpus:
    root: Path
    manifest: Path
    tag_categories: Path
    items: int


def size_word(size: float) -> str:
    return "small" if size < 0.5 else ("medium" if size < 0.7 else "large")


def sample_item(index: int, seed: int = 0, width: int = 6) -> DemoItem:
    """Item ``index`` of the catalogue; seeded per item so a grown catalogue keeps its first items unchanged."""
    rng = np.random.default_rng([seed, index])
    shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
    colour = list(COLOURS)[int(rng.integers(0, len(COLOURS)))]
    pattern = PATTERNS[int(rng.integers(0, len(PATTERNS)))]
    size, rotation, brightness = float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.0, 360.0)), float(rng.uniform(0.6, 1.0))
    return DemoItem(
        id=f"item-{index:0{width}d}", shape=shape, colour=colour, pattern=pattern, size=size, rotation=rotation,
        brightness=brightness, split="test" if rng.random() < 0.25 else "train",
        class_split="unseen" if shape in UNSEEN_SHAPES else "seen",
    )


def sample_items(n_items: int, seed: int = 0) -> list[DemoItem]:
    width = max(6, len(str(n_items)))
    return [sample_item(i, seed, width) for i in range(n_items)]


def shape_outline(shape: str, cx: float, cy: float, radius: float, rotation: float,
                  wobble: np.random.Generator | None = None) -> list[tuple[float, float]]:
    """Polygon vertices for a shape; ``wobble`` jitters them to look hand-drawn (sketches)."""
    def ring(n: int, r: float, phase: float = 0.0) -> list[tuple[float, float]]:
        return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]

    if shape in ("circle", "ring"):
        pts = ring(48, radius)
    elif shape == "square":
        pts = ring(4, radius, math.pi / 4)
    elif shape == "triangle":
        pts = ring(3, radius, -math.pi / 2)
    elif shape == "hexagon":
        pts = ring(6, radius)
    elif shape == "diamond":
        pts = [(0, -radius), (radius * 0.6, 0), (0, radius), (-radius * 0.6, 0)]
    elif shape == "star":
        outer, inner = ring(5, radius, -math.pi / 2), ring(5, radius * 0.45, -math.pi / 2 + math.pi / 5)
        pts = [p for pair in zip(outer, inner) for p in pair]
    elif shape == "cross":
        a, b = radius, radius * 0.35
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    theta = math.radians(rotation)
    c, s = math.cos(theta), math.sin(theta)
    out = []
    for x, y in pts:
        if wobble is not None:
            x += wobble.normal(0, radius * 0.04)
            y += wobble.normal(0, radius * 0.04)
        out.append((cx + c * x - s * y, cy + s * x + c * y))
    return out


def render_image(item: DemoItem, size_px: int = 96, seed: int = 0) -> Image.Image:
    """The product photo: a coloured, patterned shape on a plain background with a little noise."""
    rng = np.random.default_rng([seed, int(item.id.rsplit("-", 1)[1])])
    base = np.asarray(COLOURS[item.colour], dtype=np.float64) * item.brightness
    fill = tuple(int(v) for v in base)
    dark = tuple(int(v * 0.55) for v in base)
    img = Image.new("RGB", (size_px, size_px), BACKGROUND)
    mask = Image.new("L", (size_px, size_px), 0)
    mdraw = ImageDraw.Draw(mask)
    cx = cy = size_px / 2
    radius = item.size * size_px / 2
    mdraw.polygon(shape_outline(item.shape, cx, cy, radius, item.rotation), fill=255)
    if item.shape == "ring":
        mdraw.ellipse([cx - radius * 0.55, cy - radius * 0.55, cx + radius * 0.55, cy + radius * 0.55], fill=0)
    texture = Image.new("RGB", (size_px, size_px), fill)
    tdraw = ImageDraw.Draw(texture)
    step = max(4, size_px // 12)
    if item.pattern == "striped":
        for x0 in range(-size_px, 2 * size_px, step * 2):
            tdraw.polygon([(x0, 0), (x0 + step, 0), (x0 + step + size_px, size_px), (x0 + size_px, size_px)], fill=dark)
    elif item.pattern == "dotted":
        for y0 in range(step // 2, size_px, step):
            for x0 in range(step // 2, size_px, step):
                tdraw.ellipse([x0 - step / 4, y0 - step / 4, x0 + step / 4, y0 + step / 4], fill=dark)
    elif item.pattern == "checked":
        for y0 in range(0, size_px, step):
            for x0 in range(0, size_px, step):
                if ((x0 // step) + (y0 // step)) % 2:
                    tdraw.rectangle([x0, y0, x0 + step - 1, y0 + step - 1], fill=dark)
    img.paste(texture, (0, 0), mask)
    noise = rng.normal(0, 4, (size_px, size_px, 3))
    arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def render_sketch(item: DemoItem, size_px: int = 96, seed: int = 0) -> Image.Image:
    """A line drawing of a shape of the item's class, with its own size, rotation and wobble (not a trace)."""
    rng = np.random.default_rng([seed, 7, int(item.id.rsplit("-", 1)[1])])
    img = Image.new("RGB", (size_px, size_px), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    radius = rng.uniform(0.3, 0.45) * size_px
    cx, cy = size_px / 2 + rng.normal(0, 3), size_px / 2 + rng.normal(0, 3)
    pts = shape_outline(item.shape, cx, cy, radius, rng.uniform(0, 360), wobble=rng)
    draw.line(pts + [pts[0]], fill=(0, 0, 0), width=2)
    if item.shape == "ring":
        r2 = radius * 0.55
        draw.ellipse([cx - r2, cy - r2, cx + r2, cy + r2], outline=(0, 0, 0), width=2)
    return img


def captions_for(item: DemoItem) -> list[str]:
    size = size_word(item.size)
    patt = {"solid": "plain", "striped": "striped", "dotted": "polka-dot", "checked": "checkered"}[item.pattern]
    return [
        f"a {size} {item.colour} {item.pattern} {item.shape}",
        f"a {item.shape} in {item.colour} with a {patt} pattern",
        f"{item.colour} {item.shape}, {size}, turned about {int(round(item.rotation / 15) * 15)} degrees",
    ]


def tags_for(item: DemoItem, seed: int = 0) -> list[str]:
    """Human tags: mostly complete, sometimes a tag is missing (humans forget), plus one universal tag."""
    rng = np.random.default_rng([seed, 99, int(item.id.rsplit("-", 1)[1])])
    tags = [item.colour, item.pattern, item.shape, size_word(item.size)]
    kept = [t for t in tags if rng.random() > 0.05]
    return kept + [UNIVERSAL_TAG]


def tag_category_rows() -> list[tuple[str, str]]:
    rows = [(c, "colour") for c in COLOURS] + [(p, "pattern") for p in PATTERNS]
    rows += [(s, "shape") for s in SHAPES] + [(w, "size") for w in ("small", "medium", "large")]
    rows.append((UNIVERSAL_TAG, "general"))
    return rows


def item_relpath(kind: str, item_id: str, n_items: int) -> str:
    """Relative path; big corpora are spread over sub-folders of 1,000 files."""
    if n_items <= 5000:
        return f"{kind}/{item_id}.png"
    number = int(item_id.rsplit("-", 1)[1])
    return f"{kind}/{number // 1000:04d}/{item_id}.png"


def write_demo_corpus(root: Path, n_items: int = 320, seed: int = 0, image_px: int = 96,
                      progress: "callable | None" = None,  # type: ignore[valid-type]
                      captions_per_item: int = 3) -> DemoCorpus:
    """Write images, sketches, ``manifest.parquet`` and ``tag_categories.csv`` under ``root/corpus``.

    ``captions_per_item``: the first 1-3 of :func:`captions_for`'s captions (the demo keeps two: its
    text tower's forward passes were a third of its embedding time).

    Idempotent: existing image files are kept (same seed, same pixels), so rerunning the demo is fast.
    """
    corpus_dir = Path(root) / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    items = sample_items(n_items, seed)
    rows: dict[str, list] = {k: [] for k in ("id", "image", "sketch", "captions", "tags", "label",
                                             "attr_size", "attr_rotation", "attr_brightness", "split", "class_split")}
    for idx, item in enumerate(items):
        image_rel = item_relpath("images", item.id, n_items)
        sketch_rel = item_relpath("sketches", item.id, n_items)
        for rel, render in ((image_rel, render_image), (sketch_rel, render_sketch)):
            path = corpus_dir / rel
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                render(item, image_px, seed).save(path, format="PNG")
        rows["id"].append(item.id)
        rows["image"].append(image_rel)
        rows["sketch"].append(sketch_rel)
        rows["captions"].append(captions_for(item)[:captions_per_item])
        rows["tags"].append(tags_for(item, seed))
        rows["label"].append(item.shape)
        rows["attr_size"].append(item.size)
        rows["attr_rotation"].append(item.rotation)
        rows["attr_brightness"].append(item.brightness)
        rows["split"].append(item.split)
        rows["class_split"].append(item.class_split)
        if progress is not None and (idx + 1) % 10000 == 0:
            progress(idx + 1)
    table = pa.table({
        **{k: pa.array(v, pa.string()) for k, v in rows.items() if k in ("id", "image", "sketch", "label", "split", "class_split")},
        "captions": pa.array(rows["captions"], pa.list_(pa.string())),
        "tags": pa.array(rows["tags"], pa.list_(pa.string())),
        **{k: pa.array(v, pa.float64()) for k, v in rows.items() if k.startswith("attr_")},
    })
    manifest = corpus_dir / "manifest.parquet"
    pq.write_table(table, manifest)
    categories = corpus_dir / "tag_categories.csv"
    with open(categories, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag", "category"])
        writer.writerows(tag_category_rows())
    return DemoCorpus(root=corpus_dir, manifest=manifest, tag_categories=categories, items=n_items)
