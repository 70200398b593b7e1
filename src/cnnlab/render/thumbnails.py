"""Small JPEG copies of image files as ``data:`` URIs, so a report page needs nothing but itself.

Shared by every report that shows pictures (bench's galleries, review's cards): one decoder
(:func:`cnnlab.imagedata.decode.decode_image`, EXIF-upright, bounded like every other read), one size rule.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

#: Longest side of a gallery thumbnail, in pixels (bench's galleries).
THUMBNAIL_SIZE = 200


def thumbnail_data_uri(path: str | Path, size: int = THUMBNAIL_SIZE) -> str:
    """A JPEG copy of the image at ``path``, longest side at most ``size``, as a ``data:`` URI ("" if unreadable)."""
    from cnnlab.errors import ImageDecodeError
    from cnnlab.imagedata.decode import decode_image

    try:
        img = decode_image(Path(path), draft_to=size)
    except ImageDecodeError:
        return ""
    img.thumbnail((size, size))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Thumbnails:
    """Thumbnails of files named relative to ``root`` (or absolute), each file and size decoded once per page."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._done: dict[tuple[str, int], str] = {}

    def __call__(self, path: str, size: int = THUMBNAIL_SIZE) -> str:
        key = (path, size)
        if key not in self._done:
            file = Path(path) if Path(path).is_absolute() else self.root / path
            self._done[key] = thumbnail_data_uri(file, size)
        return self._done[key]
