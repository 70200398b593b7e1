"""Robust image decoding: one function that turns a file into an RGB image or a reason why not.

Handles EXIF orientation, grayscale, palette and alpha images (composited onto white), CMYK,
16-bit PNGs, animated images (first frame), WebP, large photos (JPEG DCT-domain downscaling with
``Image.draft`` when the caller only needs a small image), and rejects empty, truncated,
non-image and decompression-bomb files with an :class:`~cnnlab.errors.ImageDecodeError`.

Only regular files are read (a FIFO would block for ever, ``/dev/zero`` never ends), and never more
than ``max_bytes`` of them: :func:`read_regular_file` is the one way cnnlab reads an image file. It also reads
the records of datasets stored as Hugging Face datasets, Parquet or WebDataset shards (``shard.tar#KEY``,
:mod:`cnnlab.imagedata.records`), so that their bytes meet the same guards as a file's.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnlab.errors import ImageDecodeError
from cnnlab.imagedata.filebytes import read_file_bytes
from cnnlab.imagedata.limits import DEFAULT_MAX_PIXELS
from cnnlab.imagedata.records import RECORD_SEP, is_record, read_record

#: The reasons a file can be skipped for (:func:`decode_image` and the folder walk), for counting and reports.
REASONS: Final[tuple[str, ...]] = (
    "missing",
    "empty",
    "not-an-image",
    "truncated",
    "decompression-bomb",
    "too-small",
    "unreadable",
    "not-a-file",  # a FIFO, device or socket: only regular files are images
    "too-large",  # more bytes than the read limit
    "extreme-aspect-ratio",  # one side many times the other (where the caller sets a limit)
    "symlink-loop",  # a link back into a folder being walked: not followed
    "duplicate",  # the same real file again (a link, or a repeated manifest row): counted once
    "bad-label",  # a dataset record whose label names no class (an index past the class names, an unknown name)
    "outside-dataset",  # a dataset row that names a file outside the dataset's folder instead of holding its bytes
)

#: Largest image file read by default, in bytes (the biggest camera RAW-sized TIFFs stay below it).
DEFAULT_MAX_BYTES: Final[int] = 256 * 1024 * 1024

_WHITE = (255, 255, 255)

_ORIENTATION_TAG: Final[int] = 0x0112
#: EXIF orientation -> the transposition that makes the image upright (1 and unknown values: none).
_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


#: Held while the warnings filters are changed: ``warnings.catch_warnings`` saves and restores the whole
#: process's filters, so two decoding threads inside it at once could leave one's "ignore" behind for good.
_WARNINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def warnings_ignored(category: type[Warning] = Warning) -> Iterator[None]:
    """Warnings of ``category`` ignored inside the block, safely from several threads at once (decoding and
    collecting run in threads); keep the block short (a header read): the threads take turns in it."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", category)
        yield


def decode_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = 1,
    draft_to: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_aspect_ratio: float | None = None,
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
        max_bytes: files larger than this are refused (``too-large``) without being read whole.
        max_aspect_ratio: if given, images whose longer side is more than this many times the
            shorter one are refused (``extreme-aspect-ratio``) before their pixels are decoded.

    Raises:
        ImageDecodeError: with ``reason`` one of :data:`REASONS`.
    """
    data = source if isinstance(source, bytes) else read_regular_file(source, max_bytes)
    if not data:
        raise ImageDecodeError("empty", "the file has no bytes")
    try:
        with warnings_ignored(Image.DecompressionBombWarning):  # Pillow warns from 89M pixels: our limit decides
            img: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("decompression-bomb", _bomb_message(exc, max_pixels)) from None
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
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * max(1, min(width, height)):
        raise ImageDecodeError(
            "extreme-aspect-ratio",
            f"{width}x{height}: one side is more than {max_aspect_ratio:g} times the other",
        )
    try:
        if draft_to is not None and img.format == "JPEG":
            img.draft("RGB", (draft_to, draft_to))
        img.load()  # full decode: truncation and corruption show up here
        img = _to_rgb(_upright(img))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("decompression-bomb", str(exc)) from None
    except OSError as exc:
        raise ImageDecodeError(_reason_of(exc), str(exc)) from None
    except (ValueError, SyntaxError, EOFError, IndexError) as exc:
        raise ImageDecodeError("unreadable", f"{type(exc).__name__}: {exc}") from None
    if min(img.size) < min_size:
        raise ImageDecodeError("too-small", f"{img.width}x{img.height} is below {min_size}px")
    return img


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says, the EXIF block dropped (the pixels are now upright).

    Not ``ImageOps.exif_transpose``: it writes the EXIF block back, and cameras and editors write tags
    whose type or size disagrees with their data, which Pillow then fails to serialise with whatever
    error the tag's type leads to (``struct.error``, ``TypeError``...). The pixels are fine, so an
    EXIF block that cannot be read is ignored: the image is taken as it is stored.
    """
    try:
        orientation = int(img.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # noqa: BLE001 - any broken EXIF block: the photo itself decodes without it
        orientation = 1
    method = _TRANSPOSE.get(orientation)
    upright = img.transpose(method) if method is not None else img
    upright.info.pop("exif", None)
    return upright


def _bomb_message(exc: BaseException, max_pixels: int) -> str:
    """Pillow's own refusal (it checks before cnnlab can) told with cnnlab's limit, which is the one the user set."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(exc))
    if found is None:
        return str(exc)
    pixels = int(found.group(1))
    limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or pixels))
    return f"{pixels:,} pixels exceeds the limit of {limit:,}"


def _reason_of(exc: BaseException) -> str:
    return "truncated" if "truncat" in str(exc).lower() else "unreadable"


def read_regular_file(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes`` bytes
    (:func:`cnnlab.imagedata.filebytes.read_file_bytes`).

    A name ``CONTAINER#KEY`` that is no file but a record of a dataset (:func:`cnnlab.imagedata.records.is_record`)
    is read from its container, with the same limit.

    Raises:
        ImageDecodeError: ``missing``, ``not-a-file``, ``too-large``, ``symlink-loop`` or ``unreadable``.
    """
    if RECORD_SEP in str(path) and is_record(path):
        return read_record(path, max_bytes)
    return read_file_bytes(path, max_bytes)


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
        # the range of the finite pixels: one inf or nan pixel (a float TIFF) must not turn the rest black
        finite = array[np.isfinite(array)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 255.0)
        if high <= 255.0 and low >= 0.0:
            scaled = array
        else:
            scaled = (array - low) / max(high - low, 1e-12) * 255.0
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return gray.convert("RGB")
