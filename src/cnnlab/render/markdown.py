"""Rendering report blocks as Markdown (GitHub-flavoured tables; figures as links to the PNG files).

Every text is the data's as much as the report's (class folders, file and model names): ``&``, ``<`` and ``>``
are written as HTML entities, so a name like ``<script>`` reads as itself and is never markup in a Markdown
viewer; in a table cell ``|`` is escaped too, so a name cannot split a cell.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from cnnlab.render.blocks import Block, Bullets, Figure, Gallery, Heading, Paragraph, Table


def _text(text: str) -> str:
    """``text`` with the characters HTML gives a meaning written as entities (quotes are harmless outside tags)."""
    return html.escape(str(text), quote=False)


def _one_line(text: str) -> str:
    return _text(text).replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return _one_line(text).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _block(block: Block) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + _one_line(block.text)
    if isinstance(block, Paragraph):
        return _text(block.text)
    if isinstance(block, Table):
        return _table(block.header, block.rows)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_one_line(item)}" for item in block.items)
    if isinstance(block, Figure):
        title = _one_line(block.title).replace("[", "\\[").replace("]", "\\]")
        return f"![{title}]({block.path.name})"
    if isinstance(block, Gallery):
        return _table(["file", *[f"note {i}" for i in range(1, 4)]],
                      [[str(item.path), *item.caption[:3]] for item in block.items])
    raise TypeError(f"no Markdown rendering for {block!r}")


def render_markdown(blocks: Iterable[Block]) -> str:
    """The blocks as one Markdown document; figures link to their files, which lie next to it."""
    return "\n\n".join(_block(block) for block in blocks) + "\n"
