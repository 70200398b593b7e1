"""An image's width and height read from its header in the web process, before any pixel is decoded.

The web process refuses an image over the pixel limit, and a request whose images add up to more pixels
than its budget, before it takes the model process's time: decoding is what costs, so it is weighed first.
Pillow's own bomb check is bypassed here on purpose (only the header is parsed): it would refuse a huge image
with Pillow's limit and wording instead of the server's; the model process still decodes with predict's guards.
"""

from __future__ import annotations

import io
import struct

from PIL import Image


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` as the image's header states it, or None when no format recognises the bytes."""
    if not data:
        return None
    Image.preinit()
    size = _open_header(data)
    if size is None:
        Image.init()  # the formats preinit does not register
        size = _open_header(data)
    return size


def _open_header(data: bytes) -> tuple[int, int] | None:
    prefix = data[:16]
    for name in list(Image.ID):
        factory, accept = Image.OPEN[name]
        try:
            accepted = accept(prefix) if accept is not None else True
            if isinstance(accepted, str) or not accepted:  # a string: Pillow's warning that it is not this format
                continue
            image = factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, ValueError, OSError, EOFError, struct.error):
            continue
        width, height = image.size
        image.close()
        return int(width), int(height)
    return None
