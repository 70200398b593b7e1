"""Image files as a dataset, and their batches: what the loaders of inference and training hand out.

Its own module so that the inference loop, the GPU decode path (:mod:`cnnlab.runtime.gpu_decode`) and the
loop without PyTorch (:mod:`cnnlab.runtime.host_loop`) share these types without importing each other. Light
to import: torch only where tensors are stacked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from cnnlab.errors import ImageDecodeError

if TYPE_CHECKING:
    import torch

    from cnnlab.imagedata.datasets import SkippedFile

T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")


class ImageLoader(Protocol[T_co]):
    """Turns a file into a ``uint8`` (3, H, W) image: a tensor (:meth:`Preprocessing.load
    <cnnlab.imagedata.preprocess.Preprocessing.load>`, a training transform) or an array (its ``load_array``)."""

    def load(self, path: str | Path | bytes, *, fast_decode: bool = True) -> T_co: ...


#: What the loaders of PyTorch models use: files to tensors.
ImageTransform = ImageLoader["torch.Tensor"]

Item = tuple[int, "torch.Tensor | None", str, str]


class ImageFileDataset(Generic[T]):
    """Decodes and transforms one file per item: ``(index, image or None, reason, detail)``. Map-style, as
    DataLoader takes it; the loop without PyTorch indexes it itself."""

    def __init__(self, paths: Sequence[Path], transform: ImageLoader[T], *, fast_decode: bool = True) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.fast_decode = fast_decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, T | None, str, str]:
        try:
            image = self.transform.load(self.paths[index], fast_decode=self.fast_decode)
        except ImageDecodeError as exc:
            return index, None, exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop a whole run
            return index, None, "unreadable", f"{type(exc).__name__}: {exc}"
        return index, image, "", ""


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
    import torch

    good = [(i, t) for i, t, _, _ in items if t is not None]
    failed = [(i, reason, detail) for i, t, reason, detail in items if t is None]
    images = torch.stack([t for _, t in good]) if good else None
    return Batch([i for i, _ in good], images, failed)


def decode_in_threads(dataset: ImageFileDataset[torch.Tensor], batch_size: int, threads: int,
                      collate_fn: Callable[[list[Item]], Batch] = collate) -> Iterator[Batch]:
    """The dataset's batches, in order, each decoded by ``threads`` threads of this process when it is asked for.

    For a model on the CPU: decoding then takes its turn on every core while the model waits, and the model
    then has every core to itself. Loader processes decoding *beside* the model cost more than their share,
    since a descheduled model thread stalls the others at each of its parallel regions (five models, two JPEG
    sizes, 2 cores: median 1.10x faster this way, ``benchmarks/bench_decode_threads.py``). Pillow releases the GIL
    while it decodes and resizes.
    """
    from concurrent.futures import ThreadPoolExecutor

    from cnnlab.imagedata.records import open_containers

    open_containers(dataset.paths)  # records of a dataset: its containers indexed once, here, not in each thread
    step = max(1, batch_size)
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="cnnlab-decode") as pool:
        for first in range(0, len(dataset), step):
            yield collate_fn(list(pool.map(dataset.__getitem__, range(first, min(first + step, len(dataset))))))


@dataclass
class InferenceBatch(Generic[T]):
    """What the inference loops yield per batch (:func:`cnnlab.runtime.inference.run_inference`,
    :func:`cnnlab.runtime.host_loop.run_host_inference`).

    ``indices`` are positions in the list of files, ``logits`` their float32 logits on the CPU
    (row ``r`` belongs to ``indices[r]``; a tensor, or an array from the loop without PyTorch: ``T``); ``features``
    (when asked for) the input of the model's classifier head, pooled to one float32 vector per image;
    ``skipped`` are the files of this batch that could not be used; ``data_s`` is the time spent waiting for
    the batch (decoding), ``model_s`` the time in the model, including the copy of its output to the host (so
    GPU work is finished).
    """

    indices: list[int]
    logits: T
    features: torch.Tensor | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    data_s: float = 0.0
    model_s: float = 0.0
