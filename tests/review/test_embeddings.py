"""The embeddings cache against files it did not write: zip bombs, lying headers, links, a full disk."""

from __future__ import annotations

import errno
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cnnlab.review import embeddings
from cnnlab.review.embeddings import EmbeddingCache

IDENTITY = {"format": 1, "model": "m"}


def _filled(file: Path, n: int = 20) -> EmbeddingCache:
    cache = EmbeddingCache(file, IDENTITY)
    for i in range(n):
        cache.vectors[f"{i:064x}"] = (np.full(64, i, np.float16), np.full(10, i, np.float16))
    return cache


def test_a_cache_reads_back_what_it_wrote(tmp_path: Path) -> None:
    _filled(tmp_path / "e.npz").save()
    again = EmbeddingCache(tmp_path / "e.npz", IDENTITY)
    assert len(again.vectors) == 20 and again.note is None
    assert again.vectors[f"{3:064x}"][0].tolist() == [3.0] * 64


def test_a_zip_bomb_is_ignored_with_a_note_not_unpacked(tmp_path: Path) -> None:
    """Regression (issue 27): the cache was read with np.load, which unpacks a member whatever its size."""
    bomb = tmp_path / "embeddings-m.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("features.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f2", "fortran_order": False, "shape": (2**23,)})
        fh.write(bytes(2**24))  # 16 MiB of zeros: a few KiB on disk
    assert bomb.stat().st_size < 2**16
    cache = EmbeddingCache(bomb, IDENTITY, max_bytes=2**20)
    assert cache.vectors == {} and cache.note is not None and "ignored" in cache.note


def test_an_array_header_declaring_more_than_there_is_is_not_allocated(tmp_path: Path) -> None:
    liar = tmp_path / "e.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(liar, "w") as archive:
        archive.writestr("identity.npy", header.getvalue() + b"x" * 8)
    assert EmbeddingCache(liar, IDENTITY).vectors == {}


def test_a_cache_file_that_is_a_link_is_neither_read_nor_written_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.npz"
    _filled(elsewhere).save()
    before = elsewhere.read_bytes()
    (tmp_path / "e.npz").symlink_to(elsewhere)
    cache = EmbeddingCache(tmp_path / "e.npz", IDENTITY)
    assert cache.vectors == {} and cache.note is not None and "symbolic link" in cache.note
    assert elsewhere.read_bytes() == before


def test_a_full_disk_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 27): a failed write left embeddings-*.npz.PID.tmp.npz behind in DATA/.cnnlab."""
    real = np.savez

    def disk_full(file: Path, **arrays: np.ndarray) -> None:
        real(file, **arrays)  # most of it written...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(embeddings.np, "savez", disk_full)
    cache = _filled(tmp_path / "e.npz")
    with pytest.raises(OSError, match="No space"):
        cache.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
