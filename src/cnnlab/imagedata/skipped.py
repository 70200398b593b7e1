"""A file (or record) that was not used, and why: what every reader reports instead of stopping."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (control characters such as ESC, format characters,
    line separators, lone surrogates) written as a Python escape (``\\x1b``): safe to print, one line."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not used, and why (``reason`` is one of :data:`cnnlab.imagedata.decode.REASONS`).

    ``detail`` is free text (it often quotes a tar member's name or a path that a dataset holds): its control
    characters are escaped (:func:`printable`), so printing it cannot drive the terminal. ``path`` is kept as it is,
    since it names the file; record names (``shard.tar#KEY``) are already printable (their keys are escaped when the
    shard is read: :mod:`cnnlab.imagedata.shards`).
    """

    path: str
    reason: str
    detail: str = ""
    label: str | None = None

    def __post_init__(self) -> None:
        if self.detail and not self.detail.isprintable():
            object.__setattr__(self, "detail", printable(self.detail))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
