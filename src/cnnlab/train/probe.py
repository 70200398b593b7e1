"""The linear probe: a logistic regression on frozen features that initialises (or is) the new head.

A new head starts from random weights in fastai's recipe and needs a head-only epoch before the
backbone may move. On a few dozen images per class a plain logistic regression on the frozen
penultimate features does better than that epoch (``DESIGN.md``: 1.00 held-out on 3 classes of
real photos), costs one forward pass over the training images, and is deterministic. So the run
starts by fitting it and writing it into the head:

1. the features that the head receives, computed once per training image with the evaluation
   preprocessing (:func:`cnnlab.runtime.inference.run_inference` with ``features=True``);
2. a multinomial logistic regression fitted by L-BFGS (:class:`torch.optim.LBFGS`) with
   scikit-learn's default objective: ``0.5 * ||W||^2 + C * sum(cross-entropy)``, ``C = 1``, the
   bias not penalised; with ``balance`` each class weighs the same in the sum;
3. ``W`` and ``b`` copied into the head (exact for a linear head; for SqueezeNet's 1x1
   convolution followed by ReLU and pooling, a starting point).

At most :data:`PROBE_MAX_IMAGES` training images take part (a class-stratified sample), so that
memory stays flat on large sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cnnlab.errors import DatasetError
from cnnlab.imagedata.datasets import LabelledImages, SkippedFile
from cnnlab.models.load import LoadedModel
from cnnlab.progress import Progress
from cnnlab.runtime.allocator import glibc_defaults
from cnnlab.runtime.features import FeatureStore
from cnnlab.runtime.inference import run_inference

#: Training images the probe is fitted on at most (features: 20k x 1280 float32 = 100 MB).
PROBE_MAX_IMAGES = 20_000
#: Inverse regularisation strength (scikit-learn's ``LogisticRegression`` default).
PROBE_C = 1.0
PROBE_MAX_ITER = 200


@dataclass
class ProbeFit:
    """A fitted multinomial logistic regression and how it does on its own training features."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor | None  # (C,)
    loss: float
    accuracy: float
    images: int
    skipped: list[SkippedFile] = field(default_factory=list)


def fit_logistic(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    *,
    c: float = PROBE_C,
    sample_weight: torch.Tensor | None = None,
    bias: bool = True,
    max_iter: int = PROBE_MAX_ITER,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Minimise ``0.5 * ||W||^2 + c * sum_i w_i * CE(x_i W^T + b, y_i)`` by L-BFGS; return ``(W, b)``.

    The objective is divided by ``c * sum(w)`` (same minimum, better scaled), float64, from zeros:
    deterministic on the CPU.
    """
    x = features.detach().to(torch.float64)
    y = targets.to(torch.long)
    w = torch.ones(len(y), dtype=torch.float64) if sample_weight is None else sample_weight.to(torch.float64)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    params = [weight]
    intercept = torch.zeros(num_classes, dtype=torch.float64, requires_grad=bias)
    if bias:
        params.append(intercept)
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")
    total = float(w.sum())

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        ce = nn.functional.cross_entropy(x @ weight.T + intercept, y, reduction="none")
        objective = (w * ce).sum() / total + 0.5 * weight.pow(2).sum() / (c * total)
        objective.backward()
        return objective

    with glibc_defaults():  # large arrays of changing sizes: mmap'd and given back, not held in the heap
        optimizer.step(closure)
    return weight.detach().float(), intercept.detach().float() if bias else None


def probe_sample(images: LabelledImages, limit: int, seed: int) -> list[int]:
    """Positions of at most ``limit`` images, the same share of every class (all when there are fewer)."""
    if len(images) <= limit:
        return list(range(len(images)))
    rng = np.random.default_rng(seed)
    targets = np.asarray(images.targets)
    chosen: list[int] = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        keep = max(1, round(len(members) * limit / len(images)))
        chosen.extend(rng.choice(members, size=min(keep, len(members)), replace=False).tolist())
    return sorted(chosen)


@dataclass
class Features:
    """Penultimate features of labelled images: row ``i`` of ``x`` belongs to class ``y[i]``."""

    x: torch.Tensor  # (N, D)
    y: torch.Tensor  # (N,)
    skipped: list[SkippedFile] = field(default_factory=list)


def frozen_features(
    model: LoadedModel, images: LabelledImages, *, batch_size: int, workers: int, progress: Progress,
    description: str, task: str = "probe", known: FeatureStore | None = None,
) -> Features:
    """``model``'s penultimate features of ``images`` with the evaluation preprocessing (the model goes into eval
    mode); undecodable files are skipped and listed. Raises :class:`DatasetError` when none decodes.

    ``known``: features of this very network (its pretrained weights and preprocessing) computed earlier in the
    run; only the files it lacks are run through ``model``.
    """
    model.module.eval()
    rows: dict[int, torch.Tensor] = {}
    missing: list[int] = []
    for i, path in enumerate(images.paths):
        row = known.get(path) if known is not None else None
        if row is None:
            missing.append(i)
        else:
            rows[i] = torch.from_numpy(row)
    skipped: list[SkippedFile] = []
    if missing:
        labels = [images.classes[images.targets[i]] for i in missing]
        for batch in run_inference(model, [images.paths[i] for i in missing], batch_size=batch_size, workers=workers,
                                   labels=labels, progress=progress, task=task, description=description,
                                   features=True):
            skipped.extend(batch.skipped)
            if batch.features is None:  # every file of the batch failed
                continue
            for row_index, i in enumerate(batch.indices):
                rows[missing[i]] = batch.features[row_index]
    if not rows:
        raise DatasetError(f"no image could be decoded for the {description}")
    found = sorted(rows)
    y = torch.tensor([images.targets[i] for i in found], dtype=torch.long)
    return Features(torch.stack([rows[i] for i in found]).float(), y, skipped)


def fit_features(features: Features, num_classes: int, *, balance: bool, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logistic regression on ``features`` (each class weighing the same with ``balance``): ``(W, b)``."""
    y = features.y
    sample_weight = None
    if balance:
        counts = torch.bincount(y, minlength=num_classes).double()
        sample_weight = (len(y) / (num_classes * counts.clamp(min=1)))[y]
    return fit_logistic(features.x, y, num_classes, sample_weight=sample_weight, bias=bias)


def fit_probe(
    model: LoadedModel,
    head: nn.Module,
    images: LabelledImages,
    *,
    batch_size: int,
    workers: int,
    balance: bool,
    seed: int,
    progress: Progress,
    known: FeatureStore | None = None,
) -> ProbeFit:
    """Fit the probe on ``model``'s frozen features of ``images`` (the model goes into eval mode; ``known``: see
    :func:`frozen_features`)."""
    positions = probe_sample(images, PROBE_MAX_IMAGES, seed)
    subset = images.subset(positions) if len(positions) < len(images) else images
    if len(positions) < len(images):
        progress.note(f"probe: fitted on a class-stratified sample of {len(subset):,} of {len(images):,} images")
    try:
        feats = frozen_features(model, subset, batch_size=batch_size, workers=workers, progress=progress,
                                description="probe: frozen features", known=known)
    except DatasetError:
        raise DatasetError("no training image could be decoded for the probe") from None
    num_classes = len(images.classes)
    has_bias = getattr(head, "bias", None) is not None
    weight, bias = fit_features(feats, num_classes, balance=balance, bias=has_bias)
    logits = feats.x @ weight.T + (bias if bias is not None else 0.0)
    loss = float(nn.functional.cross_entropy(logits, feats.y))
    accuracy = float((logits.argmax(1) == feats.y).float().mean())
    return ProbeFit(weight, bias, loss, accuracy, len(feats.y), feats.skipped)


@torch.no_grad()
def set_head(head: nn.Module, fit: ProbeFit) -> None:
    """Copy the probe's weights into ``head`` (an ``nn.Linear`` or a 1x1 ``nn.Conv2d``)."""
    weight = head.weight
    assert isinstance(weight, torch.Tensor)
    weight.copy_(fit.weight.view_as(weight).to(weight))
    if fit.bias is not None and isinstance(head.bias, torch.Tensor):
        head.bias.copy_(fit.bias.to(head.bias))
