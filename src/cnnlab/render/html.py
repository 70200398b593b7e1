"""The one Jinja environment of cnnlab's pages, and report blocks rendered as a page (``templates/report.html.j2``).

Every page (bench's report, review's gallery) is a template in ``templates/`` rendered by
:func:`render_template` in :func:`environment`: autoescaped, strict about missing values.

Self-contained: CSS inline, every figure embedded as a ``data:image/png;base64`` URI, no external
URL, so the single file can be mailed, archived or opened offline. Laid out for screens 1280 px
wide: text and figures fit the page; a wide table scrolls inside its own box.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import jinja2

from cnnlab.render.thumbnails import THUMBNAIL_SIZE, thumbnail_data_uri

if TYPE_CHECKING:
    from cnnlab.render.blocks import Block

#: The template of report.html, shipped as package data in ``cnnlab/render/templates/``.
TEMPLATE = "report.html.j2"

__all__ = ["TEMPLATE", "THUMBNAIL_SIZE", "environment", "png_data_uri", "render_html", "render_template",
           "thumbnail_data_uri"]


def png_data_uri(path: Path) -> str:
    """The PNG file at ``path`` as a ``data:`` URI to embed in a page."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _unknown_block(block: object) -> NoReturn:
    raise TypeError(f"no HTML rendering for {block!r}")


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja environment of every cnnlab page: templates from ``templates/``, escaping on, strict."""
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


def render_template(name: str, **context: Any) -> str:
    """The template ``templates/<name>`` rendered with ``context`` in the shared environment."""
    return environment().get_template(name).render(**context)


def render_html(blocks: Iterable[Block]) -> str:
    """The blocks as one self-contained HTML page, titled after its first level-1 heading."""
    items = list(blocks)
    title = next((getattr(b, "text", "") for b in items if b.kind == "heading" and getattr(b, "level", 0) == 1),
                 "cnnlab report")
    return render_template(TEMPLATE, blocks=items, title=title)
