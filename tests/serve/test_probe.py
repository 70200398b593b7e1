"""The header probe of the web process: an image's size from its header, whatever Pillow's own bomb limit."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cnnlab.serve.probe import header_size


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_the_size_of_common_formats_is_read_from_the_header(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (37, 21)).save(buffer, fmt)
    assert header_size(buffer.getvalue()) == (37, 21)


def test_a_size_over_pillows_bomb_limit_is_read_not_refused() -> None:
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", 30_000, 30_000)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF)
    assert header_size(bytes(data)) == (30_000, 30_000)


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\xff\xd8\xff"], ids=["empty", "text", "jpeg-magic"])
def test_bytes_no_format_recognises_have_no_size(data: bytes) -> None:
    assert header_size(data) is None
