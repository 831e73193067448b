"""Decoding: every broken-image kind becomes a BadItem with a clear reason; odd-but-valid modes decode to RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from embedeval.pipeline.media import BadItem, MediaLimits, MediaReader, decode_image


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_bad(fmt: str) -> None:
    data = _encode(RGB, fmt)
    with pytest.raises(BadItem) as info:
        decode_image(data[: len(data) // 2], 10**8)
    assert info.value.stage == "decode"
    assert "truncated" in info.value.reason or "cannot decode" in info.value.reason


def test_garbage_and_wrong_extension_are_bad(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"this is a text file, not a png")
    with pytest.raises(BadItem, match="not a decodable image"):
        MediaReader().read_image(str(tmp_path / "x.png"))


def test_jpeg_named_png_decodes(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(_encode(RGB, "JPEG"))
    assert MediaReader().read_image(str(tmp_path / "x.png")).size == (50, 40)


def test_zero_byte_missing_and_folder(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    reader = MediaReader()
    with pytest.raises(BadItem, match="zero-byte"):
        reader.read_image(str(tmp_path / "empty.png"))
    with pytest.raises(BadItem, match="missing file"):
        reader.read_image(str(tmp_path / "none.png"))
    with pytest.raises(BadItem, match="folder"):
        reader.read_image(str(tmp_path))


def test_pixel_limit_is_checked_before_decoding() -> None:
    # A 20000 x 20000 PNG of one colour compresses to a few hundred KB: a decompression bomb in miniature.
    big = Image.new("L", (20000, 20000), 0)
    data = _encode(big, "PNG")
    with pytest.raises(BadItem, match="over the limit"):
        decode_image(data, max_pixels=10_000_000)


def test_byte_limit(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_encode(RGB, "PNG"))
    with pytest.raises(BadItem, match="bytes, over the limit"):
        MediaReader(limits=MediaLimits(max_bytes=100)).read_image(str(tmp_path / "a.png"))


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "LA", "P", "L", "I;16"])
def test_unusual_modes_decode_to_rgb(mode: str) -> None:
    if mode == "I;16":
        img = Image.fromarray(np.linspace(0, 65535, 40 * 50).reshape(40, 50).astype(np.uint16))
    else:
        img = RGB.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    out = decode_image(_encode(img, fmt), 10**8)
    assert out.mode == "RGB" and out.size == (50, 40)
    if mode == "I;16":
        arr = np.asarray(out)
        assert arr.min() == 0 and arr.max() == 255  # scaled to 8 bits, not clipped


def test_alpha_is_composited_on_white() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = decode_image(_encode(img, "PNG"), 10**8)
    assert np.asarray(out)[0, 0].tolist() == [255, 255, 255]


def test_reads_from_s3(s3_options, s3_server) -> None:  # noqa: ANN001
    from embedeval.io.storage import Storage

    Storage("s3://test/media", s3_options).write_bytes("a.png", _encode(RGB, "PNG"))
    reader = MediaReader(Storage("s3://test/media", s3_options))
    assert reader.read_image("s3://test/media/a.png").size == (50, 40)
    with pytest.raises(BadItem, match="missing file"):
        reader.read_image("s3://test/media/none.png")


def test_pillow_settings_are_left_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow's guard stays on for the rest of the process (report thumbnails): decoding sets the read's
    # own limit for the read only, even when it is above Pillow's or the read fails.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_image(_encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=1_000_000).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(BadItem, match="over the limit"):
        decode_image(_encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)
    assert Image.MAX_IMAGE_PIXELS == 1000 and ImageFile.LOAD_TRUNCATED_IMAGES is False
