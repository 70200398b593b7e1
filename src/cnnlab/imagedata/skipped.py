"""A file (or record) that was not used, and why: what every reader reports instead of stopping."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not used, and why (``reason`` is one of :data:`cnnlab.imagedata.decode.REASONS`)."""

    path: str
    reason: str
    detail: str = ""
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
