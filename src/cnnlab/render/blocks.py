"""The content of a report as a list of blocks, drawn both as Markdown and as HTML so the two cannot drift.

A block is one of :class:`Heading`, :class:`Paragraph`, :class:`Table`, :class:`Bullets`, :class:`Figure`
or :class:`Gallery`; each has a ``kind`` that the HTML template dispatches on. What a report says is built
by its job (:func:`cnnlab.bench.report.report_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class Heading:
    """A section title; level 1 is the report's title."""

    text: str
    level: int = 2
    kind: ClassVar[str] = "heading"


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str
    kind: ClassVar[str] = "paragraph"


@dataclass(frozen=True)
class Table:
    """A table of plain-text cells."""

    header: list[str]
    rows: list[list[str]]
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Bullets:
    """A bulleted list of plain-text items."""

    items: list[str]
    kind: ClassVar[str] = "bullets"


@dataclass(frozen=True)
class Figure:
    """A PNG plot written next to the report: Markdown links to it, HTML embeds it."""

    #: Its key among the output files (also the file's stem).
    key: str
    title: str
    path: Path
    kind: ClassVar[str] = "figure"


@dataclass(frozen=True)
class GalleryItem:
    """One picture of a gallery: the image file and a few lines about it."""

    path: Path
    caption: list[str]


@dataclass(frozen=True)
class Gallery:
    """Thumbnails of image files with captions: HTML embeds small copies, Markdown lists the files."""

    items: list[GalleryItem]
    kind: ClassVar[str] = "gallery"


Block = Heading | Paragraph | Table | Bullets | Figure | Gallery

#: The heading of the paired tests' section (present with or without tests).
