"""Break a demo corpus on purpose: every kind of bad input a real catalogue has, with the reason expected.

Used by the tests and the load benchmark to prove that bad items are quarantined with their reason, that
the job goes on, and that counts add up. Kinds (a few are valid-but-odd images that must embed fine):
truncated JPEG/PNG, zero-byte file, text with an image extension, JPEG bytes under a .png name (valid),
an image over the pixel limit, CMYK / 16-bit / alpha images (valid), a missing file, a path escaping the
manifest root, a duplicate id, an empty caption, a very long caption (valid), NaN attributes (valid).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# kind -> substring of the quarantine reason expected for it, or None when the item must embed fine.
KINDS: dict[str, str | None] = {
    "truncated_jpeg": "decode",
    "truncated_png": "decode",
    "zero_byte": "zero-byte",
    "text_as_png": "not a decodable image",
    "jpeg_named_png": None,
    "huge": "over the limit",
    "cmyk": None,
    "sixteen_bit": None,
    "alpha": None,
    "missing_file": "missing file",
    "escaping_path": "outside the allowed roots",
    "duplicate_id": "duplicate id",
    "empty_caption": "empty caption",
    "long_caption": None,
    "nan_attribute": None,
}
# A PNG of 12000 x 12000 pixels compresses to ~0.5 MB; with max_image_pixels below that it is quarantined.
HUGE_SIDE = 12000


@dataclass
class BrokenCorpus:
    manifest: Path
    expected: dict[str, str | None] = field(default_factory=dict)   # item id -> expected reason substring
    kinds: dict[str, str] = field(default_factory=dict)             # item id -> kind


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def break_corpus(corpus_dir: Path, fraction: float = 0.05, seed: int = 0, kinds: list[str] | None = None,
                 huge_side: int = HUGE_SIDE) -> BrokenCorpus:
    """Rewrite ``corpus_dir/manifest.parquet`` so that ``fraction`` of its items are broken, kinds in turn.

    The original is kept as ``manifest.clean.parquet`` (the first time), so a run without the broken items
    can be compared item for item. Returns which ids are broken, how, and the reason expected.
    """
    clean_path = corpus_dir / "manifest.clean.parquet"
    manifest_path = corpus_dir / "manifest.parquet"
    if not clean_path.exists():
        clean_path.write_bytes(manifest_path.read_bytes())
    table = pq.read_table(clean_path)
    rng = np.random.default_rng(seed)
    n = table.num_rows
    n_broken = max(len(kinds or KINDS), int(round(n * fraction)))
    chosen = sorted(rng.choice(n, size=min(n, n_broken), replace=False).tolist())
    kind_list = kinds or list(KINDS)
    rows = table.to_pylist()
    extra_rows = []
    result = BrokenCorpus(manifest_path)
    broken_dir = corpus_dir / "broken"
    broken_dir.mkdir(exist_ok=True)
    base_rgb = Image.open(corpus_dir / rows[0]["image"]).convert("RGB")
    for k, idx in enumerate(chosen):
        kind = kind_list[k % len(kind_list)]
        row = rows[idx]
        rid = row["id"]
        img_path = broken_dir / f"{rid}.png"
        rel = f"broken/{rid}.png"
        if kind == "truncated_jpeg":
            data = _encode(base_rgb, "JPEG", quality=95)
            rel = f"broken/{rid}.jpg"
            (corpus_dir / rel).write_bytes(data[: len(data) // 2])
        elif kind == "truncated_png":
            data = _encode(Image.open(corpus_dir / row["image"]), "PNG")
            img_path.write_bytes(data[: len(data) * 2 // 3])
        elif kind == "zero_byte":
            img_path.write_bytes(b"")
        elif kind == "text_as_png":
            img_path.write_text("this is not an image\n")
        elif kind == "jpeg_named_png":
            img_path.write_bytes(_encode(base_rgb, "JPEG"))
        elif kind == "huge":
            img_path.write_bytes(_encode(Image.new("L", (huge_side, huge_side), 128), "PNG"))
        elif kind == "cmyk":
            rel = f"broken/{rid}.jpg"
            (corpus_dir / rel).write_bytes(_encode(base_rgb.convert("CMYK"), "JPEG"))
        elif kind == "sixteen_bit":
            arr = (np.asarray(base_rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
            img_path.write_bytes(_encode(Image.fromarray(arr), "PNG"))
        elif kind == "alpha":
            rgba = base_rgb.convert("RGBA")
            rgba.putalpha(128)
            img_path.write_bytes(_encode(rgba, "PNG"))
        elif kind == "missing_file":
            rel = f"broken/{rid}-does-not-exist.png"
        elif kind == "escaping_path":
            rel = "../../../etc/hostname"
        elif kind == "duplicate_id":
            dup = dict(row)
            dup["captions"] = ["a duplicate of another item"]
            extra_rows.append(dup)
            rel = row["image"]
        elif kind == "empty_caption":
            row["captions"] = list(row["captions"]) + [""]
            rel = row["image"]
        elif kind == "long_caption":
            row["captions"] = list(row["captions"]) + ["a very long caption " * 600]
            rel = row["image"]
        elif kind == "nan_attribute":
            for key in row:
                if key.startswith("attr_"):
                    row[key] = float("nan")
            rel = row["image"]
        row["image"] = rel
        result.expected[rid] = KINDS[kind]
        result.kinds[rid] = kind
    out = pa.Table.from_pylist(rows + extra_rows, schema=table.schema)
    pq.write_table(out, manifest_path)
    return result
