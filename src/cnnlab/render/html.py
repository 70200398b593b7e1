"""Rendering report blocks as one self-contained HTML page (Jinja2, ``templates/report.html.j2``).

Self-contained: CSS inline, every figure embedded as a ``data:image/png;base64`` URI, no external
URL, so the single file can be mailed, archived or opened offline. Laid out for screens 1280 px
wide: text and figures fit the page; a wide table scrolls inside its own box.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import jinja2

from cnnlab.bench.report import Block, Heading

#: The template of report.html, shipped as package data in ``cnnlab/render/templates/``.
TEMPLATE = "report.html.j2"


def png_data_uri(path: Path) -> str:
    """The PNG file at ``path`` as a ``data:`` URI to embed in a page."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


#: Longest side of a gallery thumbnail, in pixels.
THUMBNAIL_SIZE = 200


def thumbnail_data_uri(path: Path) -> str:
    """A small JPEG copy of the image at ``path`` as a ``data:`` URI (an empty string if it cannot be read)."""
    import io

    from cnnlab.errors import ImageDecodeError
    from cnnlab.imagedata.decode import decode_image

    try:
        img = decode_image(path, draft_to=THUMBNAIL_SIZE)
    except ImageDecodeError:
        return ""
    img.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _unknown_block(block: object) -> NoReturn:
    raise TypeError(f"no HTML rendering for {block!r}")


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cnnlab.render", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["png_data_uri"] = png_data_uri
    env.filters["thumbnail_data_uri"] = thumbnail_data_uri
    env.globals["unknown_block"] = _unknown_block
    return env


def render_html(blocks: Iterable[Block]) -> str:
    """The blocks as one self-contained HTML page, titled after its first level-1 heading."""
    items = list(blocks)
    title = next((b.text for b in items if isinstance(b, Heading) and b.level == 1), "cnnlab report")
    return _environment().get_template(TEMPLATE).render(blocks=items, title=title)
