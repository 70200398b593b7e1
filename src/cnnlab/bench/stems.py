"""File names of a benchmark's per-model outputs (``predictions/<stem>.csv``, ``confusion_<stem>.png``).

Each model's file must be its own: two names that map to the same safe stem (``runs/猫/best.pt`` and
``runs/犬/best.pt`` both become ``runs_best.pt``) would otherwise write one file, the second model's
predictions silently replacing the first's. A stem that is not unique, or too long for a file system,
gets a short digest of the full name instead.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

from cnnlab.render.naming import file_stem, unique_names

#: Characters of a stem before it is cut and given a digest (file names are at most 255 bytes; the
#: stem gets a prefix and a suffix).
MAX_STEM = 100


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def model_file_stems(names: Sequence[str]) -> list[str]:
    """One distinct file-name-safe stem per entry of ``names`` (a name listed twice gets ``_2``, as in the
    tables' ``#2``); a stem shared by different names, or longer than :data:`MAX_STEM`, ends in a digest."""
    shown = unique_names(names)
    stems = [file_stem(n) for n in shown]
    counts = Counter(stems)
    out = []
    for name, stem in zip(shown, stems):
        if counts[stem] > 1 or len(stem) > MAX_STEM:
            stem = f"{stem[:MAX_STEM - 9]}-{_digest(name)}"
        out.append(stem)
    return out
