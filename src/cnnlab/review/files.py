"""Files that are too small to learn from or cannot be read: a cheap header pass, no full decode.

The header gives the size; a file whose header cannot be parsed is unreadable at once. Files whose
header is fine but whose pixels are damaged (a truncated JPEG) are found by the full decode that
embedding does (:func:`cnnlab.runtime.inference.run_inference` reports them as skipped).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FileCheck:
    """``sizes[i]``: (width, height) from the header, or None; ``unreadable[i]``: (reason, detail)."""

    sizes: list[tuple[int, int] | None]
    unreadable: dict[int, tuple[str, str]] = field(default_factory=dict)

    def too_small(self, min_side: int) -> list[int]:
        """Positions of readable files whose shorter side is below ``min_side`` pixels."""
        return [i for i, s in enumerate(self.sizes) if s is not None and min(s) < min_side]

    def pixels(self, i: int) -> int:
        size = self.sizes[i]
        return size[0] * size[1] if size is not None else 0


def check_files(paths: Sequence[Path]) -> FileCheck:
    """Read every file's header: its size, or why it cannot be read.

    A record of a dataset (``shard.tar#KEY``, :mod:`cnnlab.imagedata.sources`) is read through
    :func:`cnnlab.imagedata.decode.read_regular_file`, with the limits of every image read. A decompression bomb
    is told as decoding tells it, with cnnlab's pixel limit (not Pillow's, which is twice it).
    """
    from PIL import Image, UnidentifiedImageError

    from cnnlab.errors import ImageDecodeError
    from cnnlab.imagedata.decode import _bomb_message as bomb_message  # decoding's wording: cnnlab's limit
    from cnnlab.imagedata.decode import read_regular_file
    from cnnlab.imagedata.limits import DEFAULT_MAX_PIXELS
    from cnnlab.imagedata.records import is_record

    result = FileCheck(sizes=[None] * len(paths))
    for i, path in enumerate(paths):
        try:
            source: Path | io.BytesIO = path
            if is_record(path):
                source = io.BytesIO(read_regular_file(path))
                empty = not source.getbuffer().nbytes
            else:
                empty = path.stat().st_size == 0
            if empty:
                result.unreadable[i] = ("empty", "the file has no bytes")
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # decompression-bomb warnings: decoding decides
                with Image.open(source) as img:
                    result.sizes[i] = (int(img.width), int(img.height))
        except ImageDecodeError as exc:
            result.unreadable[i] = (exc.reason, exc.detail)
        except UnidentifiedImageError:
            result.unreadable[i] = ("not-an-image", "no image format recognises these bytes")
        except Image.DecompressionBombError as exc:  # Pillow refuses before any limit of cnnlab's is looked at
            result.unreadable[i] = ("decompression-bomb", bomb_message(exc, DEFAULT_MAX_PIXELS))
        except (OSError, ValueError, SyntaxError) as exc:
            result.unreadable[i] = ("unreadable", f"{type(exc).__name__}: {exc}")
    return result
