"""The learning-rate range test (Smith 2015, fastai's ``lr_find``): :func:`find_lr`.

The run is prepared as :func:`cnnlab.train.fine_tune` would start it (data, split, model, and
the probe when the run has one), then its first SGD phase trains for ``steps`` optimiser steps
while the learning rate grows exponentially from ``start_lr`` to ``end_lr`` (torch's
:class:`~torch.optim.lr_scheduler.ExponentialLR`). The x axis is the value of ``--lr``: every
parameter group moves with it in the phase's proportions (in the full phase the head at half of
it, the backbone at ``backbone_lr_ratio`` of that). The loss is smoothed by an exponential moving
average (0.98, bias-corrected); the test stops early once the smoothed loss exceeds both 4 times
its minimum and ``ln(classes)`` (the loss of a uniform guess: diverged).

**Suggested value**: fastai's rules (``fastai.callback.schedule``), on the smoothed losses without the
first tenth of the points and the last five (fastai's trim): ``valley`` (the suggestion: the rate a
third and a half into the longest run of falling losses), shown with ``minimum`` (the rate at the
lowest loss / 10), ``steep`` (the steepest fall) and ``slide`` (where the loss's slope stops
changing, looking back from the last rate). The previous rule, a tenth of the onset of the rise,
read the noise of a flat curve as the onset and suggested ``1e-7``.

A suggestion is sound when the curve falls and rises as the rules assume. The test warns when it
does not: the loss never rose (no rate broke training, so the rules saw only half a curve), or the
valley's fall is below :data:`MIN_FALL` (a flat curve, as after a probe that already fits the
training images: ``valley``, ``minimum`` and ``steep`` then read noise). A flat curve cannot tell rates apart,
so the suggestion is then train's default ``--lr``, or a third (:data:`FLAT_DIVISOR`) of ``rise``, the rate where
the loss starts to rise (:func:`rise_onset`), when that is lower: fastai's old advice of a rate below the one that
breaks training, taken from the one part of a flat curve that is not noise. A third of the rise alone, above the
default, landed up to 20x from the best rate of a 5-point sweep on real photos (``benchmarks/bench_lr_find.py``),
while the warning said to keep the default.

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
RULE = "fastai's valley: a third and a half into the longest run of falling smoothed losses"
FLAT_RULE = ("a flat curve has no valley: train's default --lr, or a third of the rate where the loss starts to "
             "rise when that is lower (fastai's advice, a rate below the one that breaks training)")
#: The flat-curve suggestion is the rise's onset divided by this.
FLAT_DIVISOR = 3.0
#: The rise (relative, and in units of ln(classes)) that counts as breaking training (:func:`never_rose`).
RISE = (2.0, 0.05)
#: The least fall of the smoothed loss over the valley, in units of ln(classes), for a sound suggestion.
MIN_FALL = 0.05
#: Points left out before the rules look: the first tenth, and the last ones (fastai's ``lr_find``).
SKIP_END = 5


@dataclass
class LRFinderResult:
    """The range test: learning rates tried, losses, and the suggested ``--lr``."""

    phase: str
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    #: Every rule's rate: ``valley`` (the suggestion), ``minimum``, ``steep``, ``slide``; ``rise`` (the onset of the
    #: rise, :func:`rise_onset`) when the curve has one.
    rules: dict[str, float] = field(default_factory=dict)
    rule: str = RULE
    files: list[str] = field(default_factory=list)
    #: Why the suggestion should not be trusted (the loss never rose over the rates tried), else ``None``.
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "suggested_lr": self.suggestion, "rule": self.rule, "rules": self.rules,
                "files": self.files,
                "warning": self.warning,
                "points": [{"lr": lr, "loss": a, "smoothed": b}
                           for lr, a, b in zip(self.lrs, self.losses, self.smoothed)]}


def trimmed(lrs: list[float], smoothed: list[float]) -> tuple[list[float], list[float]]:
    """The points the rules look at: fastai's trim (the first tenth and the last :data:`SKIP_END`) when at least
    five points are left, and only those before the first non-finite loss."""
    start, stop = len(lrs) // 10, len(lrs) - SKIP_END
    if stop - start < 5:
        start, stop = 0, len(lrs)
    pairs = list(zip(lrs[start:stop], smoothed[start:stop]))
    finite = next((i for i, (_, v) in enumerate(pairs) if not math.isfinite(v)), len(pairs))
    pairs = pairs[:finite]
    return [a for a, _ in pairs], [b for _, b in pairs]


def valley_section(losses: list[float]) -> tuple[int, int]:
    """Start and end of the longest run of falling losses (fastai's ``valley``: a longest decreasing subsequence)."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    return max(max_start, 0), max_end


def suggest_rules(lrs: list[float], smoothed: list[float]) -> dict[str, float]:
    """fastai's four rules on a range test's points (``{}`` without any)."""
    xs, ys = trimmed(lrs, smoothed)
    if not xs:
        return {}
    start, end = valley_section(ys)
    sections = (end - start) / 3
    rules = {"valley": xs[min(len(xs) - 1, start + int(sections) + int(sections / 2))],
             "minimum": xs[min(range(len(ys)), key=ys.__getitem__)] / 10}
    if len(xs) > 1:
        slopes = [(ys[i + 1] - ys[i]) / (math.log(xs[i + 1]) - math.log(xs[i])) for i in range(len(xs) - 1)]
        rules["steep"] = xs[min(range(len(slopes)), key=slopes.__getitem__)]
        rules["slide"] = _slide(xs, ys)
    return rules


def _slide(xs: list[float], ys: list[float], lr_diff: int = 15, thresh: float = 0.005) -> float:
    """fastai's ``slide``: from the largest rate down, the first rate whose slope is within ``thresh`` of that
    ``lr_diff`` points to its right."""
    n = len(ys)
    grad = [ys[min(i + 1, n - 1)] - ys[max(i - 1, 0)] for i in range(n)]
    grad = [g / (2 if 0 < i < n - 1 else 1) for i, g in enumerate(grad)]
    r_idx, l_idx = n - 1, n - 1 - lr_diff
    local = xs[max(l_idx, 0)]
    while l_idx >= 0 and abs(grad[r_idx] - grad[l_idx]) > thresh:
        local = xs[l_idx]
        r_idx -= 1
        l_idx -= 1
    return local


def suggest(lrs: list[float], smoothed: list[float], num_classes: int) -> float | None:
    """:data:`RULE` applied to a range test (``None`` without points)."""
    return suggest_rules(lrs, smoothed).get("valley")


def rise_onset(lrs: list[float], smoothed: list[float], num_classes: int) -> float | None:
    """The first rate (after fastai's first tenth) at which the smoothed loss exceeds its lowest so far by
    ``RISE[1] * ln(classes)``: where training starts to break (``None`` if it never does).

    On a flat curve the lowest loss is noise, so fastai's ``minimum`` (and its ``valley``) point anywhere; the
    onset of the rise is where the curve still says something."""
    margin = RISE[1] * math.log(max(num_classes, 2))
    lowest = math.inf
    for i in range(len(lrs) // 10, len(lrs)):
        value = smoothed[i]
        if not math.isfinite(value) or value > lowest + margin:
            return lrs[i]
        lowest = min(lowest, value)
    return None


def valley_fall(lrs: list[float], smoothed: list[float]) -> float:
    """How much the smoothed loss falls over the valley's section (0 without points)."""
    _, ys = trimmed(lrs, smoothed)
    if not ys:
        return 0.0
    start, end = valley_section(ys)
    return ys[start] - ys[end]


def never_rose(lrs: list[float], smoothed: list[float], num_classes: int) -> bool:
    """Whether the smoothed loss of a range test never rose above :data:`RISE` times its lowest (plus
    ``RISE[1] * ln(classes)``) up to its last rate: no rate tried broke training. A loss that ended
    non-finite did rise: the last rate broke training outright."""
    if len(smoothed) < 2 or not math.isfinite(smoothed[-1]):
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
                                     progress=progress, known=run.pretrained_features))
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
    apply_rules(result, len(run.splits.classes), len(run.splits.train))
    if result.warning and config.lr != TrainConfig().lr:  # the curve does not depend on --lr: say it was read
        result.warning += f" (--lr {config.lr:g} was given: the range test does not depend on it)"
    if result.warning:
        progress.note(result.warning, warning=True)
    result.files = [str(_write_csv(result, out)), str(_plot(result, out))]
    return result


def apply_rules(result: LRFinderResult, classes: int, images: int) -> LRFinderResult:
    """Set ``result``'s rules, suggestion, rule and warning from its points (``classes`` classes, ``images``
    training images); return it."""
    result.rules = suggest_rules(result.lrs, result.smoothed)
    result.suggestion = result.rules.get("valley")
    result.rule, result.warning = RULE, None
    default_lr = TrainConfig().lr
    default = f"keep the default --lr {default_lr:g} unless the plot says otherwise"
    if never_rose(result.lrs, result.smoothed, classes):
        result.warning = (f"the loss never rose up to lr {result.lrs[-1]:.1e}: the test found no rate that breaks "
                          f"training ({images} training images), so the rules saw half a curve; " + default)
    elif valley_fall(result.lrs, result.smoothed) < MIN_FALL * math.log(classes):
        onset = rise_onset(result.lrs, result.smoothed, classes)  # the valley of a flat curve is noise
        result.rule = FLAT_RULE
        if onset is not None:
            result.rules["rise"] = onset
        if onset is not None and onset / FLAT_DIVISOR < default_lr:
            result.suggestion = onset / FLAT_DIVISOR
            advice = (f"the suggestion is a third of the rate where the loss starts to rise ({onset:.1e}): the "
                      f"default --lr {default_lr:g} is above it")
        else:
            result.suggestion = default_lr
            advice = "the suggestion is the default; " + default
        result.warning = ("the loss did not fall before it rose (a flat curve: the probe may already fit the "
                          "training images), so fastai's rules have no sound suggestion; " + advice)
    return result


def _write_csv(result: LRFinderResult, out: Path) -> Path:
    path = out / "lr_find.csv"
    with atomic_open(path) as fh:
        fh.write("lr,loss,smoothed_loss\n")
        fh.writelines(f"{lr:.6g},{a:.6g},{b:.6g}\n" for lr, a, b in zip(result.lrs, result.losses, result.smoothed))
    return path


def y_axis(values: list[float]) -> tuple[float, float, str] | None:
    """``(low, high, scale)`` of a y axis that shows every finite value: nothing is clipped, and the scale is
    logarithmic when the values span more than two decades (``None`` without a finite value)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    if low > 0 and high / low > 100:
        return low / 1.2, high * 1.2, "log"
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 0.1
    return low - pad, high + pad, "linear"


def _plot(result: LRFinderResult, out: Path) -> Path:
    """Loss against the learning rate (log axis), every rule's rate marked, the axes spanning every finite
    point; matplotlib's Agg canvas."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cnnlab.outputs import atomic_write

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="lightgrey", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed loss")
    styles = {"valley": ("green", "--"), "minimum": ("tab:purple", ":"), "steep": ("tab:orange", ":"),
              "slide": ("tab:brown", ":"), "rise": ("tab:red", "-.")}
    for name, lr in result.rules.items():
        colour, style = styles[name]
        ax.axvline(lr, color=colour, linestyle=style, linewidth=1, label=f"{name} {lr:.1e}")
    if result.suggestion is not None:  # the valley, or on a flat curve the default or a third of the rise
        ax.axvline(result.suggestion, color="black", linestyle="-", linewidth=1.5,
                   label=f"suggested --lr {result.suggestion:.1e}")
    axis = y_axis([*result.losses, *result.smoothed])
    if axis is not None:
        ax.set_yscale(axis[2])
        ax.set_ylim(axis[0], axis[1])
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
