"""The fine-tuning recipe: a linear probe for the new head, then (optionally) the head alone, then the whole network."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from cnnlab.errors import CnnlabError
from cnnlab.options import Precision
from cnnlab.progress import Progress
from cnnlab.runtime.allocator import keep_freed_memory
from cnnlab.runtime.distributed import DistContext, broadcast_from_main, destroy_process_group, gather_to_main
from cnnlab.runtime.inference import Batch
from cnnlab.train import ddp
from cnnlab.train.augment import BatchMix, make_batch_mix
from cnnlab.train.config import Phase, TrainConfig
from cnnlab.train.data import reseed
from cnnlab.train.loop import Predictions, train_one_epoch
from cnnlab.train.optim import make_optimizer, make_scheduler, set_phase_modes
from cnnlab.train.probe import fit_probe, set_head
from cnnlab.train.result import EpochRecord, TrainResult
from cnnlab.train.session import TrainingRun, finish_run
from cnnlab.train.start import start_run
from cnnlab.train.state import RunState, load_phase_states, resume_entry, run_folder
from cnnlab.train.zero_shot import zero_shot_accuracy


def fine_tune(config: TrainConfig, *, progress: Progress | None = None) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.data``; write checkpoints and reports into ``config.out``.

    The train job (also :func:`cnnlab.train.run`): check (settings, model, the run folder's rules:
    :func:`~cnnlab.train.state.run_folder`), lock the run folder, compute, write; ``config.resume`` continues
    the run there, ``config.overwrite`` replaces it.

    0. **probe** (``probe``, the default): the ImageNet classifier is replaced by a layer with one
       output per class, set by a logistic regression on the frozen features of the training
       images (:mod:`cnnlab.train.probe`). Recorded as epoch 0, validated like an epoch, so
       ``best.pt`` is never worse on validation than the probe. ``freeze`` stops here.
    1. **head phase** (``freeze_epochs``, 0 by default): only the head trains, backbone frozen.
    2. **full phase** (``epochs``): the network trains, the backbone at a lower rate, except its
       early layers (``frozen_stride``, :func:`~cnnlab.train.optim.early_layers`), on training
       crops ``train_size_ratio`` of the evaluation size.

    Each SGD phase has its own optimiser and per-step schedule (:mod:`cnnlab.train.optim`) over
    batches that give it at least ``min_phase_steps`` steps (:func:`~cnnlab.train.config.plan_batches`),
    and stops early after ``patience`` epochs without a better epoch (validation accuracy, then loss). Progress goes to
    ``progress``: notes, and each epoch as task ``"epoch"`` whose ``finish`` comes once
    ``last.pt`` is written; an exception raised there stops the run, and ``resume`` continues it
    from ``last.pt``.

    Under ``torchrun`` (``--nproc N``) the SGD phases run in DistributedDataParallel, rank 0 writing the
    run folder (:mod:`cnnlab.train.ddp`).

    On Linux the C allocator keeps freed memory for the next batch (:mod:`cnnlab.runtime.allocator`), for the
    whole process.

    Raises :class:`~cnnlab.errors.CnnlabError` (and subclasses) for unusable settings, data or weights.
    """
    keep_freed_memory()
    ctx = ddp.join(config)
    try:
        with ddp.rank_config(config, ctx) as rank_config:
            return _fine_tune(rank_config, (progress or Progress()) if ctx is None or ctx.is_main else Progress(), ctx)
    finally:
        if ctx is not None:
            destroy_process_group()


def _fine_tune(config: TrainConfig, progress: Progress, ctx: DistContext | None) -> TrainResult:
    run, state = _start_every_rank(config, progress, ctx)
    with run.locks:  # the run folder stays locked until the run ends
        try:
            return _run_phases(run, state, ctx)
        except BaseException:
            if not config.resume and not (run.out / "last.pt").exists() and (ctx is None or ctx.is_main):
                # a run that stopped before its first checkpoint has nothing to resume: what it wrote (its
                # data_split.csv) must not make the next run into this folder look like a continuation
                run_folder(config).clear_previous()
            raise


def _start_every_rank(config: TrainConfig, progress: Progress, ctx: DistContext | None) -> tuple[TrainingRun, RunState]:
    """:func:`start_run` on this rank. Under torchrun the ranks then agree: when any rank could not start (rank 0
    finds a locked run folder or one holding a run, say), every rank raises the first such error, rank 0 to
    print it and the others marked ``reported_by_main`` to exit with its status quietly, instead of the others
    going on alone into the first collective call and failing there with a traceback."""
    started: tuple[TrainingRun, RunState] | None = None
    error: CnnlabError | None = None
    try:
        started = start_run(config, progress)
    except CnnlabError as exc:
        if ctx is None:
            raise
        error = exc
    if ctx is not None:
        errors = gather_to_main(error, ctx)
        first = broadcast_from_main(next((e for e in errors or [] if e is not None), None), ctx)
        if first is not None:
            if started is not None:
                started[0].locks.close()
            if not ctx.is_main:
                first.reported_by_main = True
            raise first
    assert started is not None
    return started


def _run_phases(run: TrainingRun, state: RunState, ctx: DistContext | None) -> TrainResult:
    phases = run.phases
    total_epochs = sum(p.epochs for p in phases if p.name != "probe")
    mix = make_batch_mix(len(run.splits.classes), mixup=run.config.mixup, cutmix=run.config.cutmix)
    for index in range(state.phase_index, len(phases)):
        phase = phases[index]
        if phase.name == "probe":
            _zero_shot(run)
            record, val = _probe(run)
            run.probe_state = {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
                               for k, v in run.model.module.state_dict().items()}
            run.probe_val = val
            is_best, _ = state.end_epoch(record, phase, run.config.patience)
            run.keep_if_best(val, is_best)
            run.save_epoch(state, record, is_best, resume_entry(state, run.splits, run.config.seed))
            run.progress.finish("epoch", record.summary(best=is_best))
            continue
        run.start_ema()
        loader = ddp.rank_loader(run.train_loader(phase), ctx)
        optimizer = make_optimizer(run.model.module, run.head, phase.name, run.config, run.bn, run.frozen)
        scheduler = make_scheduler(optimizer, run.config, total_steps=len(loader) * phase.epochs)
        scaler = torch.amp.GradScaler(run.model.device.type, enabled=run.model.precision is Precision.FP16)
        if state.epoch_in_phase > 0 and run.resume is not None:  # resuming inside this phase
            load_phase_states(run.resume, optimizer, scheduler, scaler)
        else:
            state.bad_epochs = 0
        run.resume = None
        while state.phase_index == index:
            record, val = _train_epoch(run, phase, state.epochs_done + 1, total_epochs, loader, optimizer, scheduler,
                                       scaler, mix, ctx)
            is_best, stop = state.end_epoch(record, phase, run.config.patience)
            run.keep_if_best(val, is_best)
            run.save_epoch(state, record, is_best,
                           resume_entry(state, run.splits, run.config.seed, optimizer, scheduler, scaler))
            run.progress.finish("epoch", record.summary(best=is_best))
            if stop:
                run.note(f"early stop of the {phase.name} phase after epoch {record.epoch}: "
                         f"no better validation accuracy or loss for {run.config.patience} epochs")
    return finish_run(run, state)


def _zero_shot(run: TrainingRun) -> None:
    """The untouched pretrained model on the validation images, when every class maps onto ImageNet."""
    if run.imagenet_head is None or run.splits.val is None:
        return
    found = zero_shot_accuracy(run.model, run.imagenet_head, run.splits.val, batch_size=run.config.batch_size,
                               workers=run.workers, progress=run.progress, known=run.pretrained_features)
    if found is not None:
        run.result.zero_shot = found.to_dict()
        run.note(f"zero-shot: the pretrained model scores {found.accuracy:.1%} on the {found.images} validation "
                 "images through the WordNet mapping of the classes (what training has to beat)")


def _probe(run: TrainingRun) -> tuple[EpochRecord, Predictions | None]:
    """Fit the head on frozen features (epoch 0), then validate."""
    started = time.perf_counter()
    run.progress.start("epoch", "epoch   0 probe (logistic regression on frozen features)", total=1)
    fit = fit_probe(run.model, run.head, run.splits.train, batch_size=run.config.batch_size, workers=run.workers,
                    balance=run.config.balance, seed=run.config.seed, progress=run.progress,
                    known=run.pretrained_features)
    set_head(run.head, fit)
    run.skip(fit.skipped)
    run.progress.update("epoch", advance=1)
    return _record(run, Phase("probe", 1), 0, started, lr=(0.0, 0.0), train=(fit.loss, fit.accuracy),
                   images=fit.images, skipped=len(fit.skipped))


def _train_epoch(
    run: TrainingRun,
    phase: Phase,
    epoch: int,
    total_epochs: int,
    loader: DataLoader[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    scaler: torch.amp.GradScaler,
    mix: BatchMix | None,
    ctx: DistContext | None = None,
) -> tuple[EpochRecord, Predictions | None]:
    """Train epoch ``epoch`` of ``phase`` (re-seeded from the run's seed and ``epoch``), then validate."""
    started = time.perf_counter()
    reseed(run.config.seed, epoch, run.generator)
    set_phase_modes(run.model.module, run.head, phase.name, run.bn, run.frozen)
    run.progress.start("epoch", f"epoch {epoch}/{total_epochs} {phase.name}", total=len(loader))
    stats = train_one_epoch(
        ddp.training_model(run.model, ctx), loader, run.splits.train, epoch=epoch, optimizer=optimizer, scheduler=scheduler,
        scaler=scaler, criterion=nn.CrossEntropyLoss(label_smoothing=run.config.label_smoothing),
        progress=run.progress, mix=mix, ema=run.ema,
    )
    stats = ddp.combine_stats(stats, ctx)
    run.skip(stats.skipped)
    return _record(run, phase, epoch, started, lr=(stats.lr, stats.backbone_lr), train=(stats.loss, stats.accuracy),
                   images=stats.images, skipped=len(stats.skipped))


def _record(run: TrainingRun, phase: Phase, epoch: int, started: float, *, lr: tuple[float, float],
            train: tuple[float, float], images: int, skipped: int) -> tuple[EpochRecord, Predictions | None]:
    """Validate the model as it is now and describe the epoch; the validation predictions too (None without
    a validation split or when none of its files decoded)."""
    val = run.evaluate(run.splits.val, f"epoch {epoch} val") if run.splits.val is not None else None
    if val is not None and not len(val.targets):  # every validation file failed to decode
        val = None
    return EpochRecord(
        epoch=epoch, phase=phase.name, lr=lr[0], backbone_lr=lr[1], train_loss=train[0], train_acc=train[1],
        val_loss=val.loss if val is not None else None, val_acc=val.accuracy if val is not None else None,
        images=images, skipped=skipped, seconds=round(time.perf_counter() - started, 3),
    ), val


#: The train job under the name every job has (``cnnlab.bench.run``, ``cnnlab.review.run``...).
run = fine_tune
