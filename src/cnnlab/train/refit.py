"""The final head: a logistic regression refitted on every labelled image, training and validation.

The run holds a fifth of the training images out to choose the best epoch and the mix with the probe. Once
those are chosen, the validation images have done that job; on a few dozen images per class a fifth more
data is worth several points held out (``benchmarks/bench_train.py``: the probe fitted on every labelled
photo against the run's head fitted on four fifths). So the run ends by refitting the head on the chosen
network's features of the training *and* validation images, with the probe's objective
(:func:`~cnnlab.train.probe.fit_logistic`); the backbone stays as chosen.

The validation figures of the refitted model come from cross-validation: the validation images are dealt
into :data:`REFIT_FOLDS` folds and each fold is scored by a head fitted on the training images and the other
folds, so no image is scored by a head that saw it. Those out-of-fold logits are what ``metrics.json``
reports for ``val`` and what the "none of these" threshold is calibrated on (:mod:`cnnlab.train.unknown`).
A head that is not a linear layer (SqueezeNet's 1x1 convolution followed by ReLU) is not refitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeGuard

import numpy as np
import torch
from torch import nn

from cnnlab.imagedata.datasets import LabelledImages, SkippedFile
from cnnlab.models.load import LoadedModel
from cnnlab.progress import Progress
from cnnlab.runtime.features import FeatureStore
from cnnlab.train.probe import PROBE_MAX_IMAGES, Features, fit_features, frozen_features, probe_sample

#: Folds of the validation images for the refitted head's out-of-fold validation figures.
REFIT_FOLDS = 5


@dataclass
class Refit:
    """The refitted head and the out-of-fold validation logits (rows: the validation images that decoded)."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor | None  # (C,)
    val_logits: torch.Tensor
    val_targets: torch.Tensor
    #: Images the final head was fitted on (training and validation).
    images: int
    folds: int
    #: Undecodable training and validation files, and those of them in the validation split.
    skipped: list[SkippedFile] = field(default_factory=list)
    val_skipped: list[SkippedFile] = field(default_factory=list)


def can_refit(head: nn.Module) -> TypeGuard[nn.Linear]:
    """Whether ``head`` is a linear layer, which the logistic regression sets exactly."""
    return isinstance(head, nn.Linear)


def fold_of(targets: torch.Tensor, folds: int, seed: int) -> np.ndarray:
    """The fold of each row: each class dealt in turn over the folds, in an order drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(targets), dtype=np.int64)
    start = 0
    labels = targets.numpy()
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold[members] = (start + np.arange(len(members))) % folds
        start += len(members)  # the next class starts where this one stopped: folds stay about equal
    return fold


def refit_head(
    model: LoadedModel,
    head: nn.Module,
    train: LabelledImages,
    val: LabelledImages,
    *,
    batch_size: int,
    workers: int,
    balance: bool,
    seed: int,
    progress: Progress,
    known: FeatureStore | None = None,
) -> Refit:
    """Fit ``head``'s logistic regression on ``model``'s features of ``train`` and ``val``; return it (``head`` is
    not changed) with the validation images' out-of-fold logits. ``known``: see
    :func:`~cnnlab.train.probe.frozen_features`."""
    positions = probe_sample(train, max(PROBE_MAX_IMAGES - len(val), len(train.classes)), seed)
    train_part = train.subset(positions) if len(positions) < len(train) else train
    train_f = frozen_features(model, train_part, batch_size=batch_size, workers=workers, progress=progress,
                              description="refit: features of the training images", task="refit", known=known)
    val_f = frozen_features(model, val, batch_size=batch_size, workers=workers, progress=progress,
                            description="refit: features of the validation images", task="refit", known=known)
    folds = max(1, min(REFIT_FOLDS, len(val_f.y)))
    progress.start("refit", "refit: the head, and its validation figures out of fold", total=folds + 1)
    val_logits, weight, bias = cross_fit(train_f, val_f, len(train.classes), folds=folds, seed=seed, balance=balance,
                                         bias=head.bias is not None,
                                         step=lambda: progress.update("refit", advance=1))
    progress.finish("refit")
    return Refit(weight, bias, val_logits, val_f.y.clone(), len(train_f.y) + len(val_f.y), folds,
                 train_f.skipped + val_f.skipped, val_f.skipped)


def cross_fit(
    train: Features, val: Features, num_classes: int, *, folds: int, seed: int, balance: bool, bias: bool,
    step: Callable[[], None] = lambda: None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(val_logits, W, b)``: each validation row scored by a regression fitted on ``train`` and the other folds of
    ``val`` (out of fold), and the regression fitted on all of ``train`` and ``val``. ``step`` is called after
    each fit."""
    fold = torch.from_numpy(fold_of(val.y, folds, seed))
    val_logits = torch.empty(len(val.y), num_classes)
    for k in range(folds):
        held = fold == k
        part = Features(torch.cat([train.x, val.x[~held]]), torch.cat([train.y, val.y[~held]]))
        w, b = fit_features(part, num_classes, balance=balance, bias=bias)
        val_logits[held] = val.x[held] @ w.T + (b if b is not None else 0.0)
        step()
    every = Features(torch.cat([train.x, val.x]), torch.cat([train.y, val.y]))
    weight, intercept = fit_features(every, num_classes, balance=balance, bias=bias)
    step()
    return val_logits, weight, intercept
