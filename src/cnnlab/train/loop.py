"""One training step, one training epoch and one evaluation pass (torchvision references'
``train_one_epoch``/``evaluate``).

:func:`training_step` is the one step both the epochs and the learning-rate finder
(:mod:`cnnlab.train.lr_find`) take, so the range test measures the training that follows it.

Both go through :class:`cnnlab.models.load.LoadedModel` wrapping the network being trained: it moves
the ``uint8`` batch to the device, normalises it with the weights' numbers, runs under autocast
and returns float32 logits (the first output of GoogLeNet/Inception in training mode).
Evaluation is :func:`cnnlab.runtime.inference.run_inference`, the loop that ``predict`` and ``bench`` use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from cnnlab.errors import CnnlabError, DatasetError
from cnnlab.imagedata.datasets import LabelledImages, SkippedFile
from cnnlab.metrics import confusion_matrix, per_class_report, summarize
from cnnlab.models.load import LoadedModel
from cnnlab.progress import Progress
from cnnlab.runtime.allocator import return_free_pages
from cnnlab.runtime.inference import Batch, run_inference
from cnnlab.train.augment import BatchMix
from cnnlab.train.optim import batchnorm_trains, group_lr


@dataclass
class EpochStats:
    """Running figures of one training epoch (over its augmented batches, in training mode)."""

    loss: float
    accuracy: float
    images: int
    #: Learning rates of the head and the backbone at the epoch's last step (0: not training).
    lr: float
    backbone_lr: float
    skipped: list[SkippedFile] = field(default_factory=list)


@dataclass
class Step:
    """What one :func:`training_step` did."""

    #: The batch's mean loss (detached).
    loss: torch.Tensor
    #: The logits (detached) and each image's label on the device (of a mixed image, its larger share).
    output: torch.Tensor
    truth: torch.Tensor
    #: Whether the optimiser stepped: not after a loss that is not finite (nothing is computed backwards),
    #: nor when fp16's scaler skipped a step whose gradients overflowed.
    applied: bool

    @property
    def finite(self) -> bool:
        return bool(torch.isfinite(self.loss))


def training_step(
    model: LoadedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    mix: BatchMix | None = None,
) -> Step:
    """Forward, loss, backward and optimiser step on one ``uint8`` batch and its ``labels`` (on the CPU), in the
    layer modes already set; ``mix`` (MixUp/CutMix) mixes the batch and its labels first. A loss that is not
    finite is returned without a step: the caller decides (an epoch stops with an error, the range test ends).
    Then the C allocator may give free heap pages back (:func:`~cnnlab.runtime.allocator.return_free_pages`)."""
    x, soft = mix(images, labels) if mix is not None else (images, None)
    y = labels.to(model.device, non_blocking=True)
    output = model(x)
    loss = criterion(output, y if soft is None else soft.to(model.device))
    truth = y if soft is None else soft.argmax(1).to(y.device)
    applied = bool(torch.isfinite(loss))
    if applied:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scale = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)
        scaler.update()
        applied = scale is None or scaler.get_scale() >= scale  # a lower scale means fp16 skipped the step
    return_free_pages()
    return Step(loss.detach(), output.detach(), truth, applied)


def train_one_epoch(
    model: LoadedModel,
    loader: DataLoader[Batch],
    images: LabelledImages,
    *,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    progress: Progress,
    task: str = "epoch",
    mix: BatchMix | None = None,
    ema: AveragedModel | None = None,
) -> EpochStats:
    """Train ``model`` (in the layer modes already set) on one pass of ``loader`` over ``images``
    (``epoch`` names the epoch in error messages).

    The scheduler steps after every optimiser step (not after one that fp16's scaler skipped),
    and so does ``ema`` (the moving average of the weights). ``mix`` (MixUp/CutMix) mixes each
    batch and its labels; the running accuracy then counts the larger share of each label.
    Files that cannot be decoded are skipped and returned; a batch they leave with a single image is
    not trained on while BatchNorm layers train (they cannot normalise one image; that image is in
    other batches in other epochs). Progress: ``update(task, advance=1)``
    per batch with the running loss and accuracy. Raises :class:`CnnlabError` when the loss stops
    being finite, :class:`DatasetError` when no image could be decoded.
    """
    targets = torch.tensor(images.targets, dtype=torch.long)
    loss_sum, correct, seen = 0.0, 0, 0
    lrs = (group_lr(optimizer, "head"), group_lr(optimizer, "backbone"))
    skipped: list[SkippedFile] = []
    bn_trains = batchnorm_trains(model.module)
    for batch in loader:
        skipped.extend(SkippedFile(str(images.paths[i]), reason, detail, images.classes[images.targets[i]])
                       for i, reason, detail in batch.failed)
        if batch.images is None or (bn_trains and len(batch.indices) == 1):
            progress.update(task, advance=1)
            continue
        step = training_step(model, batch.images, targets[batch.indices], optimizer=optimizer, scaler=scaler,
                             criterion=criterion, mix=mix)
        if not step.finite:
            raise CnnlabError(f"the training loss became {step.loss.item()} in epoch {epoch}; lower the learning "
                              "rate (or use fp32)")
        lrs = (group_lr(optimizer, "head"), group_lr(optimizer, "backbone"))
        if step.applied:
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model.module)
        loss_sum += step.loss.item() * len(step.truth)
        correct += int((step.output.argmax(1) == step.truth).sum())
        seen += len(step.truth)
        progress.update(task, advance=1, info=f"loss {loss_sum / seen:.3f} acc {correct / seen:.0%}")
    if seen == 0:
        raise DatasetError(f"no training image of epoch {epoch} could be decoded")
    return EpochStats(loss_sum / seen, correct / seen, seen, lrs[0], lrs[1], skipped)


@dataclass
class Predictions:
    """Logits of a labelled split: rows for the files that decoded, in file order."""

    logits: torch.Tensor  # (N, C) float32 on the CPU
    targets: torch.Tensor  # (N,)
    skipped: list[SkippedFile]

    @property
    def loss(self) -> float:
        """Mean cross-entropy (nan without images)."""
        if not len(self.targets):
            return math.nan
        return float(nn.functional.cross_entropy(self.logits, self.targets))

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy (nan without images)."""
        if not len(self.targets):
            return math.nan
        return float((self.logits.argmax(1) == self.targets).float().mean())


def evaluate(
    model: LoadedModel,
    images: LabelledImages,
    *,
    batch_size: int,
    workers: int,
    progress: Progress,
    description: str,
) -> Predictions:
    """``model`` (put in eval mode) over ``images`` with the evaluation preprocessing."""
    model.module.eval()
    labels: Sequence[str] = [images.classes[t] for t in images.targets]
    logits: list[torch.Tensor] = []
    found: list[int] = []
    skipped: list[SkippedFile] = []
    for batch in run_inference(model, images.paths, batch_size=batch_size, workers=workers, labels=labels,
                               progress=progress, task="eval", description=description):
        logits.append(batch.logits)
        found.extend(batch.indices)
        skipped.extend(batch.skipped)
    all_logits = torch.cat(logits) if found else torch.zeros(0, len(images.classes))
    targets = torch.tensor([images.targets[i] for i in found], dtype=torch.long)
    return Predictions(all_logits, targets, skipped)


def evaluation_report(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """The bench metrics of a classifier over ``classes``: top-1 (and top-5 with more than 5
    classes) with Wilson intervals, calibration, loss, per-class scores and the confusion matrix."""
    num_classes = len(classes)
    probs = logits.float().softmax(dim=1)
    k = min(5, num_classes)
    top_prob, top_idx = probs.topk(k, dim=1) if len(probs) else (torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long))
    y = targets.numpy()
    accepted = [{c} for c in range(num_classes)]
    ks = (1, 5) if num_classes > 5 else (1,)
    summary = summarize(top_idx.numpy(), top_prob.double().numpy(), y, accepted, ks=ks)
    pred = top_idx[:, 0].numpy() if len(top_idx) else np.zeros(0, dtype=np.intp)
    matrix = confusion_matrix(y, pred, num_classes)[:, :num_classes]
    report = summary.to_dict()
    report["loss"] = float(nn.functional.cross_entropy(logits, targets)) if len(targets) else None
    report["per_class"] = [m.to_dict() for m in per_class_report(y, pred, list(classes))]
    report["confusion_matrix"] = {"classes": list(classes), "matrix": matrix.tolist()}
    return report
