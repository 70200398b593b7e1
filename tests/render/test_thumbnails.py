"""Thumbnails for report pages: small, upright JPEG data URIs; an unreadable file gives none; each decoded once."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from cnnlab.render import thumbnails
from cnnlab.render.thumbnails import THUMBNAIL_SIZE, Thumbnails, thumbnail_data_uri
from tests.helpers.images import make_image


def _decoded(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):])))


def test_a_thumbnail_is_a_small_jpeg_data_uri(tmp_path: Path) -> None:
    make_image(tmp_path / "big.png", size=(900, 300))
    assert max(_decoded(thumbnail_data_uri(tmp_path / "big.png")).size) == THUMBNAIL_SIZE
    assert _decoded(thumbnail_data_uri(tmp_path / "big.png", 64)).size == (64, 21)


def test_an_unreadable_file_has_no_thumbnail(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert thumbnail_data_uri(tmp_path / "bad.jpg") == ""
    assert thumbnail_data_uri(tmp_path / "missing.jpg") == ""


def test_thumbnails_of_one_page_decode_each_file_and_size_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_image(tmp_path / "cat" / "a.jpg")
    calls: list[tuple[Path, int]] = []
    real = thumbnails.thumbnail_data_uri

    def counting(path: Path, size: int = THUMBNAIL_SIZE) -> str:
        calls.append((path, size))
        return real(path, size)

    monkeypatch.setattr(thumbnails, "thumbnail_data_uri", counting)
    page = Thumbnails(tmp_path)
    first = page("cat/a.jpg", 72)
    assert first and page("cat/a.jpg", 72) == first and page(str(tmp_path / "cat" / "a.jpg"), 72) == first
    page("cat/a.jpg", 128)
    assert calls == [(tmp_path / "cat" / "a.jpg", 72), (tmp_path / "cat" / "a.jpg", 72), (tmp_path / "cat" / "a.jpg", 128)]
