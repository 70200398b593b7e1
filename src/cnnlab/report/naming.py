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


def file_stem(name: str) -> str:
    """A file-name-safe form of a model name (``runs/x/best.pt`` -> ``runs_x_best.pt``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
