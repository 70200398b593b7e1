"""The one way images reach a model: a loader factory and one inference loop.

* :func:`make_loader` decodes and transforms files in DataLoader workers and yields
  :class:`Batch` objects; a file that cannot be used comes back as a failure record instead of
  stopping the run. Evaluation and training loaders are both made here (timm's
  ``create_loader``): training passes a sampler and its augmenting transform.
* :func:`run_inference` runs a model (a :class:`~cnnlab.runtime.Runtime`: PyTorch's
  :class:`~cnnlab.models.load.LoadedModel`, or an ONNX file in ONNX Runtime or OpenVINO) over a list of files and yields,
  batch by batch, the positions of the images, their logits and the files skipped, with the time
  spent waiting for data and in the model. ``predict``, ``bench`` and training's evaluation all
  use it; nothing else loops over batches for inference.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Sampler

from cnnlab.errors import UsageError
from cnnlab.imagedata.datasets import SkippedFile
from cnnlab.models.load import LoadedModel
from cnnlab.progress import Progress
from cnnlab.runtime.allocator import return_free_pages
from cnnlab.runtime.batches import Batch, ImageFileDataset, ImageTransform, InferenceBatch, Item, collate, decode_in_threads
from cnnlab.runtime.cores import available_cores, default_workers
from cnnlab.runtime.finite import require_finite

if TYPE_CHECKING:
    from cnnlab.runtime.base import Runtime


#: Decoding processes at most per CPU core: more only add memory (each prefetches its own batches).
MAX_WORKERS_PER_CORE = 1


def make_loader(
    paths: Sequence[Path],
    transform: ImageTransform,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    device_type: str = "cpu",
    fast_decode: bool = True,
    sampler: Sampler[int] | None = None,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    worker_init_fn: Callable[[int], None] | None = None,
    collate_fn: Callable[[list[Item]], Batch] = collate,
) -> DataLoader[Batch]:
    """A DataLoader of :class:`Batch` objects.

    Without ``sampler`` the files come in order (evaluation); training passes its shuffling
    sampler, the ``generator`` that seeds workers, and ``drop_last``. ``workers=None`` means
    :func:`default_workers`. Host memory is pinned when the model runs on CUDA. ``paths`` may name records of
    a dataset (``shard.tar#KEY``, ``hf:name/split#ROW``: :mod:`cnnlab.imagedata.sources`): the loader stays
    map-style, so workers (and samplers over torchrun ranks) split the records by position, each read once.
    """
    workers = default_workers(device_type) if workers is None else workers
    most = MAX_WORKERS_PER_CORE * available_cores()
    if workers > most:  # each worker holds a copy of the decode state and prefetched batches: memory, not speed
        warnings.warn(f"{workers} decoding processes on {available_cores()} cores would only cost memory; "
                      f"using {most}", stacklevel=2)
        workers = most
    if workers > 0:  # records of a dataset (shard.tar#KEY): index their containers once, here, for every worker
        from cnnlab.imagedata.records import open_containers

        open_containers(paths)
    return DataLoader(
        ImageFileDataset(paths, transform, fast_decode=fast_decode),  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=device_type == "cuda",
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=worker_init_fn,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


def run_inference(
    model: Runtime,
    paths: Sequence[Path],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    fast_decode: bool = True,
    labels: Sequence[str | None] | None = None,
    progress: Progress | None = None,
    task: str = "inference",
    description: str | None = None,
    features: bool = False,
    decode: str = "auto",
) -> Iterator[InferenceBatch[torch.Tensor]]:
    """Run ``model`` over ``paths`` in order, one :class:`InferenceBatch` at a time.

    ``labels`` (parallel to ``paths``) are copied into the skipped-file records. With
    ``features=True`` each batch also carries the penultimate features (what the classifier head
    receives: the embedding used by linear probes, outlier and similarity searches; PyTorch models,
    and exports with a ``features_and_logits`` method, :mod:`cnnlab.review.onnx_features`). Progress
    is reported as task ``task`` in images, with the rate so far. ``workers``: loader processes decoding beside
    the model (``None``: :func:`default_workers` for a GPU model, 0 for a CPU model); with 0 and a CPU model on
    several cores, each batch is decoded by threads of this process, on every core, while the model waits
    (:func:`decode_in_threads`). ``decode``:
    where JPEGs are decoded (:func:`cnnlab.runtime.gpu_decode.use_device_decode`; ``auto``: on a CUDA device
    with nvJPEG, the decode counted in ``data_s``).

    Inference mode is on only while the model runs, not while the caller holds a batch; the feature
    hook is removed however the iteration ends (exhausted, closed early, or an exception).
    """
    progress = progress or Progress()
    captured: list[torch.Tensor] = []
    both = getattr(model, "features_and_logits", None) if features else None  # a feature-extractor export
    if features and not isinstance(model, LoadedModel) and both is None:
        raise UsageError(f"features come from the PyTorch model's head; {model.name} runs on {model.backend.value}")
    device = model.device
    if device.type == "cuda":  # the first pinned host-to-device copy sets things up: keep it out of the timing
        crop = model.preprocessing.crop_size
        torch.zeros(1, 3, crop, crop, dtype=torch.uint8).pin_memory().to(device, non_blocking=True)
        torch.cuda.synchronize(device)
    from cnnlab.runtime import gpu_decode

    on_device = gpu_decode.use_device_decode(decode, device)
    if workers is None:  # as --workers auto chooses: loader processes for a GPU, none for a CPU model
        workers = 0 if device.type == "cpu" else default_workers(device.type)
    loader: Iterable[Batch]
    if workers == 0 and device.type == "cpu" and available_cores() > 1:  # decoding takes turns with the model
        loader = decode_in_threads(ImageFileDataset(paths, model.preprocessing, fast_decode=fast_decode),
                                   batch_size, available_cores())
    else:
        loader = make_loader(paths, gpu_decode.JpegBytes(model.preprocessing) if on_device else model.preprocessing,
                             batch_size=batch_size, workers=workers, device_type=device.type,
                             fast_decode=fast_decode, collate_fn=gpu_decode.collate_encoded if on_device else collate)
    iterator = iter(loader)
    hook = _capture_head_input(model, captured) if isinstance(model, LoadedModel) and features else None
    try:
        progress.start(task, description or f"{model.name}", total=len(paths))
        done = 0
        started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            if batch.encoded is not None:
                batch = gpu_decode.decode_loader_batch(batch, model.preprocessing, device)
            t1 = time.perf_counter()
            skipped = [SkippedFile(str(paths[i]), reason, detail, labels[i] if labels is not None else None)
                       for i, reason, detail in batch.failed]
            feats = None
            with torch.inference_mode():
                if batch.images is not None:
                    captured.clear()
                    if both is not None:
                        feats, logits = both(batch.images)
                    else:
                        logits = model(batch.images).cpu()  # .cpu() waits for the device
                    if hook is not None:
                        feats = _pooled(captured[-1]).float().cpu()
                else:
                    logits = torch.zeros(0, model.spec.num_classes)
            t2 = time.perf_counter()
            require_finite(logits, model.name, [paths[i] for i in batch.indices])
            return_free_pages()
            done += len(batch.indices) + len(batch.failed)
            rate = done / max(t2 - started, 1e-9)
            progress.update(task, advance=len(batch.indices) + len(batch.failed), info=f"{rate:,.0f} img/s")
            yield InferenceBatch(batch.indices, logits, feats, skipped, t1 - t0, t2 - t1)
    finally:
        if hook is not None:
            hook.remove()
        if isinstance(iterator, Generator):  # the decoding threads stop now, not when the generator is collected
            iterator.close()
        progress.finish(task)


def _capture_head_input(model: LoadedModel, into: list[torch.Tensor]) -> torch.utils.hooks.RemovableHandle:
    """Record what the model's classifier head receives on every forward pass."""
    from cnnlab.models.checkpoint import find_head

    _, head = find_head(model.module, model.spec.num_classes)

    def keep(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        into.append(args[0].detach())

    return head.register_forward_pre_hook(keep)


def _pooled(x: torch.Tensor) -> torch.Tensor:
    """(N, C) features as they are; (N, C, H, W) maps (a 1x1-convolution head) averaged over space."""
    return x.flatten(2).mean(2) if x.ndim > 2 else x.flatten(1)
