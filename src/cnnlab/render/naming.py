"""Names of things in reports and on disk: unique model names, file-name-safe stems, and the one escaping rule
for names (of classes, files and models, which the user does not always choose) in CSV cells and plots."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with ``#2``, ``#3`` appended to repeats (the same model listed twice)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def printable(text: str) -> str:
    """``text`` safe for any UTF-8 output: undecodable file-name bytes (surrogate escapes) become ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def class_label(name: str) -> str:
    """A class name as a plot shows it: printable, ``$`` escaped (:func:`plot_text`), and a bare ImageNet wnid
    followed by its class name."""
    if len(name) == 9 and name[0] == "n" and name[1:].isdigit():
        from cnnlab.imagedata.labels import imagenet_categories, imagenet_wnids

        wnids = imagenet_wnids()
        if name in wnids:
            return plot_text(f"{name} {imagenet_categories()[wnids.index(name)]}")
    return plot_text(name)


def file_stem(name: str) -> str:
    """A file-name-safe form of a model name (``runs/x/best.pt`` -> ``runs_x_best.pt``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


#: What a spreadsheet reads as the start of a formula (OWASP's list for CSV injection): a cell
#: ``=HYPERLINK(...)`` or ``@SUM(...)`` from a file or class name would run when the CSV is opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell no spreadsheet evaluates: text starting with a formula character gets a
    leading ``'`` (which spreadsheets show as "this is text"); so does text already starting with ``'``,
    so that :func:`csv_text` gives every cell back exactly. Numbers stay numbers."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, "'")):
        return "'" + value
    return value


def csv_row(values: Iterable[Any]) -> list[Any]:
    """:func:`csv_cell` of every value of a row (for :func:`csv.writer`)."""
    return [csv_cell(v) for v in values]


def csv_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`csv_cell` of every value of a mapping (for :class:`csv.DictWriter`)."""
    return {k: csv_cell(v) for k, v in row.items()}


def csv_text(cell: str) -> str:
    """A cell read back from a CSV cnnlab wrote: :func:`csv_cell` undone."""
    return cell[1:] if cell.startswith("'") else cell


def plot_text(text: str) -> str:
    """``text`` as matplotlib shows it literally: its mathtext reads ``$...$`` as TeX (a class named
    ``$x^{$`` makes the whole plot fail), so every ``$`` is escaped; undecodable bytes as ``\\xNN``."""
    return printable(text).replace("$", r"\$")
