"""What defines a training run: :class:`TrainConfig` and the phases it asks for.

Light to import (no torch): the CLI reads its defaults from here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from cnnlab.errors import UsageError
from cnnlab.imagedata.hashes import DEFAULT_NEAR_DUP_THRESHOLD
from cnnlab.imagedata.preprocess import MAX_INPUT_SIZE
from cnnlab.options import (
    Augment,
    BNPolicy,
    ModelSource,
    Precision,
    Schedule,
    WeightsPolicy,
    parse_choice,
    parse_device,
)


def _augment(value: Any) -> Augment:
    if isinstance(value, bool):  # stored by cnnlab before the presets
        return Augment.LIGHT if value else Augment.NONE
    return parse_choice(Augment, value, "augmentation preset (augment)")


#: How each typed field of :class:`TrainConfig` is parsed when it is set.
_PARSERS: dict[str, Any] = {
    "schedule": lambda v: parse_choice(Schedule, v, "schedule"),
    "bn": lambda v: parse_choice(BNPolicy, v, "BatchNorm policy (bn)"),
    "precision": lambda v: parse_choice(Precision, v, "precision"),
    "augment": _augment,
    "device": parse_device,
    "crop_scale": lambda v: (float(v[0]), float(v[1])),
}

#: Smallest batch the run lowers ``batch_size`` to so that a phase gets ``min_phase_steps`` steps.
MIN_BATCH = 8


@dataclass
class TrainConfig:
    """Everything that defines a training run (plain data: it is stored in the checkpoints).

    ``schedule``, ``bn``, ``precision`` and ``augment`` accept the enum or its string value and hold the enum
    from then on; ``device`` is checked the same way. Each is parsed once, when it is set (at construction or by
    an assignment), so the code of the run reads typed values and never parses a string again; a typo is a
    :class:`~cnnlab.errors.UsageError` right there.
    """

    #: A class-folder tree (``DIR/<class>/*.jpg``), a CSV/JSONL manifest, or a folder with the
    #: ``split.csv`` of ``cnnlab split``.
    data: str | None = None
    out: str = "runs/train"
    #: Registry name of the starting model.
    model: str = "efficientnet_lite0"
    #: Epochs of the full phase (the whole network).
    epochs: int = 3
    #: Head-only epochs (backbone frozen, augmented images) between the probe and the full phase.
    freeze_epochs: int = 0
    #: Linear probe only: fit the head on frozen features (seconds) and stop; no SGD epochs.
    freeze: bool = False
    #: Initialise the new head by a logistic-regression fit on frozen features (:mod:`~cnnlab.train.probe`).
    probe: bool = True
    #: End by refitting the chosen network's head on the training and validation images (:mod:`~cnnlab.train.refit`).
    refit: bool = True
    #: Largest batch; a small training set gets smaller batches so that each phase has
    #: ``min_phase_steps`` optimiser steps (never below 8 images), all batches about equal.
    batch_size: int = 32
    #: Optimiser steps each phase should have at least (``batch_size`` is lowered towards it).
    min_phase_steps: int = 24
    #: Peak learning rate of the head (AdamW); the full phase uses half of it.
    lr: float = 2e-3
    #: Backbone learning rate in the full phase, relative to the head's.
    backbone_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    schedule: Schedule = Schedule.ONECYCLE
    #: Fraction of each phase spent warming up (``onecycle``).
    warmup: float = 0.25
    #: Stop a phase after this many epochs without a better epoch (validation accuracy, then loss; ``None``: never).
    patience: int | None = 3
    label_smoothing: float = 0.0
    #: Fractions of each class held out when the data has no split of its own.
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    #: Images whose perceptual hashes differ in at most this many bits land in one split
    #: (:func:`cnnlab.imagedata.splits.make_split`; ``-1``: no grouping).
    near_dup_threshold: int = DEFAULT_NEAR_DUP_THRESHOLD
    #: With the near-duplicate grouping, also keep crops and rescales of one photo in one split (the offline
    #: model's features, verified on pixels: :func:`cnnlab.imagedata.near_duplicates.crop_pairs`).
    crops: bool = True
    #: The image and label columns of a Hugging Face dataset or Parquet file (``None``: found from its features).
    image_column: str | None = None
    label_column: str | None = None
    seed: int = 0
    device: str = "auto"
    #: ``auto``: mixed precision (bf16, else fp16) on CUDA, fp32 on the CPU.
    precision: Precision = Precision.AUTO
    #: DataLoader worker processes (``None``: :func:`cnnlab.runtime.cores.default_workers`).
    workers: int | None = None
    #: Augmentation preset: ``light`` is random resized crop + flip; ``none`` the evaluation preprocessing.
    augment: Augment = Augment.LIGHT
    crop_scale: tuple[float, float] = (0.35, 1.0)
    hflip: bool = True
    color_jitter: float = 0.0
    #: MixUp / CutMix of training batches: the Beta distribution's alpha (0: off).
    mixup: float = 0.0
    cutmix: float = 0.0
    #: Validate and keep an exponential moving average of the weights (torch's AveragedModel).
    ema: bool = False
    #: Decay of the average per step (``None``: ``1 - 10 / steps of the run``, in [0.5, 0.9998]).
    ema_decay: float | None = None
    #: Write TensorBoard event files to ``out/tensorboard`` (needs the ``tensorboard`` package).
    tensorboard: bool = False
    #: Train and evaluate at this crop size instead of the model's (stored in the checkpoint).
    image_size: int | None = None
    #: Sample every class equally often (weighted sampling with replacement).
    balance: bool = False
    bn: BNPolicy = BNPolicy.AUTO
    #: Side of the training crops relative to the evaluation crop (the model's, or ``image_size``),
    #: to a multiple of 8 px and not below 128 px (:func:`train_crop_size`): 0.8 trains on 64 % of
    #: the pixels (224 px: 176 px crops). Random resized crops enlarge objects, so a network tested on larger crops than
    #: it trained on sees them at about the scale it learned (Touvron et al. 2019, "Fixing the
    #: train-test resolution discrepancy"; timm's pretrained configurations test above their
    #: training size too). 1: train at the evaluation size. A network that cannot train on the smaller
    #: crops (a ViT built for one size, Inception v3's auxiliary head) trains at the evaluation size
    #: (:func:`cnnlab.train.start.resolve_train_size`).
    train_size_ratio: float = 0.8
    #: In SGD phases the layers that run before the feature maps first get coarser than
    #: 1/``frozen_stride`` of the input keep their weights, and the backward pass stops before them
    #: (:func:`cnnlab.train.optim.early_layers`). ``None``: 4 for pretrained weights (the stem and
    #: first stage, as torchvision's detection backbones freeze them), 1 (every layer trains) for
    #: random weights. Where the maps never get coarser than that, every layer but the head is kept.
    frozen_stride: int | None = None
    #: Start from random weights (testing, architecture work): not a pretrained fine-tune.
    random_weights: bool = False
    weights: str | None = None
    weights_dir: str | None = None
    #: Continue the run in ``out`` from its ``last.pt`` with the settings stored there (only
    #: ``device``, ``workers`` and ``data`` (a moved copy of the same images) may differ).
    resume: bool = False
    #: Replace a finished or interrupted run in ``out`` instead of refusing.
    overwrite: bool = False

    #: Settings that do not change the result, and may differ on ``resume``.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("out", "device", "workers", "resume", "overwrite")

    def __setattr__(self, name: str, value: Any) -> None:
        parse = _PARSERS.get(name)
        super().__setattr__(name, value if parse is None else parse(value))

    @property
    def model_source(self) -> ModelSource:
        """The starting model as every job names one (a registry name; a checkpoint is read by the run itself)."""
        return ModelSource(name=self.model, weights=None if self.weights is None else Path(self.weights),
                           weights_dir=None if self.weights_dir is None else Path(self.weights_dir),
                           policy=WeightsPolicy.RANDOM if self.random_weights else WeightsPolicy.PRETRAINED)

    def __post_init__(self) -> None:
        self.validate()  # a setting that cannot work is said when the config is made, before any work

    def validate(self) -> None:
        """Raise :class:`~cnnlab.errors.UsageError` (exit 2) for settings that cannot work."""
        problems = []
        infinite = [f.name for f in dataclasses.fields(self)
                    if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name))]
        if infinite:  # inf passes every comparison below, nan fails them all with a misleading message
            problems.append(f"{', '.join(infinite)} must be finite")
        if self.epochs < 0 or self.freeze_epochs < 0:
            problems.append(f"epochs and freeze_epochs must be >= 0, got {self.epochs} and {self.freeze_epochs}")
        if self.freeze and not self.probe:
            problems.append("freeze is the linear probe alone: it needs probe=True")
        if not self.freeze and not self.probe and self.epochs + self.freeze_epochs < 1:
            problems.append("nothing to train: no probe and epochs + freeze_epochs is 0")
        if self.batch_size < 1 or self.min_phase_steps < 1:
            problems.append(f"batch_size and min_phase_steps must be >= 1, got {self.batch_size}, {self.min_phase_steps}")
        if self.mixup < 0 or self.cutmix < 0:
            problems.append(f"mixup and cutmix must be >= 0 (0: off), got {self.mixup}, {self.cutmix}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            problems.append(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if not self.lr > 0 or not self.backbone_lr_ratio >= 0 or not self.weight_decay >= 0:
            problems.append("lr must be > 0, backbone_lr_ratio and weight_decay >= 0")
        if not 0 < self.warmup < 1:
            problems.append(f"warmup must be in (0, 1), got {self.warmup}")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be >= 1 (or None), got {self.patience}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            problems.append("val_fraction and test_fraction must be >= 0 and leave images to train on")
        if self.near_dup_threshold < -1:
            problems.append(f"near_dup_threshold must be >= -1, got {self.near_dup_threshold}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            problems.append(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.color_jitter < 0:
            problems.append(f"color_jitter must be >= 0, got {self.color_jitter}")
        if self.image_size is not None and not 16 <= self.image_size <= MAX_INPUT_SIZE:
            problems.append(f"image_size must be from 16 to {MAX_INPUT_SIZE}, got {self.image_size}")
        if not 0.1 <= self.train_size_ratio <= 2.0:
            problems.append(f"train_size_ratio must be from 0.1 to 2, got {self.train_size_ratio}")
        if self.frozen_stride is not None and not 1 <= self.frozen_stride <= MAX_INPUT_SIZE:
            problems.append(f"frozen_stride must be from 1 (every layer trains) to {MAX_INPUT_SIZE}, got {self.frozen_stride}")
        if self.workers is not None and self.workers < 0:
            problems.append(f"workers must be >= 0, got {self.workers}")
        if self.resume and self.overwrite:
            problems.append("resume and overwrite exclude each other")
        if problems:
            raise UsageError("invalid training settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (enums as their values, ``crop_scale`` as a list)."""
        d = {k: _plain(v) for k, v in dataclasses.asdict(self).items()}
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict`; keys this version does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


#: Training crops are not shrunk below this side (nor at all when the evaluation crop is smaller):
#: a stride-32 network's last maps would be 4x4 or less, and measured on 64 px images a 48 px crop
#: gave efficientnet_lite0 features that no longer told three plain colours apart.
MIN_SHRUNK_TRAIN_SIZE = 128


def train_crop_size(eval_size: int, ratio: float) -> int:
    """The side of the training crops: ``eval_size * ratio`` to the nearest multiple of 8 px, at most
    :data:`~cnnlab.imagedata.preprocess.MAX_INPUT_SIZE`; ``eval_size`` itself for ``ratio`` 1; a smaller crop
    is never below :data:`MIN_SHRUNK_TRAIN_SIZE` (or ``eval_size`` when that is smaller)."""
    if ratio == 1:
        return eval_size
    size = min(MAX_INPUT_SIZE, round(eval_size * ratio / 8) * 8)
    return size if ratio > 1 else max(size, min(eval_size, MIN_SHRUNK_TRAIN_SIZE))


class Phase(NamedTuple):
    """One phase of a run: ``probe`` (the head fitted on frozen features: one step, recorded as
    epoch 0), ``head`` (SGD on the head, backbone frozen) or ``full`` (the whole network)."""

    name: str
    epochs: int


def plan_phases(config: TrainConfig, *, probe: bool | None = None) -> list[Phase]:
    """The phases ``config`` asks for, in order: the probe, then head-only epochs, then the full network.

    ``probe`` overrides ``config.probe`` (a continued run that keeps its trained head skips it).
    ``freeze`` is the probe alone.
    """
    with_probe = config.probe if probe is None else probe
    phases = [Phase("probe", 1)] if with_probe or config.freeze else []
    if config.freeze:
        return phases
    return phases + [Phase(name, n) for name, n in (("head", config.freeze_epochs), ("full", config.epochs)) if n > 0]


class BatchPlan(NamedTuple):
    """How one SGD phase walks through the training images."""

    batch_size: int
    steps_per_epoch: int
    drop_last: bool

    def steps(self, epochs: int) -> int:
        return self.steps_per_epoch * epochs


def plan_batches(n_train: int, epochs: int, batch_size: int, min_steps: int) -> BatchPlan:
    """The batches of a phase of ``epochs`` epochs over ``n_train`` images.

    The batch is ``batch_size``, lowered (not below :data:`MIN_BATCH`) until the phase has
    ``min_steps`` optimiser steps, and never above ``n_train``; the images are then shared out
    into batches of about equal size, so none is dropped. Only a last batch of a single image is
    dropped (BatchNorm in training mode cannot use it): at most one image per epoch. For the same
    reason a batch holds at least two images (``batch_size`` 1 trains in pairs) when there are two.
    """
    per_epoch = -(-min_steps // max(epochs, 1))
    size = max(min(2, n_train), min(batch_size, max(MIN_BATCH, n_train // per_epoch), n_train))
    batches = -(-n_train // size)
    size = -(-n_train // batches)
    last = n_train - (batches - 1) * size
    drop_last = batches > 1 and last == 1
    return BatchPlan(size, batches - drop_last, drop_last)


@dataclass(frozen=True)
class ResolvedSettings:
    """What a run resolved its automatic settings to when it started (``bn`` auto, ``frozen_stride`` None, the
    probe of a continued run, the training crop, ``precision`` auto), stored in its checkpoints under
    :data:`KEY`. Resume continues with these rather than resolving the defaults again: a run continued from a
    checkpoint of random weights, say, does not store ``random_weights`` itself, and would resolve them as
    for pretrained weights."""

    bn: BNPolicy
    frozen_stride: int
    probe: bool
    train_size: int
    precision: Precision

    #: The checkpoint key that holds them.
    KEY: ClassVar[str] = "resolved"
    #: The settings resume takes from the run rather than from the call.
    RESUMED: ClassVar[tuple[str, ...]] = ("bn", "frozen_stride", "probe")

    def __post_init__(self) -> None:
        object.__setattr__(self, "bn", parse_choice(BNPolicy, self.bn, "BatchNorm policy (bn)"))
        object.__setattr__(self, "precision", parse_choice(Precision, self.precision, "precision"))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (enums as their values)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


#: Where checkpoints of cnnlab before :class:`ResolvedSettings` kept each of its fields: keys of ``train_args``.
LEGACY_RESOLVED_KEYS = {"bn": "bn_resolved", "frozen_stride": "frozen_stride_resolved", "probe": "probe_resolved",
                        "train_size": "train_size_resolved", "precision": "precision_resolved"}


def stored_resolved(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved settings a checkpoint stores, by :class:`ResolvedSettings` field name: its
    :data:`ResolvedSettings.KEY` entry, or in a checkpoint of an earlier cnnlab the ``*_resolved`` keys of its
    ``train_args`` (:data:`LEGACY_RESOLVED_KEYS`). Only those it has: runs older still stored some or none."""
    entry = ckpt.get(ResolvedSettings.KEY)
    if isinstance(entry, Mapping):
        return {f.name: entry[f.name] for f in dataclasses.fields(ResolvedSettings) if f.name in entry}
    args = ckpt.get("train_args")
    args = args if isinstance(args, Mapping) else {}
    return {name: args[key] for name, key in LEGACY_RESOLVED_KEYS.items() if key in args}


def resumed_config(config: TrainConfig, stored_args: dict[str, Any],
                   resolved: Mapping[str, Any] | None = None) -> tuple[TrainConfig, list[str]]:
    """The run's stored settings with this call's runtime settings, and a note on what was ignored.

    ``resolved``: what the run resolved its automatic settings to (:func:`stored_resolved`), named in the note
    instead of the stored ``auto`` / ``None``."""
    resolved = resolved or {}
    stored = TrainConfig.from_dict(stored_args)
    if "probe" not in stored_args:  # a run of a cnnlab without the probe: keep its phases
        stored.probe = False
    if "frozen_stride" not in stored_args:  # nor before frozen early layers: every layer trained
        stored.frozen_stride = 1
    if "train_size_ratio" not in stored_args:  # nor before smaller training crops
        stored.train_size_ratio = 1.0
    defaults = TrainConfig()
    ignored = []
    for f in dataclasses.fields(TrainConfig):
        given = getattr(config, f.name)
        if f.name in TrainConfig.RUNTIME_FIELDS or (f.name == "data" and given is not None):
            # the data may have moved; its fingerprint is checked against the run's
            setattr(stored, f.name, given)
            continue
        kept = _plain(getattr(stored, f.name))
        if f.name in ResolvedSettings.RESUMED and f.name in resolved:
            kept = _plain(resolved[f.name])  # what the run resolved "auto" / None to
        if given != getattr(defaults, f.name) and _plain(given) != kept:
            ignored.append(f"{f.name}={_plain(given)!r} (the run uses {kept!r})")
    stored.resume, stored.overwrite = True, False
    notes = [f"resume uses the run's stored settings; ignored {', '.join(ignored)}"] if ignored else []
    return stored, notes


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value
