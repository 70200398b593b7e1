"""Batches decoded by threads of this process (a CPU model's default): nothing they share may be left changed or
done twice when they run at once."""

from __future__ import annotations

import io
import tarfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab.imagedata import records
from cnnlab.imagedata.preprocess import Preprocessing
from cnnlab.runtime.batches import ImageFileDataset, decode_in_threads
from tests.helpers.images import make_image

PREP = Preprocessing(resize_size=32, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class _Recording:
    """A loader that takes a while and says which thread decoded what."""

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.loaded: list[str] = []

    def load(self, path: str | Path | bytes, *, fast_decode: bool = True) -> torch.Tensor:
        time.sleep(0.01)
        self.threads.add(threading.current_thread().name)
        self.loaded.append(str(path))
        return torch.zeros(3, 4, 4, dtype=torch.uint8)


def test_a_batch_is_decoded_by_several_threads_and_only_when_it_is_asked_for() -> None:
    loader = _Recording()
    batches = decode_in_threads(ImageFileDataset([Path(f"{i}.jpg") for i in range(20)], loader), 8, 4)
    first = next(batches)
    assert first.indices == list(range(8)) and first.images is not None and len(first.images) == 8
    assert len(loader.loaded) == 8  # nothing of the next batch decodes while the caller (the model) has the cores
    assert len(loader.threads) >= 2 and all(name.startswith("cnnlab-decode") for name in loader.threads)
    assert [b.indices for b in batches] == [list(range(8, 16)), list(range(16, 20))]


def test_decoding_in_threads_leaves_the_warning_filters_as_they_were(tmp_path: Path) -> None:
    """Each decode ignores Pillow's decompression-bomb warning for a moment; threads doing that at once through
    ``warnings.catch_warnings`` left one's "ignore" in the process's filters for good (the caller's "error" lost)."""
    paths = [make_image(tmp_path / f"{i}.png", (40 + i % 7, 36), (i * 3 % 256, 90, 40)) for i in range(200)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        before = list(warnings.filters)
        for _ in range(3):
            batches = list(decode_in_threads(ImageFileDataset(paths, PREP), 4, 4))
            assert sum(len(b.indices) for b in batches) == len(paths)
            assert warnings.filters == before


def _shard(path: Path, count: int) -> Path:
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            buffer = io.BytesIO()
            Image.new("RGB", (40, 30), (i, 100, 50)).save(buffer, "JPEG")
            info = tarfile.TarInfo(f"s{i:03d}.jpg")
            info.size = len(buffer.getvalue())
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
    return path


@pytest.fixture
def counted_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = records.ShardContainer.open.__func__  # type: ignore[attr-defined]

    def counting(cls: type[records.ShardContainer], path: str) -> records.ShardContainer:
        opened.append(path)
        return real(cls, path)  # type: ignore[no-any-return]

    monkeypatch.setattr(records.ShardContainer, "open", classmethod(counting))
    return opened


def test_records_of_one_shard_read_by_several_threads_at_once_open_it_once(tmp_path: Path,
                                                                          counted_opens: list[str]) -> None:
    shard = _shard(tmp_path / "a.tar", 40)
    names = [f"{shard}#s{i:03d}" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        data = list(pool.map(lambda name: records.read_record(name, 1 << 20), names))
    assert all(d[:2] == b"\xff\xd8" for d in data) and counted_opens == [str(shard)]


def test_decoding_threads_read_every_record_of_a_shard_indexed_once(tmp_path: Path, counted_opens: list[str]) -> None:
    shard = _shard(tmp_path / "b.tar", 24)
    paths = [Path(f"{shard}#s{i:03d}") for i in range(24)]
    batches = list(decode_in_threads(ImageFileDataset(paths, PREP), 8, 4))
    assert [i for b in batches for i in b.indices] == list(range(24)) and not any(b.failed for b in batches)
    assert counted_opens == [str(shard)]
