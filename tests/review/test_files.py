"""The header pass of review tells a decompression bomb as every other command does (review finding 4)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from cnnlab.errors import ImageDecodeError
from cnnlab.imagedata.decode import decode_image
from cnnlab.review.files import check_files


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` pixels and holds a few bytes: a bomb's header, cheaply."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_a_bomb_is_worded_with_cnnlabs_limit_as_when_it_is_decoded(tmp_path: Path) -> None:
    """review said Pillow's "exceeds limit of 178956970 pixels, could be decompression bomb DOS attack";
    bench, predict and train say cnnlab's limit, 89,478,485."""
    bomb = _png_header(tmp_path / "bomb.png", 60000, 60000)
    checks = check_files([bomb])
    assert checks.unreadable == {0: ("decompression-bomb", "3,600,000,000 pixels exceeds the limit of 89,478,485")}
    with pytest.raises(ImageDecodeError) as decoded:
        decode_image(bomb)
    assert (decoded.value.reason, decoded.value.detail) == checks.unreadable[0]  # one wording everywhere
