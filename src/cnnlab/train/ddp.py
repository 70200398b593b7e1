"""``train`` under ``torchrun`` (or ``--nproc N``): DistributedDataParallel over gloo (CPU) or NCCL (CUDA).

Every rank runs the whole recipe with the same seed, so the data split, the probe and every decision
(best epoch, early stop) are the same on all ranks. What is split is the SGD phases' training
batches: each step's batch, drawn exactly as a single process draws it (same sampler, same
generator, same ``--batch-size``, same number of steps per epoch), is dealt out over the ranks
(:class:`RankBatches`: rank ``r`` takes items ``r, r + N, ...`` of it), and the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` for the epoch, which averages the gradients.
``--batch-size`` therefore stays the global batch, the schedules and step counts do not depend on
the number of processes, and ``last.pt`` resumes with any number of processes.

Rank 0 alone writes the run folder; the other ranks write their (identical) checkpoints into a
private temporary folder that is removed at the end. To resume, rank 0 sends them the files of
``--out`` it holds (so nodes need not share a file system). Validation and the final evaluation
run in full on every rank (the same figures everywhere, so the ranks take the same decisions).
Batch-norm statistics, where they train, are each rank's own (no SyncBatchNorm).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Sampler

from cnnlab.models.load import LoadedModel
from cnnlab.runtime.distributed import DistContext, broadcast_from_main, from_environment, init_process_group

if TYPE_CHECKING:
    from cnnlab.imagedata.datasets import SkippedFile
    from cnnlab.runtime.inference import Batch
    from cnnlab.train.config import TrainConfig
    from cnnlab.train.loop import EpochStats


class RankBatches(Sampler[list[int]]):
    """A batch sampler: the batches a single process would draw from ``sampler``, each cut into ``world``
    interleaved parts, of which this rank takes part ``rank`` (never empty: a batch smaller than the
    number of ranks lends its first item to the ranks it cannot feed)."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, rank: int, world: int) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield self._part(batch)
                batch = []
        if batch and not self.drop_last:
            yield self._part(batch)

    def _part(self, batch: list[int]) -> list[int]:
        return batch[self.rank::self.world] or batch[:1]


def join(config: TrainConfig) -> DistContext | None:
    """This process's place in a torchrun launch, its process group joined (``None``: a single process)."""
    ctx = from_environment()
    if ctx is None or ctx.world_size == 1:
        return None
    from cnnlab.models.load import resolve_device

    init_process_group(ctx, resolve_device(device_for_rank(config.device, ctx)).type)
    return ctx


def device_for_rank(device: str, ctx: DistContext) -> str:
    """``cuda:LOCAL_RANK`` for ``auto``/``cuda`` on a machine with GPUs, else ``device``."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank % torch.cuda.device_count()}"
    return "cpu" if device == "auto" else device


@contextlib.contextmanager
def rank_config(config: TrainConfig, ctx: DistContext | None) -> Iterator[TrainConfig]:
    """The settings this rank runs with: its device, and for ranks other than 0 a private run folder
    (holding, to resume, the files rank 0 sent)."""
    if ctx is None:
        yield config
        return
    from cnnlab.train.result import RUN_FILES

    device = device_for_rank(config.device, ctx)
    sent = broadcast_from_main(_run_files(Path(config.out), RUN_FILES) if ctx.is_main and config.resume else {}, ctx)
    if ctx.is_main:
        yield dataclasses.replace(config, device=device)
        return
    with tempfile.TemporaryDirectory(prefix=f"cnnlab-train-rank{ctx.rank}-") as tmp:
        for name, data in sent.items():
            (Path(tmp) / name).write_bytes(data)
        # a resumed run reads the files rank 0 sent (resume and overwrite exclude each other)
        yield dataclasses.replace(config, device=device, out=tmp, overwrite=not config.resume, tensorboard=False)


def _run_files(out: Path, names: tuple[str, ...] | list[str]) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in names if (out / name).is_file()}


def rank_loader(loader: DataLoader[Batch], ctx: DistContext | None) -> DataLoader[Batch]:
    """``loader`` with each batch dealt out over the ranks (:class:`RankBatches`); as it is without a launch."""
    if ctx is None:
        return loader
    assert loader.batch_size is not None
    sampler: Sampler[int] = loader.sampler  # type: ignore[assignment]
    return DataLoader(
        loader.dataset,
        batch_sampler=RankBatches(sampler, loader.batch_size, loader.drop_last, ctx.rank, ctx.world_size),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=False,
        prefetch_factor=loader.prefetch_factor,
    )


def training_model(model: LoadedModel, ctx: DistContext | None) -> LoadedModel:
    """``model`` with its module in DistributedDataParallel (for one epoch: what trains can change
    between phases); as it is without a launch."""
    if ctx is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [model.device.index] if model.device.type == "cuda" else None
    wrapped = DistributedDataParallel(model.module, device_ids=ids)
    return dataclasses.replace(model, module=wrapped, _forward=None)


def combine_stats(stats: EpochStats, ctx: DistContext | None) -> EpochStats:
    """One epoch's training figures over all ranks (each rank saw its part of every batch)."""
    if ctx is None:
        return stats
    import torch.distributed as dist

    parts: list[EpochStats | None] = [None] * ctx.world_size
    dist.all_gather_object(parts, stats)
    everyone = [p for p in parts if p is not None]
    images = sum(p.images for p in everyone)
    seen: dict[str, SkippedFile] = {}
    for p in everyone:
        for s in p.skipped:
            seen.setdefault(s.path, s)
    return dataclasses.replace(
        stats, images=images, skipped=list(seen.values()),
        loss=sum(p.loss * p.images for p in everyone) / max(images, 1),
        accuracy=sum(p.accuracy * p.images for p in everyone) / max(images, 1))
