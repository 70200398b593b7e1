"""Image files as a dataset, and their batches: what the loaders of inference and training hand out.

Its own module so that the inference loop and the GPU decode path (:mod:`cnnlab.runtime.gpu_decode`) share
these types without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import Dataset

from cnnlab.errors import ImageDecodeError


class ImageTransform(Protocol):
    """Turns a file into a ``uint8`` (3, H, W) tensor: a :class:`~cnnlab.imagedata.preprocess.Preprocessing` or a
    training transform."""

    def load(self, path: str | Path | bytes, *, fast_decode: bool = True) -> torch.Tensor: ...


Item = tuple[int, "torch.Tensor | None", str, str]


class ImageFileDataset(Dataset[Item]):
    """Decodes and transforms one file per item: ``(index, uint8 tensor or None, reason, detail)``."""

    def __init__(self, paths: Sequence[Path], transform: ImageTransform, *, fast_decode: bool = True) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.fast_decode = fast_decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        try:
            tensor = self.transform.load(self.paths[index], fast_decode=self.fast_decode)
        except ImageDecodeError as exc:
            return index, None, exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop a whole run
            return index, None, "unreadable", f"{type(exc).__name__}: {exc}"
        return index, tensor, "", ""


@dataclass
class Batch:
    """A batch of decoded images plus the items of the same slice that failed."""

    indices: list[int]
    images: torch.Tensor | None
    failed: list[tuple[int, str, str]]
    #: The device decode path's items, not yet decoded (:func:`cnnlab.runtime.gpu_decode.collate_encoded`).
    encoded: list[torch.Tensor] | None = None

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) so host-to-GPU copies can be asynchronous."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate(items: list[Item]) -> Batch:
    """DataLoader ``collate_fn``: stack the decoded images, keep the failures apart."""
    good = [(i, t) for i, t, _, _ in items if t is not None]
    failed = [(i, reason, detail) for i, t, reason, detail in items if t is None]
    images = torch.stack([t for _, t in good]) if good else None
    return Batch([i for i, _ in good], images, failed)
