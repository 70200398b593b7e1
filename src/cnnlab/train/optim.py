"""What trains in a phase and how fast: layer modes, parameter groups, AdamW and its schedule.

Each phase gets its own AdamW optimiser over the parameters that train in it, in groups by part
(``head``/``backbone``) and by weight decay (none for biases and normalisation parameters), and its
own per-step schedule from :mod:`torch.optim.lr_scheduler`:

* ``onecycle``: :class:`~torch.optim.lr_scheduler.OneCycleLR`, warm-up over the first ``warmup``
  of the phase from lr/25 (cosine), then cosine down to lr/25e4, with beta1 cycled 0.95-0.85-0.95
  (fastai's ``fit_one_cycle``);
* ``cosine``: :class:`~torch.optim.lr_scheduler.CosineAnnealingLR` from lr to 0.

Early layers (``frozen_stride``, :func:`early_layers`): the layers that run before the feature
maps first get coarser than 1/``frozen_stride`` of the input (with 4: the stem and the first
stage) keep their weights in every phase and stay in eval mode; no gradient is computed for them,
so the backward pass stops before the costliest, highest-resolution layers (a training step of
efficientnet_lite0 at 224 px on the CPU takes about half the time). This is what torchvision's
detection backbones (``trainable_backbone_layers=3``) and Detectron2 (``FREEZE_AT=2``) do: the
first layers' generic edge and colour filters need no fitting to a few hundred images.

BatchNorm policies (``bn``, resolved from ``auto``):

* ``frozen``: the backbone's BatchNorm layers keep their pretrained running statistics (they stay
  in eval mode) in both phases; their scale and shift train in the full phase like any backbone
  weight. In the head phase the whole backbone runs in eval mode: a fixed feature extractor.
* ``train``: BatchNorm layers are in training mode and their parameters train in both phases,
  also while the rest of the backbone is frozen (fastai's ``train_bn=True``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR

from cnnlab.options import BNPolicy, Schedule
from cnnlab.train.config import TrainConfig

#: One-cycle: the start is peak/25, the end peak/(25 * 1e4) (fastai's defaults).
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
#: beta1 of AdamW at the start/end of a one-cycle phase and at its peak learning rate.
MOMENTUM = (0.95, 0.85)
BETA2 = 0.99


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm layer (any dimension)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def batchnorm_trains(model: nn.Module) -> bool:
    """Whether a BatchNorm layer of ``model`` is in training mode (it cannot normalise a batch of one image)."""
    return any(is_batchnorm(m) and m.training for m in model.modules())


@contextlib.contextmanager
def kept_layer_modes(model: nn.Module) -> Iterator[None]:
    """Restore the train/eval mode of every layer of ``model`` on leaving, whatever happened inside."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.train(mode)


def early_layers(model: nn.Module, image_size: int, stride: int, head: nn.Module | None = None) -> list[nn.Module]:
    """The layers with parameters that run before the feature maps first get coarser than
    1/``stride`` of the input, in the order they run, each followed by its sublayers (none when
    ``stride`` is 1 or less).

    Found by one forward pass of a ``(1, 3, image_size, image_size)`` input in eval mode, without
    gradients. A layer whose output is a 4-d map with a side ``h > 1`` and a stride
    ``round(image_size / h)`` above ``stride`` ends the early layers; other outputs (vectors, the
    1x1 maps of squeeze-excitation) neither end them nor start them. The block or stage that holds
    the ending layer (its outermost module that is an element of a ``Sequential`` or ``ModuleList``)
    is not early: it trains whole. When the maps never get coarser than 1/``stride``, every layer
    that ran is early except ``head`` (default: the last layer to run) and the modules holding it.
    An early layer's sublayers are early too, also those it does not call (torchvision's Swin
    attention hands ``qkv.weight`` to a function): the layer is frozen and in eval mode as a whole.
    The layers' train/eval modes are restored.
    """
    if stride <= 1:
        return []
    ran: list[nn.Module] = []
    ending: list[nn.Module] = []

    def hook(module: nn.Module, _args: object, output: object) -> None:
        if ending:
            return
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2] > 1 \
                and round(image_size / output.shape[-2]) > stride:
            ending.append(module)
        else:
            ran.append(module)

    owners = [m for m in model.modules() if _owns_parameters(m)]
    handles = [m.register_forward_hook(hook) for m in owners]
    device = next(model.parameters()).device
    try:
        with kept_layer_modes(model), torch.no_grad():
            model.eval()
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
    names = {m: name for name, m in model.named_modules()}
    if ending:
        block = _outermost_element(model, names[ending[0]])
        early = [m for m in dict.fromkeys(ran) if block is None or not names[m].startswith(block + ".")]
    else:  # the maps never get coarser than 1/stride: every layer before the classifier
        last = head if head is not None else next((m for m in reversed(ran) if m is not model), None)
        if last is None or last not in names:
            return []
        head_name = names[last]
        early = [m for m in dict.fromkeys(ran)
                 if names[m] and head_name != names[m] and not head_name.startswith(names[m] + ".")]
    return list(dict.fromkeys(s for m in early for s in m.modules() if _owns_parameters(s)))


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _outermost_element(model: nn.Module, name: str) -> str | None:
    """The name of the outermost module above ``name`` that is an element of a ``Sequential`` or ``ModuleList``."""
    parts = name.split(".")
    for k in range(1, len(parts)):
        parent = model.get_submodule(".".join(parts[:k - 1]))
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            return ".".join(parts[:k])
    return None


def set_phase_modes(model: nn.Module, head: nn.Module, phase: str, bn: BNPolicy,
                    frozen: Sequence[nn.Module] = ()) -> None:
    """Train/eval mode of every layer for ``phase`` under BatchNorm policy ``bn``, with the
    ``frozen`` early layers in eval mode (see the module doc)."""
    if phase == "head" and bn is BNPolicy.FROZEN:
        model.eval()  # the frozen backbone is a fixed feature extractor
        head.train()
        return
    model.train()
    if bn is BNPolicy.FROZEN:
        for m in model.modules():
            if is_batchnorm(m):
                m.eval()
    for m in frozen:
        m.eval()


def make_optimizer(
    model: nn.Module, head: nn.Module, phase: str, config: TrainConfig, bn: BNPolicy,
    frozen: Sequence[nn.Module] = (),
) -> torch.optim.AdamW:
    """AdamW over the parameters that train in ``phase`` (the others, and those of the ``frozen``
    early layers, get ``requires_grad=False``).

    Groups are tagged with ``part`` (``head`` or ``backbone``), head first. In the head phase
    every group peaks at ``lr``; in the full phase the head at ``lr / 2`` and the backbone at
    ``lr / 2 * backbone_lr_ratio``, so the pretrained features move slowly.
    """
    head_ids = {id(p) for p in head.parameters()}
    bn_ids = {id(p) for m in model.modules() if is_batchnorm(m) for p in m.parameters(recurse=False)}
    frozen_ids = {id(p) for m in frozen for p in m.parameters(recurse=False)} - head_ids
    if phase == "head":
        lrs = {"head": config.lr, "backbone": config.lr}
    else:
        lrs = {"head": config.lr / 2, "backbone": config.lr / 2 * config.backbone_lr_ratio}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        is_head = id(p) in head_ids
        trainable = is_head or (id(p) not in frozen_ids and (
            phase == "full" or (bn is BNPolicy.TRAIN and id(p) in bn_ids)))
        p.requires_grad_(trainable)
        if trainable:
            decay = p.ndim > 1 and id(p) not in bn_ids
            groups.setdefault(("head" if is_head else "backbone", decay), []).append(p)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][0] != "head", not kv[0][1]))
    param_groups = [
        {"params": params, "lr": lrs[part], "part": part, "weight_decay": config.weight_decay if decay else 0.0}
        for (part, decay), params in ordered
    ]
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=(MOMENTUM[0], BETA2))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> LRScheduler:
    """The per-step schedule of one phase of ``total_steps`` optimiser steps, peaking at each group's lr.

    The one-cycle peak comes after ``round(warmup * total_steps)`` steps, at least one, so that
    even a phase of three steps warms up and then decays. (``OneCycleLR`` peaks at step
    ``pct_start * total_steps - 1`` and divides by zero when a part of the cycle has no steps,
    so it is built for at least three steps; a shorter phase takes the first ones.)
    """
    if config.schedule is Schedule.COSINE:
        return CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=0.0)
    steps = max(total_steps, 3)
    peak = min(max(1, round(config.warmup * steps)), steps - 2)
    return OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=steps,
        pct_start=(peak + 1) / steps,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=MOMENTUM[1],
        max_momentum=MOMENTUM[0],
        div_factor=ONECYCLE_DIV,
        final_div_factor=ONECYCLE_FINAL_DIV,
    )


def group_lr(optimizer: torch.optim.Optimizer, part: str) -> float:
    """The current learning rate of ``part`` (``head``/``backbone``); 0 when it does not train."""
    return float(next((g["lr"] for g in optimizer.param_groups if g["part"] == part), 0.0))
