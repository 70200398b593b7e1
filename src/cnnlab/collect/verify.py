"""Verification of downloaded bytes: full decode, hashes, and how the file is stored.

Decoding is :func:`cnnlab.imagedata.decode.decode_image` (the one decoder of the project): it rejects empty,
non-image, truncated and decompression-bomb files and images below the minimum size. The bytes are
stored unchanged (so ``sha256`` names the stored file); the EXIF orientation is *recorded*, and the
width, height and perceptual hash are those of the upright image.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Final

from PIL import Image

from cnnlab.collect.config import DEFAULT_MAX_ASPECT_RATIO
from cnnlab.imagedata.decode import DEFAULT_MAX_PIXELS, decode_image, warnings_ignored
from cnnlab.imagedata.hashes import perceptual_hash

#: Stored formats and their file extensions. Other formats Pillow can decode are re-encoded as PNG.
FORMAT_EXTENSIONS: Final[dict[str, str]] = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tif",
}

_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class VerifiedImage:
    """A decoded-and-checked image, ready to store."""

    data: bytes
    """The bytes to store (the downloaded bytes, or a PNG re-encoding for unusual formats)."""
    sha256: str
    phash: str
    """64-bit DCT perceptual hash (``imagehash.phash``) as 16 hex digits."""
    width: int
    height: int
    format: str
    ext: str
    orientation: int
    """EXIF orientation of the stored file (1 = upright); readers that apply EXIF see it upright."""
    transcoded: bool = False

    @property
    def phash_int(self) -> int:
        return int(self.phash, 16)


def verify_image(
    data: bytes,
    *,
    min_size: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> VerifiedImage:
    """Fully decode ``data`` and describe it.

    Images whose longer side is more than ``max_aspect_ratio`` times the shorter (a 20000x1 strip)
    are refused as ``extreme-aspect-ratio``: no model input can be cut from them.

    Raises:
        ImageDecodeError: ``reason`` in :data:`cnnlab.imagedata.decode.REASONS`.
    """
    img = decode_image(data, max_pixels=max_pixels, min_size=min_size, max_aspect_ratio=max_aspect_ratio)
    fmt, orientation = _header(data)
    ext = FORMAT_EXTENSIONS.get(fmt)
    transcoded = ext is None
    if transcoded:
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=False)
        data, fmt, ext, orientation = buf.getvalue(), "PNG", "png", 1
    return VerifiedImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=perceptual_hash(img),
        width=img.width,
        height=img.height,
        format=fmt,
        ext=ext or "png",
        orientation=orientation,
        transcoded=transcoded,
    )


def _header(data: bytes) -> tuple[str, int]:
    """Format name and EXIF orientation, read without decoding pixels."""
    with warnings_ignored():  # collect verifies in threads: the process's filters are left as they were
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or ""
                try:
                    orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
                except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
                    orientation = 1
        except Exception:  # noqa: BLE001 - decode_image already accepted the bytes; be lenient
            return "", 1
    return fmt, orientation if 1 <= orientation <= 8 else 1
