"""Read one media file and decode it to an RGB image, or say precisely why not.

Every failure becomes a :class:`BadItem` with a stage and a human reason, which the pipeline quarantines;
nothing here may raise anything else for a bad file, because one exception inside a Ray Data UDF fails
the whole job.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from embedeval.io.storage import Storage, is_s3_uri, is_transient_error, locate, retry_transient

# Serialises the swaps of PIL's process-wide settings in _pil_limits between threads of one process.
_PIL_SETTINGS_LOCK = threading.RLock()


@dataclass
class BadItem(Exception):
    stage: str     # read | decode
    reason: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.reason}"


class _TransientReadError(Exception):
    """An s3:// read failed in a way a later attempt may not (see ``is_transient_error``)."""


@dataclass(frozen=True)
class MediaLimits:
    max_pixels: int = 40_000_000
    max_bytes: int = 64 * 1024 * 1024


class MediaReader:
    """Reads bytes from local paths or s3:// URIs, reusing one filesystem client per bucket.

    An s3:// read that fails with a transient error (throttling, 5xx, dropped connection) after the S3
    client's own retries (``s3.max_attempts`` of the storage handle) is tried again, ``read_attempts`` times in all with
    a growing pause, before the item is given up as unreadable: one bad minute of the store must not
    quarantine good images. Missing files and other lasting errors are not retried.
    """

    def __init__(self, storage: Storage | None = None, limits: MediaLimits = MediaLimits(),
                 read_attempts: int = 3, retry_pause_s: float = 0.5) -> None:
        self.storage = storage   # whose S3 settings reach s3:// URIs (None: the AWS environment's)
        self.limits = limits
        self.read_attempts = max(1, read_attempts)
        self.retry_pause_s = retry_pause_s
        self._fs_cache: dict[str, object] = {}

    def _fs(self, uri: str):  # noqa: ANN202
        key = uri.split("/", 3)[2] if is_s3_uri(uri) else "local"
        if key not in self._fs_cache:
            self._fs_cache[key] = locate(uri, self.storage)[0]
        fs = self._fs_cache[key]
        path = uri[len("s3://"):] if is_s3_uri(uri) else uri
        return fs, path

    def read_bytes(self, uri: str) -> bytes:
        try:
            return retry_transient(lambda: self._read_bytes_once(uri), self.read_attempts, self.retry_pause_s,
                                   lambda exc: isinstance(exc, _TransientReadError))
        except _TransientReadError as exc:
            raise BadItem("read", f"cannot read {uri} (after {self.read_attempts} attempts): "
                                  f"{str(exc)[:300]}") from None

    def _read_bytes_once(self, uri: str) -> bytes:
        fs, path = self._fs(uri)
        try:
            info = fs.get_file_info(path)
            if info.type.name == "NotFound":
                raise BadItem("read", f"missing file {uri}")
            if info.type.name == "Directory":
                raise BadItem("read", f"{uri} is a folder, not a file")
            if info.size is not None and info.size > self.limits.max_bytes:
                raise BadItem("read", f"file is {info.size} bytes, over the limit of {self.limits.max_bytes}")
            with fs.open_input_stream(path) as f:
                data = f.read()
        except BadItem:
            raise
        except FileNotFoundError:
            raise BadItem("read", f"missing file {uri}") from None
        except OSError as exc:
            if is_s3_uri(uri) and is_transient_error(exc):
                raise _TransientReadError(str(exc)) from None
            raise BadItem("read", f"cannot read {uri}: {str(exc)[:300]}") from None
        if not data:
            raise BadItem("read", "empty (zero-byte) file")
        return data

    def read_image(self, uri: str) -> Image.Image:
        return decode_image(self.read_bytes(uri), self.limits.max_pixels)


@contextmanager
def _pil_limits(max_pixels: int | None) -> Iterator[None]:
    """Within the block, PIL's decompression-bomb guard uses ``max_pixels`` (None: off) and truncated files fail.

    PIL reads both settings from module globals while it opens and decodes, and offers no per-call
    option, so they are set for the block only (one thread at a time) and the previous values restored
    after it: nothing else in the process (report thumbnails, say) is left without PIL's own guard.
    Inside the block a ``DecompressionBombWarning`` (over ``max_pixels``) is raised as an error, and PIL
    raises ``DecompressionBombError`` itself past twice the limit.
    """
    with _PIL_SETTINGS_LOCK, warnings.catch_warnings():
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode to an RGB PIL image; raise BadItem for undecodable, truncated or oversized images.

    The size in the header is checked against ``max_pixels`` before any pixel is decoded (so the reason
    names the size), and while decoding PIL's own guard uses the same limit (for the frames and
    sub-images it checks as it goes). PIL's process-wide settings are as they were when this returns.
    """
    try:
        with _pil_limits(None):  # the header only; the check below says how big the image is
            img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise BadItem("decode", f"image is {width}x{height} = {width * height} pixels, over the limit of "
                                    f"{max_pixels} (embed.max_image_pixels)")
        with _pil_limits(max_pixels):
            img.load()
    except BadItem:
        raise
    except UnidentifiedImageError:
        raise BadItem("decode", "not a decodable image (unknown format or wrong extension with bad content)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadItem("decode", f"image is over the limit of {max_pixels} pixels (embed.max_image_pixels): "
                                f"{str(exc)[:200]}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or "image file is truncated" in msg:
            raise BadItem("decode", f"truncated image: {msg[:200]}") from None
        raise BadItem("decode", f"cannot decode image: {msg[:200]}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: CMYK, palette, alpha (composited on white), 16-bit and float greyscale."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        img = Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def device_decodable_jpeg(data: bytes, max_pixels: int) -> bool:
    """Whether these bytes may skip Pillow and be decoded by the embed actor on its device.

    True only for a complete JPEG (starts with SOI, ends with EOI, so a truncated file never takes this
    path) in RGB or greyscale whose header size is within ``max_pixels``. Everything else (other
    formats, CMYK, over-limit or unreadable headers) returns False and goes through :func:`decode_image`
    on the CPU worker, which quarantines it with its reason: the same rules whichever path an image takes.
    Never raises.
    """
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
        return False
    try:
        with _pil_limits(None):
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            return img.format == "JPEG" and img.mode in ("RGB", "L") and width * height <= max_pixels
    except Exception:  # noqa: BLE001 - any doubt: the CPU path decides, with its reasons
        return False
