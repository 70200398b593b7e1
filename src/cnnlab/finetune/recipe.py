"""The fine-tuning recipe (fastai's ``fine_tune``): the new head first, then the whole network."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from cnnlab.finetune.config import Phase, TrainConfig, plan_phases
from cnnlab.finetune.data import reseed
from cnnlab.finetune.loop import train_one_epoch
from cnnlab.finetune.optim import make_optimizer, make_scheduler, set_phase_modes
from cnnlab.finetune.result import EpochRecord, TrainResult
from cnnlab.finetune.run import TrainingRun, finish_run, start_run
from cnnlab.finetune.state import load_phase_states, resume_entry
from cnnlab.options import Precision
from cnnlab.progress import Progress


def fine_tune(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.data``; write checkpoints and reports into ``config.out``.

    1. **head phase** (``freeze_epochs``): the ImageNet classifier is replaced by a layer with one
       output per class and only that layer trains, the backbone frozen, at ``lr``.
    2. **full phase** (``epochs``): the whole network trains, the backbone at a lower rate.

    ``freeze=True`` is a linear probe: the head phase only, for ``epochs`` epochs. Each phase has
    its own optimiser and schedule (:mod:`cnnlab.finetune.optim`) and stops early after
    ``patience`` epochs without a lower validation loss. Progress goes to ``progress``: notes,
    and each epoch as task ``"epoch"`` whose ``finish`` comes once ``last.pt`` is written; an
    exception raised there stops the run, and ``resume`` continues it from ``last.pt``.

    Raises :class:`~cnnlab.errors.CnnlabError` (and subclasses) for unusable settings, data or weights.
    """
    run, state = start_run(config, progress or Progress())
    phases = plan_phases(run.config)
    for index in range(state.phase_index, len(phases)):
        phase = phases[index]
        optimizer = make_optimizer(run.model.module, run.head, phase.name, run.config, run.bn)
        scheduler = make_scheduler(optimizer, run.config, total_steps=len(run.loader) * phase.epochs)
        scaler = torch.amp.GradScaler(run.model.device.type, enabled=run.model.precision is Precision.FP16)
        if state.epoch_in_phase > 0 and run.resume is not None:  # resuming inside this phase
            load_phase_states(run.resume, optimizer, scheduler, scaler)
        else:
            state.bad_epochs = 0
        run.resume = None
        while state.phase_index == index:
            record = _train_epoch(run, phase, state.epochs_done + 1, sum(p.epochs for p in phases),
                                  optimizer, scheduler, scaler)
            is_best, stop = state.end_epoch(record, phase, run.config.patience)
            run.save_epoch(state, record, is_best,
                           resume_entry(state, run.splits, run.config.seed, optimizer, scheduler, scaler))
            run.progress.finish("epoch", record.summary(best=is_best))
            if stop:
                run.note(f"early stop of the {phase.name} phase after epoch {record.epoch}: "
                         f"no lower validation loss for {run.config.patience} epochs")
    return finish_run(run, state)


def _train_epoch(
    run: TrainingRun,
    phase: Phase,
    epoch: int,
    total_epochs: int,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    scaler: torch.amp.GradScaler,
) -> EpochRecord:
    """Train epoch ``epoch`` of ``phase`` (re-seeded from the run's seed and ``epoch``), then validate."""
    started = time.perf_counter()
    reseed(run.config.seed, epoch, run.generator)
    set_phase_modes(run.model.module, run.head, phase.name, run.bn)
    run.progress.start("epoch", f"epoch {epoch}/{total_epochs} {phase.name}", total=len(run.loader))
    stats = train_one_epoch(
        run.model, run.loader, run.splits.train, epoch=epoch, optimizer=optimizer, scheduler=scheduler,
        scaler=scaler, criterion=nn.CrossEntropyLoss(label_smoothing=run.config.label_smoothing),
        progress=run.progress,
    )
    run.skip(stats.skipped)
    val = run.evaluate(run.splits.val, f"epoch {epoch} val") if run.splits.val is not None else None
    if val is not None and not len(val.targets):  # every validation file failed to decode
        val = None
    return EpochRecord(
        epoch=epoch, phase=phase.name, lr=stats.lr, backbone_lr=stats.backbone_lr,
        train_loss=stats.loss, train_acc=stats.accuracy,
        val_loss=val.loss if val is not None else None, val_acc=val.accuracy if val is not None else None,
        images=stats.images, skipped=len(stats.skipped), seconds=round(time.perf_counter() - started, 3),
    )
