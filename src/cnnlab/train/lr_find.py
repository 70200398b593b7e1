"""The learning-rate range test (Smith 2015, fastai's ``lr_find``): :func:`find_lr`.

The run is prepared as :func:`cnnlab.train.fine_tune` would start it (data, split, model, and
the probe when the run has one), then its first SGD phase trains for ``steps`` optimiser steps
while the learning rate grows exponentially from ``start_lr`` to ``end_lr`` (torch's
:class:`~torch.optim.lr_scheduler.ExponentialLR`). The x axis is the value of ``--lr``: every
parameter group moves with it in the phase's proportions (in the full phase the head at half of
it, the backbone at ``backbone_lr_ratio`` of that). The loss is smoothed by an exponential moving
average (0.98, bias-corrected); the test stops early once the smoothed loss exceeds both 4 times
its minimum and ``ln(classes)`` (the loss of a uniform guess: diverged).

**Suggested value**: a tenth of the learning rate at which training starts to break down -- the
first rate where the smoothed loss exceeds twice its lowest value so far plus
``0.05 * ln(classes)`` (the largest rate tested when that never happens). fastai's ``lr_min``
(the rate at the lowest loss, divided by 10) assumes a loss that first falls; after the probe the
head starts at its optimum, the loss is flat and near zero until the rate is too high, and the
minimum of a flat curve is noise. The onset of the rise is where both kinds of curve turn, and a
tenth of it is a rate that trains without breaking what the probe found.

Nothing is trained for good: the weights are discarded; ``lr_find.csv`` and ``lr_find.png`` are
written to ``out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ExponentialLR

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.options import Precision
from cnnlab.outputs import atomic_open
from cnnlab.progress import Progress
from cnnlab.runtime.allocator import keep_freed_memory
from cnnlab.train.augment import make_batch_mix
from cnnlab.train.config import TrainConfig
from cnnlab.train.data import reseed
from cnnlab.train.loop import training_step
from cnnlab.train.optim import batchnorm_trains, make_optimizer, set_phase_modes
from cnnlab.train.probe import fit_probe, set_head
from cnnlab.train.start import start_run
from cnnlab.train.state import run_folder

SMOOTHING = 0.98
#: Stop once the smoothed loss is this many times its minimum.
DIVERGED = 4.0
RULE = "a tenth of the first learning rate where the smoothed loss rises above 2 x its lowest so far + 0.05 ln(classes)"
#: The rise (relative, and in units of ln(classes)) that marks the onset of the breakdown.
RISE = (2.0, 0.05)


@dataclass
class LRFinderResult:
    """The range test: learning rates tried, losses, and the suggested ``--lr``."""

    phase: str
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    rule: str = RULE
    files: list[str] = field(default_factory=list)
    #: Why the suggestion should not be trusted (the loss never rose over the rates tried), else ``None``.
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "suggested_lr": self.suggestion, "rule": self.rule, "files": self.files,
                "warning": self.warning,
                "points": [{"lr": lr, "loss": a, "smoothed": b}
                           for lr, a, b in zip(self.lrs, self.losses, self.smoothed)]}


def suggest(lrs: list[float], smoothed: list[float], num_classes: int) -> float | None:
    """:data:`RULE` applied to a range test (``None`` without points)."""
    if not smoothed:
        return None
    lowest = math.inf
    for lr, loss in zip(lrs, smoothed):
        if not math.isfinite(loss) or loss > RISE[0] * lowest + RISE[1] * math.log(num_classes):
            return lr / 10
        lowest = min(lowest, loss)
    return lrs[-1] / 10


def never_rose(lrs: list[float], smoothed: list[float], num_classes: int) -> bool:
    """Whether the smoothed loss of a range test never rose by :data:`RULE`'s measure up to its last
    rate, so that the suggestion is only the largest rate tried / 10. A loss that ended non-finite
    did rise: the last rate broke training outright."""
    if len(smoothed) < 2 or not math.isfinite(smoothed[-1]) or suggest(lrs, smoothed, num_classes) != lrs[-1] / 10:
        return False
    losses = [v for v in smoothed if math.isfinite(v)]
    return smoothed[-1] <= RISE[0] * min(losses) + RISE[1] * math.log(num_classes)


def find_lr(
    config: TrainConfig,
    progress: Progress | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
) -> LRFinderResult:
    """Run the range test for ``config``'s first SGD phase; write ``lr_find.csv`` and ``lr_find.png`` to ``config.out``.

    The folder follows the run folder's rules (:func:`~cnnlab.train.state.run_folder`) but may hold a run: the
    test writes only its own two files there."""
    progress = progress or Progress()
    if config.freeze or config.resume:
        raise UsageError("the learning-rate range test tests the learning rate of SGD epochs: not with freeze or "
                         "resume")
    if not 0 < start_lr < end_lr or steps < 2:
        raise UsageError("the range test needs 0 < start_lr < end_lr and at least 2 steps")
    config.validate()
    keep_freed_memory()  # as fine_tune does: the same steps, as fast
    folder = run_folder(config)
    folder.check(replace=True)
    out = folder.create()
    with folder.lock(error=UsageError):  # not while a training run (or another range test) writes there
        return _range_test(config, progress, out, start_lr=start_lr, end_lr=end_lr, steps=steps)


def _range_test(config: TrainConfig, progress: Progress, out: Path, *, start_lr: float, end_lr: float,
                steps: int) -> LRFinderResult:
    run, _ = start_run(config, progress, prepare_out=False, range_test=True)
    phase = next((p for p in run.phases if p.name != "probe"), None)
    if phase is None:
        raise UsageError("the learning-rate range test: the run has no SGD epochs (epochs and freeze_epochs are 0)")
    if run.phases[0].name == "probe":
        set_head(run.head, fit_probe(run.model, run.head, run.splits.train, batch_size=config.batch_size,
                                     workers=run.workers, balance=config.balance, seed=config.seed,
                                     progress=progress))
    module = run.model.module
    optimizer = make_optimizer(module, run.head, phase.name, run.config, run.bn, run.frozen)
    for group in optimizer.param_groups:  # the groups keep the phase's proportions to --lr
        group["lr"] = start_lr * group["lr"] / run.config.lr
    scheduler = ExponentialLR(optimizer, gamma=(end_lr / start_lr) ** (1 / (steps - 1)))
    loader = run.train_loader(phase)
    mix = make_batch_mix(len(run.splits.classes), mixup=config.mixup, cutmix=config.cutmix)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    scaler = torch.amp.GradScaler(run.model.device.type, enabled=run.model.precision is Precision.FP16)  # as training's
    targets = torch.tensor(run.splits.train.targets, dtype=torch.long)
    result = LRFinderResult(phase.name)
    set_phase_modes(module, run.head, phase.name, run.bn, run.frozen)
    # as in training: BatchNorm layers that train cannot normalise a batch that undecodable files left with one image
    bn_trains = batchnorm_trains(module)
    progress.start("lr_find", f"learning-rate range test ({phase.name} phase)", total=steps)
    average, lowest, cycle = 0.0, math.inf, 0
    chance = math.log(len(run.splits.classes))
    while len(result.lrs) < steps:
        reseed(config.seed, cycle, run.generator)
        cycle += 1
        for batch in loader:
            if batch.images is None or (bn_trains and len(batch.indices) == 1):
                continue
            step = training_step(run.model, batch.images, targets[batch.indices], optimizer=optimizer, scaler=scaler,
                                 criterion=criterion, mix=mix)
            value = step.loss.item()
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smooth = average / (1 - SMOOTHING ** (len(result.lrs) + 1))
            result.lrs.append(start_lr * (end_lr / start_lr) ** (len(result.lrs) / (steps - 1)))
            result.losses.append(value)
            result.smoothed.append(smooth)
            scheduler.step()
            progress.update("lr_find", advance=1, info=f"lr {result.lrs[-1]:.1e} loss {smooth:.3f}")
            lowest = min(lowest, smooth)
            if not math.isfinite(smooth) or smooth > max(DIVERGED * lowest, chance) or len(result.lrs) >= steps:
                break
        else:
            continue
        break
    progress.finish("lr_find")
    if not result.lrs:
        raise CnnlabError("the range test got no training batch (no image could be decoded)")
    result.suggestion = suggest(result.lrs, result.smoothed, len(run.splits.classes))
    if never_rose(result.lrs, result.smoothed, len(run.splits.classes)):
        result.warning = (f"the loss never rose up to lr {result.lrs[-1]:.1e}: the test found no rate that breaks "
                          f"training ({len(run.splits.train)} training images), so the suggestion is only the "
                          f"largest rate tried / 10; keep the default --lr {TrainConfig().lr:g} unless the "
                          "plot says otherwise")
        progress.note(result.warning, warning=True)
    result.files = [str(_write_csv(result, out)), str(_plot(result, out))]
    return result


def _write_csv(result: LRFinderResult, out: Path) -> Path:
    path = out / "lr_find.csv"
    with atomic_open(path) as fh:
        fh.write("lr,loss,smoothed_loss\n")
        fh.writelines(f"{lr:.6g},{a:.6g},{b:.6g}\n" for lr, a, b in zip(result.lrs, result.losses, result.smoothed))
    return path


def _plot(result: LRFinderResult, out: Path) -> Path:
    """Loss against the learning rate (log axis), the suggestion marked; matplotlib's Agg canvas."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cnnlab.outputs import atomic_write

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="lightgrey", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed loss")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="green", linestyle="--", linewidth=1,
                   label=f"suggested --lr {result.suggestion:.1e}")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), DIVERGED * min(finite)) * 1.1 + 1e-3)
    ax.set_xscale("log")
    ax.set_xlabel(f"--lr ({result.phase} phase)")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write(out / "lr_find.png", buffer.getvalue())
