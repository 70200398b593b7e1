"""Small JPEG copies of image files as ``data:`` URIs, so a report page needs nothing but itself.

Shared by every report that shows pictures (bench's galleries, review's cards): one decoder
(:func:`cnnlab.imagedata.decode.decode_image`, EXIF-upright, bounded like every other read), one size rule.
"""

from __future__ import annotations

import base64
import io
import os
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

    def file(self, path: str) -> Path:
        """Where the image a report names ``path`` is: an absolute path as it is, else the file or record of that
        name under ``root``; a record name that is none under ``root`` but names a record as it is (its container
        named from the working folder, as a saved dataset's ``saved#7`` whose container is the root itself, or a
        hub dataset's ``hf:NAME#7``) is that record."""
        from cnnlab.imagedata.records import is_record

        given = Path(path)
        if given.is_absolute():
            return given
        inside = self.root / given
        if not os.path.lexists(inside) and not is_record(inside) and is_record(path):
            return given
        return inside

    def __call__(self, path: str, size: int = THUMBNAIL_SIZE) -> str:
        key = (path, size)
        if key not in self._done:
            self._done[key] = thumbnail_data_uri(self.file(path), size)
        return self._done[key]
