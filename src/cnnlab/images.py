"""Robust image decoding: one function that turns a file into an RGB image or a reason why not.

Handles EXIF orientation, grayscale, palette and alpha images (composited onto white), CMYK,
16-bit PNGs, animated images (first frame), WebP, large photos (JPEG DCT-domain downscaling with
``Image.draft`` when the caller only needs a small image), and rejects empty, truncated,
non-image and decompression-bomb files with an :class:`~cnnlab.errors.ImageDecodeError`.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.errors import ImageDecodeError
from cnnlab.preprocess import DEFAULT_MAX_PIXELS

#: The reasons :func:`decode_image` can give, for counting and reports.
REASONS: Final[tuple[str, ...]] = (
    "missing",
    "empty",
    "not-an-image",
    "truncated",
    "decompression-bomb",
    "too-small",
    "unreadable",
)

_WHITE = (255, 255, 255)


def decode_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = 1,
    draft_to: int | None = None,
) -> Image.Image:
    """Decode ``source`` fully into an upright 8-bit RGB image.

    Args:
        source: a file path or the file's bytes.
        max_pixels: images with more pixels than this are refused as decompression bombs
            before their pixels are decoded.
        min_size: images whose shorter side is below this are refused as ``too-small``.
        draft_to: if given, a JPEG may be decoded at a reduced scale (1/2, 1/4, 1/8) as long as
            both sides stay at least this many pixels. Use it when the image will be resized so
            that its shorter side is ``draft_to``; it is several times faster for camera photos.

    Raises:
        ImageDecodeError: with ``reason`` one of :data:`REASONS`.
    """
    data = _read_bytes(source)
    if not data:
        raise ImageDecodeError("empty", "the file has no bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError("decompression-bomb", str(exc)) from None
        except UnidentifiedImageError:
            raise ImageDecodeError("not-an-image", "no image format recognises these bytes") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageDecodeError(_reason_of(exc), str(exc)) from None
        width, height = img.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                "decompression-bomb",
                f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}",
            )
        try:
            if draft_to is not None and img.format == "JPEG":
                img.draft("RGB", (draft_to, draft_to))
            img.load()  # full decode: truncation and corruption show up here
            img = _to_rgb(ImageOps.exif_transpose(img) or img)
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError("decompression-bomb", str(exc)) from None
        except OSError as exc:
            raise ImageDecodeError(_reason_of(exc), str(exc)) from None
        except (ValueError, SyntaxError, EOFError, IndexError) as exc:
            raise ImageDecodeError("unreadable", f"{type(exc).__name__}: {exc}") from None
    if min(img.size) < min_size:
        raise ImageDecodeError("too-small", f"{img.width}x{img.height} is below {min_size}px")
    return img


def _reason_of(exc: BaseException) -> str:
    return "truncated" if "truncat" in str(exc).lower() else "unreadable"


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("missing", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImageDecodeError("unreadable", f"is a directory: {path}") from None
    except OSError as exc:
        raise ImageDecodeError("unreadable", str(exc)) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode in ("L", "1") and "transparency" in img.info:
        return _to_rgb(img.convert("LA"))
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit (or 32-bit) single-channel images to 8 bits instead of clipping them."""
    array = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        scaled = array / 257.0
    else:
        low, high = float(array.min()), float(array.max())
        if high <= 255.0 and low >= 0.0:
            scaled = array
        else:
            scaled = (array - low) / max(high - low, 1e-12) * 255.0
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return gray.convert("RGB")
