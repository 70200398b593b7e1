"""Names of things in reports and on disk: unique model names and file-name-safe stems."""

from __future__ import annotations

import re
from collections.abc import Sequence


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
    """A class name as a plot shows it: printable, and a bare ImageNet wnid followed by its class name."""
    if len(name) == 9 and name[0] == "n" and name[1:].isdigit():
        from cnnlab.imagedata.labels import imagenet_categories, imagenet_wnids

        wnids = imagenet_wnids()
        if name in wnids:
            return f"{name} {imagenet_categories()[wnids.index(name)]}"
    return printable(name)


def file_stem(name: str) -> str:
    """A file-name-safe form of a model name (``runs/x/best.pt`` -> ``runs_x_best.pt``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
