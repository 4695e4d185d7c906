"""Validation and conversion of input image files (bad input never stops an ingest).

`prepare_image(bytes)` returns what goes into a shard or raises `BadInput(reason)`.

Skip reasons (counted in the manifest's ``skipped``): ``empty`` (0 bytes), ``not_image``
(no known image format), ``truncated``, ``corrupt`` (decoder error), ``too_small`` (short
side below ``min_size``), ``too_large`` (decompression-bomb guard), plus the reasons the
ingest engine adds: ``missing``, ``unreadable``, ``duplicate``, ``malformed_row``,
``unpaired``.

Conversions (kept, counted in ``converted``): ``grayscale``, ``alpha`` (RGBA/LA, composited
on white), ``palette``, ``16bit`` (scaled to 8 bit), ``cmyk``, ``format`` (RGB in a format
other than 8-bit JPEG/PNG). Converted images are re-encoded as PNG (lossless); 8-bit RGB
JPEG/PNG files are stored byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

SKIP_REASONS = (
    "empty",
    "not_image",
    "truncated",
    "corrupt",
    "too_small",
    "too_large",
    "missing",
    "unreadable",
    "duplicate",
    "malformed_row",
    "unpaired",
)


class BadInput(Exception):
    """An input that is skipped; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PreparedImage:
    data: bytes  # what is stored in the shard
    width: int
    height: int
    sha256: str  # of the ORIGINAL bytes (duplicate detection, provenance)
    converted: str | None  # conversion reason, None if stored as is


def _png_is_rgb8(data: bytes) -> bool:
    # IHDR: bytes 24 = bit depth, 25 = colour type (2 = truecolour RGB)
    return len(data) > 26 and data[24] == 8 and data[25] == 2


def _to_rgb(img: Image.Image) -> tuple[Image.Image, str]:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        hi = 65535 if arr.max(initial=0) > 255 else 255
        arr8 = np.clip(arr * 255 // max(hi, 1), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB"), "16bit"
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr8 = ((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB"), "16bit"
    if mode == "CMYK":
        return img.convert("RGB"), "cmyk"
    if mode == "P":
        if "transparency" in img.info:
            img = img.convert("RGBA")
        else:
            return img.convert("RGB"), "palette"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB"), "alpha"
    if mode in ("L", "1"):
        return img.convert("RGB"), "grayscale"
    if mode == "RGB":
        return img, "format"
    return img.convert("RGB"), "format"


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Decode `data` fully; every failure becomes `BadInput` with its skip reason."""
    if not data:
        raise BadInput("empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadInput("too_large", f"{w}x{h}")
            img.load()
    except BadInput:
        raise
    except UnidentifiedImageError as e:
        raise BadInput("not_image", str(e)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadInput("too_large", str(e)) from None
    except OSError as e:
        msg = str(e)
        reason = "truncated" if "truncated" in msg.lower() else "corrupt"
        raise BadInput(reason, msg) from None
    except Exception as e:  # decoder bugs on hostile input: never crash the ingest
        raise BadInput("corrupt", f"{type(e).__name__}: {e}") from None
    return img


def prepare_image(
    data: bytes, *, min_size: int = 16, max_pixels: int = 200_000_000
) -> PreparedImage:
    """Validate `data` (an encoded image file); convert to 8-bit RGB where lossless enough."""
    img = _open(data, max_pixels)
    sha = hashlib.sha256(data).hexdigest()
    fmt = img.format
    w, h = img.size
    if min(w, h) < min_size:
        raise BadInput("too_small", f"{w}x{h} < {min_size}")
    if fmt == "JPEG" and img.mode == "RGB":
        return PreparedImage(data, w, h, sha, None)
    if fmt == "PNG" and img.mode == "RGB" and _png_is_rgb8(data):
        return PreparedImage(data, w, h, sha, None)
    rgb, why = _to_rgb(img)
    if fmt == "PNG" and img.mode == "RGB":
        why = "16bit"  # 48-bit PNGs open as RGB in PIL; re-encode to 8 bit
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=1)
    return PreparedImage(buf.getvalue(), w, h, sha, why)


def decode_photo(data: bytes, *, max_pixels: int = 200_000_000) -> tuple[np.ndarray, str | None]:
    """An image file as a user took it → (uint8 [H, W, 3] as displayed, conversion reason).

    For translating photos at their own size (`mdir models translate`): the EXIF
    orientation is applied (a phone's portrait shot stored landscape comes back portrait),
    then the same conversions as ingest (16-bit scaled to 8, gray → RGB, alpha composited
    on white, palette, CMYK). Raises `BadInput` (reason as for ingest) on a bad file."""
    from PIL import ImageOps

    img = _open(data, max_pixels)
    try:
        shown = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block: keep the stored orientation
        shown = img
    # PIL opens 48-bit PNGs as 8-bit "RGB" already (as ingest relies on)
    rgb, why = (shown, None) if shown.mode == "RGB" else _to_rgb(shown)
    return np.asarray(rgb, dtype=np.uint8), why


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded bytes from a shard → uint8 [H, W, 3] (shards only hold 8-bit RGB JPEG/PNG).
    PIL (libjpeg-turbo): no torch import for metadata / evaluation readers."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def encode_jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
