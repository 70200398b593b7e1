"""Fine-tuning a zoo model on the classes of a folder: ``train(TrainConfig(...)) -> TrainResult``.

The recipe follows fastai's ``fine_tune``:

1. **head phase** (``freeze_epochs``, default 1): the ImageNet classifier is replaced by a new
   layer with one output per class (:func:`cnnlab.checkpoint.replace_head`) and only that layer
   trains, with the backbone frozen, at ``lr``.
2. **full phase** (``epochs``): the whole network trains; the head at ``lr / 2`` and the backbone
   at ``lr / 2 * backbone_lr_ratio`` (fastai: 1/100), so the pretrained features move slowly.

``freeze=True`` is a linear probe: only the head phase, for ``epochs`` epochs. Each phase has
its own AdamW optimiser and a per-step schedule (``onecycle``: warm-up over the first
``warmup`` of the phase from lr/25, cosine down to lr/25e4, with beta1 cycled 0.95-0.85-0.95;
``cosine``: cosine from lr to 0). Weight decay skips biases and normalisation parameters.

BatchNorm is handled deliberately (``bn``):

* ``frozen``: the backbone's BatchNorm layers keep their pretrained running statistics (they
  stay in eval mode) in both phases; their scale and shift train in the full phase like any
  backbone weight. In the head phase the whole backbone runs in eval mode: a fixed feature
  extractor. Small fine-tuning sets and batches give noisy batch statistics, and replacing the
  ImageNet ones with them hurts more than it helps (Keras' fine-tuning guide does the same).
* ``train``: BatchNorm layers are in training mode (statistics update) and their parameters train
  in both phases, also while the rest of the backbone is frozen (fastai's ``train_bn=True``).
* ``auto`` (default): ``frozen`` for pretrained weights, ``train`` with ``random_weights`` (random
  statistics must be learned).

Data: a class-folder tree or a manifest is split into train/val(/test) per class (stratified) with
a fixed seed; a ``split.csv`` written by ``cnnlab split`` (or a manifest with a ``split`` column) is
used as given. Training images get a random resized crop and a horizontal flip (configurable);
validation and test images get the model's evaluation preprocessing. Files that cannot be decoded
are skipped and counted. Class counts are reported; ``balance=True`` samples classes equally.

Reproducibility: every epoch re-seeds torch, numpy, ``random`` and the DataLoader generator from
``(seed, epoch)``, so an epoch depends only on the weights and optimiser state it starts from. On
the CPU two runs with the same seed give identical histories, and ``resume=True`` continues from
``last.pt`` to exactly the weights an uninterrupted run ends with. (GPU kernels are not all
deterministic: results there agree closely but not bit for bit.)

Outputs in ``out``: ``best.pt`` (lowest validation loss), ``last.pt`` (plus the optimiser state for
``--resume``), ``history.csv``, ``curves.png``, ``metrics.json`` (the best model on the test split,
or on the validation split when there is none: top-1 with its interval, per-class scores,
confusion matrix) and ``data_split.csv`` (which file went where).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from cnnlab.checkpoint import (
    HeadInfo,
    base_spec,
    build_finetuned,
    make_checkpoint,
    read_checkpoint,
    replace_head,
    save_checkpoint,
)
from cnnlab.datasets import LabelledImages, SkippedFile, _read_manifest_rows, scan_dataset
from cnnlab.inference import Batch, ImageFileDataset, default_workers, make_loader
from cnnlab.inference import collate as _collate
from cnnlab.errors import CnnlabError, DatasetError
from cnnlab.images import decode_image
from cnnlab.metrics import confusion_matrix, per_class_report, summarize
from cnnlab.models import load_model, resolve_device
from cnnlab.preprocess import Preprocessing
from cnnlab.zoo import ModelSpec

SCHEDULES = ("onecycle", "cosine")
BN_POLICIES = ("auto", "frozen", "train")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Files of a run in its output folder (removed by ``overwrite=True``).
RUN_FILES = ("best.pt", "last.pt", "history.csv", "curves.png", "metrics.json", "data_split.csv")
#: Ratio of the largest to the smallest training class above which a warning suggests ``balance``.
IMBALANCE_WARNING = 3.0
_ONECYCLE_DIV = 25.0
_ONECYCLE_FINAL_DIV = 1e4
_MOMENTUM = (0.95, 0.85)
_BETA2 = 0.99
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")

# --------------------------------------------------------------------------------------------
# configuration and results
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines a training run (all plain data: it is stored in the checkpoints)."""

    #: A class-folder tree (``DIR/<class>/*.jpg``), a CSV/JSONL manifest, or a folder with the
    #: ``split.csv`` of ``cnnlab split``.
    data: str | None = None
    out: str = "runs/train"
    #: Registry name of the starting model.
    model: str = "efficientnet_lite0"
    #: Epochs of the full phase (of the head phase with ``freeze``).
    epochs: int = 5
    #: Head-only epochs before the full phase (fastai's ``freeze_epochs``).
    freeze_epochs: int = 1
    #: Linear probe: train the head only, for ``epochs`` epochs.
    freeze: bool = False
    batch_size: int = 32
    #: Peak learning rate of the head (AdamW); the full phase uses half of it.
    lr: float = 2e-3
    #: Backbone learning rate in the full phase, relative to the head's.
    backbone_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    schedule: str = "onecycle"
    #: Fraction of each phase spent warming up (``onecycle``).
    warmup: float = 0.25
    #: Stop a phase after this many epochs without a lower validation loss (``None``: never).
    patience: int | None = 3
    label_smoothing: float = 0.0
    #: Fractions of each class held out when the data has no split of its own.
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    device: str = "auto"
    #: ``auto``: mixed precision (bf16, else fp16) on CUDA, fp32 on the CPU.
    precision: str = "auto"
    #: DataLoader worker processes (``None``: one per core but one).
    workers: int | None = None
    #: Random resized crop + flip for training images; ``False`` uses the evaluation preprocessing.
    augment: bool = True
    crop_scale: tuple[float, float] = (0.35, 1.0)
    hflip: bool = True
    color_jitter: float = 0.0
    #: Train and evaluate at this crop size instead of the model's (stored in the checkpoint).
    image_size: int | None = None
    #: Sample every class equally often (weighted sampling with replacement).
    balance: bool = False
    bn: str = "auto"
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
    RUNTIME_FIELDS = ("out", "device", "workers", "resume", "overwrite")

    def validate(self) -> None:
        """Raise :class:`CnnlabError` for settings that cannot work."""
        problems = []
        if self.epochs < (1 if self.freeze else 0):
            problems.append(f"epochs must be >= {1 if self.freeze else 0}, got {self.epochs}")
        if self.freeze_epochs < 0:
            problems.append(f"freeze_epochs must be >= 0, got {self.freeze_epochs}")
        if not self.freeze and self.epochs + self.freeze_epochs < 1:
            problems.append("nothing to train: epochs + freeze_epochs is 0")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0 or not self.backbone_lr_ratio >= 0 or not self.weight_decay >= 0:
            problems.append("lr must be > 0, backbone_lr_ratio and weight_decay >= 0")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.warmup < 1:
            problems.append(f"warmup must be in (0, 1), got {self.warmup}")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be >= 1 (or None), got {self.patience}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            problems.append("val_fraction and test_fraction must be >= 0 and leave images to train on")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            problems.append(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.color_jitter < 0:
            problems.append(f"color_jitter must be >= 0, got {self.color_jitter}")
        if self.image_size is not None and self.image_size < 16:
            problems.append(f"image_size must be >= 16, got {self.image_size}")
        if self.bn not in BN_POLICIES:
            problems.append(f"bn must be one of {', '.join(BN_POLICIES)}, got {self.bn!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workers is not None and self.workers < 0:
            problems.append(f"workers must be >= 0, got {self.workers}")
        if self.resume and self.overwrite:
            problems.append("resume and overwrite exclude each other")
        if problems:
            raise CnnlabError("invalid training settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "crop_scale" in kwargs:
            kwargs["crop_scale"] = tuple(kwargs["crop_scale"])
        return cls(**kwargs)


@dataclass
class EpochRecord:
    """One line of ``history.csv``.

    ``lr``/``backbone_lr``: the learning rates at the epoch's last step (``backbone_lr`` is 0 while
    the backbone is frozen); ``train_*``: running figures over the epoch's augmented batches, in
    training mode; ``val_*``: the model after the epoch on the validation split (``None`` without
    one); ``images``/``skipped``: training images used and undecodable files met; ``seconds``:
    wall time of the epoch including validation.
    """

    epoch: int
    phase: str
    lr: float
    backbone_lr: float
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    images: int
    skipped: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> tuple[Any, ...]:
        """Everything but the timing: what must be identical between two runs with one seed."""
        d = self.to_dict()
        d.pop("seconds")
        return tuple(d.values())


@dataclass
class TrainCallbacks:
    """Hooks for progress display (all optional)."""

    #: Notes on the data, the model and the run, as they are decided.
    on_message: Callable[[str], None] | None = None
    #: ``(epoch, total_epochs, phase, batches)`` before an epoch (epochs count from 1).
    on_epoch_start: Callable[[int, int, str, int], None] | None = None
    #: ``(batches_done, running_loss, running_accuracy)`` after every training batch.
    on_batch: Callable[[int, float, float], None] | None = None
    #: ``(record, is_best)`` after an epoch, once ``last.pt`` (and ``best.pt``) are written.
    on_epoch_end: Callable[[EpochRecord, bool], None] | None = None


@dataclass
class TrainResult:
    """What a run produced: history, best epoch, final evaluation and where the files are."""

    out: Path
    model: str
    arch: str
    classes: list[str]
    random_weights: bool
    device: str
    precision: str
    bn: str
    head: str
    split_source: str
    class_counts: dict[str, int]
    n_train: int
    n_val: int
    n_test: int
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    stopped_early: list[str] = field(default_factory=list)
    resumed_from_epoch: int | None = None
    evaluated_on: str | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    train_args: dict[str, Any] = field(default_factory=dict)

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def imbalance_ratio(self) -> float:
        counts = [c for c in self.class_counts.values()]
        return max(counts) / min(counts) if counts and min(counts) > 0 else math.inf

    @property
    def final_top1(self) -> float | None:
        return self.evaluation.get("top1")

    def seconds_per_epoch(self, phase: str | None = None) -> float | None:
        """Mean wall time of the epochs (of one phase), training plus validation."""
        times = [r.seconds for r in self.history if phase is None or r.phase == phase]
        return sum(times) / len(times) if times else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "model": self.model,
            "arch": self.arch,
            "classes": self.classes,
            "random_weights": self.random_weights,
            "device": self.device,
            "precision": self.precision,
            "bn": self.bn,
            "head": self.head,
            "split_source": self.split_source,
            "class_counts": self.class_counts,
            "imbalance_ratio": self.imbalance_ratio,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "history": [r.to_dict() for r in self.history],
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "stopped_early": self.stopped_early,
            "resumed_from_epoch": self.resumed_from_epoch,
            "seconds_per_epoch": {
                "head": self.seconds_per_epoch("head"),
                "full": self.seconds_per_epoch("full"),
            },
            "evaluated_on": self.evaluated_on,
            "evaluation": self.evaluation,
            "files": {name: str(self.out / name) for name in RUN_FILES},
            "skipped": [s.to_dict() for s in self.skipped],
            "warnings": self.warnings,
            "train_args": self.train_args,
        }


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@dataclass
class DataSplits:
    """The labelled images of a run, split, with one class list shared by every split."""

    classes: list[str]
    train: LabelledImages
    val: LabelledImages | None
    test: LabelledImages | None
    source: str
    skipped: list[SkippedFile] = field(default_factory=list)
    dropped_classes: list[str] = field(default_factory=list)

    def class_counts(self) -> dict[str, int]:
        return self.train.class_counts()

    def fingerprint(self) -> str:
        """A hash of which file is in which split with which label (checked on resume)."""
        digest = hashlib.sha256()
        for name, part in (("train", self.train), ("val", self.val), ("test", self.test)):
            if part is not None:
                for p, t in zip(part.paths, part.targets):
                    rel = p.relative_to(part.root) if p.is_relative_to(part.root) else p
                    digest.update(f"{name}\0{rel.as_posix()}\0{self.classes[t]}\n".encode())
        return digest.hexdigest()[:16]

    def rows(self) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        for name, part in (("train", self.train), ("val", self.val), ("test", self.test)):
            if part is not None:
                out.extend((str(p), self.classes[t], name) for p, t in zip(part.paths, part.targets))
        return out


def stratified_split(
    targets: Sequence[int], *, val_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[int]]:
    """Positions of ``targets`` split per class into ``train``/``val``/``test``, reproducibly.

    Each class contributes ``round(n * fraction)`` images to val and test, and at least one image
    to val (and to test) when that fraction is positive and the class has images to spare; every
    class keeps at least one training image.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    for c in sorted(by_class):
        idx = np.array(by_class[c])
        rng.shuffle(idx)
        n = len(idx)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if test_fraction > 0 and n_test == 0 and n >= 3:
            n_test = 1
        if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
            n_val = 1
        while n_val + n_test > n - 1 and (n_val or n_test):
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        parts["test"].extend(idx[:n_test].tolist())
        parts["val"].extend(idx[n_test : n_test + n_val].tolist())
        parts["train"].extend(idx[n_test + n_val :].tolist())
    return {k: sorted(v) for k, v in parts.items()}


def _relabel(images: LabelledImages, classes: list[str], split: str) -> LabelledImages:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({images.classes[t] for t in images.targets} - set(classes))
    if unknown:
        raise DatasetError(
            f"class(es) {', '.join(unknown)} have {split} images but no training images; "
            "every class needs training images"
        )
    return LabelledImages(
        images.root,
        list(images.paths),
        [index[images.classes[t]] for t in images.targets],
        list(classes),
        list(images.skipped),
        [],
    )


def _manifest_with_splits(data: Path) -> tuple[Path, set[str]] | None:
    """The manifest that defines splits for ``data``, and the split names it has; ``None`` if none."""
    manifest = data / "split.csv" if data.is_dir() else data
    if not manifest.is_file():
        return None
    rows = _read_manifest_rows(manifest)
    if not rows or "split" not in rows[0]:
        return None
    return manifest, {r.get("split", "") for r in rows if r.get("status", "ok") == "ok"}


def prepare_data(
    data: str | Path, *, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> DataSplits:
    """Read ``data`` and split it: the data's own split when it has one, else stratified at random."""
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"no such folder or manifest: {data}")
    with_splits = _manifest_with_splits(data)
    skipped: list[SkippedFile] = []
    if with_splits is not None:
        manifest, names = with_splits
        if "train" not in names:
            raise DatasetError(f"{manifest} has no rows with split 'train' (it has {', '.join(sorted(names))})")
        train_all = scan_dataset(data, split="train")
        skipped.extend(train_all.skipped)
        dropped = list(train_all.empty_classes)
        classes = [c for c in train_all.classes if c not in dropped]
        train = _relabel(train_all, classes, "train")
        val = test = None
        source = f"splits of {manifest}"
        for split in ("val", "test"):
            if split in names:
                part = scan_dataset(data, split=split)
                skipped.extend(part.skipped)
                if split == "val":
                    val = _relabel(part, classes, split)
                else:
                    test = _relabel(part, classes, split)
        if val is None and val_fraction > 0:
            idx = stratified_split(train.targets, val_fraction=val_fraction, seed=seed)
            val, train = train.subset(idx["val"]), train.subset(idx["train"])
            source += f" (val: {val_fraction:.0%} of train per class, seed {seed})"
    else:
        everything = scan_dataset(data)
        skipped.extend(everything.skipped)
        dropped = list(everything.empty_classes)
        classes = [c for c in everything.classes if c not in dropped]
        everything = _relabel(everything, classes, "train")
        idx = stratified_split(everything.targets, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        train = everything.subset(idx["train"])
        val = everything.subset(idx["val"]) if idx["val"] else None
        test = everything.subset(idx["test"]) if idx["test"] else None
        source = (
            f"stratified split of {data} (val {val_fraction:.0%}, test {test_fraction:.0%} per class, seed {seed})"
        )
    if len(classes) < 2:
        raise DatasetError(f"{data} has {len(classes)} class(es) with training images; a classifier needs at least 2")
    if val is not None and not len(val):
        val = None
    if test is not None and not len(test):
        test = None
    return DataSplits(classes, train, val, test, source, skipped, dropped)


class TrainTransform:
    """Decode + training augmentation, giving a ``uint8`` (3, crop, crop) tensor.

    Has the ``load(path, fast_decode=...)`` method of :class:`Preprocessing`, so that
    :class:`cnnlab.datasets.ImageFileDataset` (with its skip-and-count handling of bad files)
    serves training images too. Images are first shrunk so that their shorter side is at most
    ``resize_size`` (the evaluation resize), then cropped at random and flipped; normalisation
    happens later, on the device, with the weights' numbers (:meth:`Preprocessing.normalize`).
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        *,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        hflip: bool = True,
        color_jitter: float = 0.0,
    ) -> None:
        from torchvision.transforms import v2

        self.preprocessing = preprocessing
        steps: list[Any] = [
            v2.RandomResizedCrop(
                preprocessing.crop_size,
                scale=tuple(crop_scale),
                interpolation=v2.InterpolationMode(preprocessing.interpolation),
                antialias=True,
            )
        ]
        if hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        if color_jitter > 0:
            steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        self.transform = v2.Compose(steps)

    def load(self, path: str | Path | bytes, *, fast_decode: bool = True) -> torch.Tensor:
        pp = self.preprocessing
        img = decode_image(path, draft_to=pp.resize_size if fast_decode else None)
        short = min(img.size)
        if short > pp.resize_size:
            scale = pp.resize_size / short
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.Resampling[pp.interpolation.upper()])
        tensor = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        crop: torch.Tensor = self.transform(tensor)
        return crop.contiguous()


def _seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: torch seeds each worker; derive numpy's and random's from it."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def make_train_loader(
    images: LabelledImages,
    transform: TrainTransform | Preprocessing,
    *,
    batch_size: int,
    workers: int,
    balance: bool,
    generator: torch.Generator,
    pin_memory: bool = False,
) -> DataLoader[Batch]:
    """Shuffled (or with ``balance``, class-balanced) training batches of :class:`Batch`.

    The order and the augmentations depend only on ``generator``'s state when iteration starts
    (workers are seeded from it), which :func:`train` sets from ``(seed, epoch)``.
    """
    dataset = ImageFileDataset(images.paths, transform)  # type: ignore[arg-type]
    sampler: torch.utils.data.Sampler[int]
    if balance:
        counts = np.bincount(images.targets, minlength=len(images.classes)).astype(np.float64)
        weights = [1.0 / counts[t] for t in images.targets]
        sampler = WeightedRandomSampler(weights, num_samples=len(images), replacement=True, generator=generator)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(
        dataset,  # type: ignore[arg-type]  # yields items that _collate turns into a Batch
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        drop_last=len(images) > batch_size,  # no tiny, noisy last batch (BatchNorm)
        worker_init_fn=_seed_worker,
        generator=generator,
        persistent_workers=False,
    )


# --------------------------------------------------------------------------------------------
# model, phases, optimiser, schedule
# --------------------------------------------------------------------------------------------


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _phases(config: TrainConfig) -> list[tuple[str, int]]:
    if config.freeze:
        return [("head", config.epochs)]
    return [(name, n) for name, n in (("head", config.freeze_epochs), ("full", config.epochs)) if n > 0]


def _set_modes(model: nn.Module, head: nn.Module, phase: str, bn: str) -> None:
    """Train/eval mode of every layer for ``phase`` under BatchNorm policy ``bn`` (see module doc)."""
    if phase == "head" and bn == "frozen":
        model.eval()  # the frozen backbone is a fixed feature extractor
        head.train()
        return
    model.train()
    if bn == "frozen":
        for m in model.modules():
            if _is_bn(m):
                m.eval()


def _make_optimizer(
    model: nn.Module, head: nn.Module, phase: str, config: TrainConfig, bn: str
) -> torch.optim.Optimizer:
    """AdamW over the parameters that train in ``phase``, grouped by part (head/backbone) and decay."""
    head_ids = {id(p) for p in head.parameters()}
    bn_ids = {id(p) for m in model.modules() if _is_bn(m) for p in m.parameters(recurse=False)}
    if phase == "head":
        lrs = {"head": config.lr, "backbone": config.lr}
    else:
        lrs = {"head": config.lr / 2, "backbone": config.lr / 2 * config.backbone_lr_ratio}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        is_head = id(p) in head_ids
        trainable = is_head or phase == "full" or (bn == "train" and id(p) in bn_ids)
        p.requires_grad_(trainable)
        if trainable:
            decay = p.ndim > 1 and id(p) not in bn_ids
            groups.setdefault(("head" if is_head else "backbone", decay), []).append(p)
    param_groups = []
    for (part, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0] != "head", not kv[0][1])):
        param_groups.append(
            {
                "params": params,
                "lr": lrs[part],
                "base_lr": lrs[part],
                "part": part,
                "weight_decay": config.weight_decay if decay else 0.0,
            }
        )
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=(_MOMENTUM[0], _BETA2))


def schedule_factors(schedule: str, progress: float, warmup: float = 0.25) -> tuple[float, float | None]:
    """``(lr factor, beta1 or None)`` at ``progress`` in [0, 1) of a phase."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p)), None
    start, end = 1.0 / _ONECYCLE_DIV, 1.0 / (_ONECYCLE_DIV * _ONECYCLE_FINAL_DIV)
    hi_mom, lo_mom = _MOMENTUM
    if p < warmup:
        ramp = (1.0 - math.cos(math.pi * p / warmup)) / 2.0  # 0 -> 1
        return start + (1.0 - start) * ramp, hi_mom - (hi_mom - lo_mom) * ramp
    ramp = (1.0 - math.cos(math.pi * (p - warmup) / (1.0 - warmup))) / 2.0  # 0 -> 1
    return end + (1.0 - end) * (1.0 - ramp), lo_mom + (hi_mom - lo_mom) * ramp


def _apply_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int, total: int) -> None:
    factor, beta1 = schedule_factors(config.schedule, step / max(total, 1), config.warmup)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
        if beta1 is not None:
            group["betas"] = (beta1, _BETA2)


def _group_lr(optimizer: torch.optim.Optimizer, part: str) -> float:
    return next((g["lr"] for g in optimizer.param_groups if g["part"] == part), 0.0)


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise CnnlabError("fp16 mixed precision needs a CUDA device; use fp32 or bf16 on the CPU")
    return precision


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class _Predictions:
    logits: torch.Tensor  # (N, C) float32 on the CPU, for the files that decoded
    targets: torch.Tensor  # (N,)
    skipped: list[SkippedFile]

    @property
    def loss(self) -> float:
        if not len(self.targets):
            return math.nan
        return float(nn.functional.cross_entropy(self.logits, self.targets))

    @property
    def accuracy(self) -> float:
        if not len(self.targets):
            return math.nan
        return float((self.logits.argmax(1) == self.targets).float().mean())


@torch.inference_mode()
def _predict_split(
    model: nn.Module,
    images: LabelledImages,
    preprocessing: Preprocessing,
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
    workers: int,
) -> _Predictions:
    model.eval()
    loader = make_loader(images.paths, preprocessing, batch_size=batch_size, workers=workers, device_type=device.type)
    found: dict[int, torch.Tensor] = {}
    skipped: list[SkippedFile] = []
    amp = _AMP_DTYPES.get(precision)
    for batch in loader:
        for i, reason, detail in batch.failed:
            skipped.append(SkippedFile(str(images.paths[i]), reason, detail, images.classes[images.targets[i]]))
        if batch.images is None:
            continue
        x = preprocessing.normalize(batch.images.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x).float().cpu()
        for row, i in enumerate(batch.indices):
            found[i] = out[row]
    order = sorted(found)
    num_classes = len(images.classes)
    logits = torch.stack([found[i] for i in order]) if order else torch.zeros(0, num_classes)
    targets = torch.tensor([images.targets[i] for i in order], dtype=torch.long)
    return _Predictions(logits, targets, skipped)


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


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------


def write_history(records: Sequence[EpochRecord], path: Path) -> None:
    names = [f.name for f in dataclasses.fields(EpochRecord)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})


def read_history(path: str | Path) -> list[EpochRecord]:
    """Read a ``history.csv`` back."""
    out = []
    with Path(path).open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out.append(
                EpochRecord(
                    epoch=int(row["epoch"]),
                    phase=row["phase"],
                    lr=float(row["lr"]),
                    backbone_lr=float(row["backbone_lr"]),
                    train_loss=float(row["train_loss"]),
                    train_acc=float(row["train_acc"]),
                    val_loss=float(row["val_loss"]) if row["val_loss"] else None,
                    val_acc=float(row["val_acc"]) if row["val_acc"] else None,
                    images=int(row["images"]),
                    skipped=int(row["skipped"]),
                    seconds=float(row["seconds"]),
                )
            )
    return out


def plot_curves(records: Sequence[EpochRecord], path: Path, *, title: str = "", best_epoch: int | None = None) -> None:
    """Loss and accuracy per epoch (train and validation) as a PNG; matplotlib's Agg canvas, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    epochs = [r.epoch for r in records]
    for ax, what, label in zip(fig.subplots(1, 2), ("loss", "acc"), ("loss", "accuracy")):
        ax.plot(epochs, [getattr(r, f"train_{what}") for r in records], "o-", label=f"train {label}")
        val = [getattr(r, f"val_{what}") for r in records]
        if any(v is not None for v in val):
            ax.plot(epochs, [math.nan if v is None else v for v in val], "s-", label=f"val {label}")
        full = [r.epoch for r in records if r.phase == "full"]
        if full and full[0] > epochs[0]:
            ax.axvline(full[0] - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(full[0] - 0.45, 0.02, "unfrozen", transform=ax.get_xaxis_transform(), va="bottom", fontsize=8)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="green", linestyle=":", linewidth=1, label="best")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if what == "acc":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def _write_split(splits: DataSplits, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        writer.writerows(splits.rows())


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


@dataclass
class _State:
    """Progress of a run: what ``last.pt`` stores for ``resume`` (with the optimiser state)."""

    phase_index: int = 0
    epoch_in_phase: int = 0
    epochs_done: int = 0
    best_val_loss: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: list[str] = field(default_factory=list)
    history: list[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["history"] = [r.to_dict() for r in self.history]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _State:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["history"] = [EpochRecord(**r) for r in d.get("history", [])]
        return cls(**kwargs)


@dataclass
class _Run:
    """Everything one training run works with."""

    config: TrainConfig
    callbacks: TrainCallbacks
    out: Path
    splits: DataSplits
    spec: ModelSpec
    model: nn.Module
    head_info: HeadInfo
    preprocessing: Preprocessing
    device: torch.device
    precision: str
    bn: str
    workers: int
    result: TrainResult
    loader: DataLoader[Batch] = field(init=False)
    generator: torch.Generator = field(default_factory=torch.Generator)
    skipped_paths: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        c = self.config
        transform: TrainTransform | Preprocessing = (
            TrainTransform(self.preprocessing, crop_scale=c.crop_scale, hflip=c.hflip, color_jitter=c.color_jitter)
            if c.augment
            else self.preprocessing
        )
        self.loader = make_train_loader(
            self.splits.train,
            transform,
            batch_size=c.batch_size,
            workers=self.workers,
            balance=c.balance,
            generator=self.generator,
            pin_memory=self.device.type == "cuda",
        )
        self.skipped_paths = {s.path for s in self.result.skipped}

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.head_info.path)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return _AMP_DTYPES.get(self.precision)

    def note(self, message: str, *, warning: bool = False) -> None:
        if warning:
            self.result.warnings.append(message)
        if self.callbacks.on_message is not None:
            self.callbacks.on_message(("warning: " if warning else "") + message)

    def skip(self, skipped: SkippedFile) -> None:
        if skipped.path not in self.skipped_paths:
            self.skipped_paths.add(skipped.path)
            self.result.skipped.append(skipped)

    def predict(self, images: LabelledImages) -> _Predictions:
        preds = _predict_split(
            self.model, images, self.preprocessing, device=self.device, precision=self.precision,
            batch_size=self.config.batch_size, workers=self.workers,
        )
        for s in preds.skipped:
            self.skip(s)
        return preds

    def checkpoint(self, metrics: dict[str, Any], resume: dict[str, Any] | None = None) -> dict[str, Any]:
        return make_checkpoint(
            arch=self.spec.name,
            head=self.head_info,
            classes=self.splits.classes,
            preprocessing=self.preprocessing,
            state_dict=self.model.state_dict(),
            train_args=self.result.train_args,
            metrics=metrics,
            resume=resume,
        )


def _prepare_out(config: TrainConfig) -> Path:
    out = Path(config.out)
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if config.resume:
        if not (out / "last.pt").is_file():
            raise CnnlabError(f"nothing to resume: {out / 'last.pt'} does not exist")
        return out
    if existing and not config.overwrite:
        raise CnnlabError(
            f"{out} already holds a run ({', '.join(existing)}): use --resume to continue it or "
            "--overwrite to start again, or choose another --out"
        )
    for name in existing:
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _resumed_config(config: TrainConfig, stored_args: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The run's stored settings with this call's runtime settings, and a note on what was ignored."""
    stored = TrainConfig.from_dict(stored_args)
    defaults = TrainConfig()
    ignored = []
    for f in dataclasses.fields(TrainConfig):
        given = getattr(config, f.name)
        if f.name in TrainConfig.RUNTIME_FIELDS or (f.name == "data" and given is not None):
            # the data may have moved; its fingerprint is checked against the run's
            setattr(stored, f.name, given)
            continue
        if given != getattr(defaults, f.name) and given != getattr(stored, f.name):
            ignored.append(f"{f.name}={given!r} (the run uses {getattr(stored, f.name)!r})")
    stored.resume, stored.overwrite = True, False
    notes = [f"resume uses the run's stored settings; ignored {', '.join(ignored)}"] if ignored else []
    return stored, notes


def _run_preprocessing(spec: ModelSpec, image_size: int | None) -> Preprocessing:
    pp = spec.preprocessing
    if image_size is None:
        return pp
    ratio = pp.resize_size / pp.crop_size
    return dataclasses.replace(pp, crop_size=image_size, resize_size=max(image_size, round(image_size * ratio)))


def train(config: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.data``; write checkpoints and reports into ``config.out``.

    ``callbacks`` receive progress (see :class:`TrainCallbacks`); an exception raised in one stops
    the run, and ``last.pt`` of the last finished epoch lets ``resume`` continue it.

    Raises :class:`CnnlabError` (and subclasses) for unusable settings, data or weights.
    """
    callbacks = callbacks or TrainCallbacks()
    config.validate()
    out = _prepare_out(config)
    resume_ckpt: dict[str, Any] | None = None
    notes: list[str] = []
    if config.resume:
        resume_ckpt = read_checkpoint(out / "last.pt")
        if "resume" not in resume_ckpt:
            raise CnnlabError(f"{out / 'last.pt'} holds no resume state")
        config, notes = _resumed_config(config, resume_ckpt["train_args"])
        config.validate()
    if config.data is None:
        raise CnnlabError("no training data: pass --data DIR (a class-folder tree, a manifest or a split folder)")
    if Path(config.model).suffix in _CHECKPOINT_SUFFIXES and Path(config.model).is_file():
        raise CnnlabError(
            f"--model {config.model} is a checkpoint; training starts from a registry model "
            "(to continue an interrupted run use --resume with its --out)"
        )
    device = resolve_device(config.device)
    precision = _resolve_precision(config.precision, device)
    splits = prepare_data(
        config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed
    )

    _seed_everything(config.seed)  # the random parts of the model (the new head) are reproducible
    if resume_ckpt is not None:
        spec = base_spec(resume_ckpt, out / "last.pt")
        if list(resume_ckpt["classes"]) != splits.classes:
            raise CnnlabError(
                f"the classes in {config.data} ({', '.join(splits.classes)}) differ from those of the run "
                f"({', '.join(resume_ckpt['classes'])}); resume needs the same data"
            )
        if resume_ckpt["resume"].get("data_fingerprint") != splits.fingerprint():
            raise CnnlabError(f"the images in {config.data} or their split changed since the run started; "
                              "resume needs the same data")
        model = build_finetuned(spec, len(splits.classes), resume_ckpt["state_dict"])
        head_info = HeadInfo(**resume_ckpt["head"])
    else:
        loaded = load_model(
            config.model,
            weights=config.weights,
            weights_dir=config.weights_dir,
            random_weights=config.random_weights,
            device="cpu",
            progress=callbacks.on_message is not None,
        )
        spec, model = loaded.spec, loaded.module
        head_info = replace_head(model, len(splits.classes))
    bn = config.bn if config.bn != "auto" else ("train" if config.random_weights else "frozen")
    result = TrainResult(
        out=out,
        model=config.model,
        arch=spec.name,
        classes=splits.classes,
        random_weights=config.random_weights,
        device=str(device),
        precision=precision,
        bn=bn,
        head=f"{head_info.path}: {head_info.kind} {head_info.in_features} -> {head_info.num_classes}",
        split_source=splits.source,
        class_counts=splits.class_counts(),
        n_train=len(splits.train),
        n_val=len(splits.val) if splits.val else 0,
        n_test=len(splits.test) if splits.test else 0,
        skipped=list(splits.skipped),
        train_args={**config.to_dict(), "arch": spec.name, "bn_resolved": bn, "precision_resolved": precision},
    )
    run = _Run(
        config=config,
        callbacks=callbacks,
        out=out,
        splits=splits,
        spec=spec,
        model=model.to(device),
        head_info=head_info,
        preprocessing=_run_preprocessing(spec, config.image_size),
        device=device,
        precision=precision,
        bn=bn,
        workers=default_workers(device.type) if config.workers is None else config.workers,
        result=result,
    )
    for n in notes:
        run.note(n, warning=True)
    _describe(run)

    state = _State()
    optimizer_state = scaler_state = None
    if resume_ckpt is not None:
        stored = resume_ckpt["resume"]
        state = _State.from_dict(stored["state"])
        optimizer_state, scaler_state = stored.get("optimizer"), stored.get("scaler")
        result.resumed_from_epoch = state.epochs_done
        run.note(f"resuming after epoch {state.epochs_done}")
    else:
        _write_split(splits, out / "data_split.csv")

    phases = _phases(config)
    while state.phase_index < len(phases):
        phase, _ = phases[state.phase_index]
        optimizer = _make_optimizer(run.model, run.head, phase, config, bn)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        if state.epoch_in_phase > 0 and optimizer_state is not None:  # resuming inside this phase
            optimizer.load_state_dict(optimizer_state)
            if scaler_state:
                scaler.load_state_dict(scaler_state)
        else:
            state.bad_epochs = 0
        optimizer_state = scaler_state = None
        phase_index = state.phase_index
        while state.phase_index == phase_index:
            _epoch(run, state, phases, optimizer, scaler)

    result.history = list(state.history)
    result.best_epoch, result.best_val_loss = state.best_epoch, state.best_val_loss
    result.stopped_early = list(state.stopped_early)
    _finish(run)
    return result


def _describe(run: _Run) -> None:
    """Tell what the run is about to do, with the warnings that matter."""
    r, c = run.result, run.config
    if c.random_weights:
        run.note(f"starting from RANDOM weights ({run.spec.arch}): not a pretrained fine-tune", warning=True)
    run.note(f"model {r.arch}, new head {r.head}, BatchNorm {r.bn}, {r.precision} on {r.device}")
    run.note(
        f"data: {r.n_train} train / {r.n_val} val / {r.n_test} test images, {len(r.classes)} classes "
        f"({r.split_source})"
    )
    run.note("train images per class: " + ", ".join(f"{k} {n}" for k, n in r.class_counts.items()))
    if run.splits.dropped_classes:
        run.note(f"class folder(s) without images left out: {', '.join(run.splits.dropped_classes)}", warning=True)
    if r.imbalance_ratio >= IMBALANCE_WARNING:
        advice = "classes are sampled equally (--balance)" if c.balance else "consider --balance"
        run.note(
            f"classes are imbalanced: the largest has {r.imbalance_ratio:.1f}x the images of the smallest; {advice}",
            warning=True,
        )
    if run.splits.val is None:
        run.note("no validation images: no early stopping, and best.pt is the last epoch", warning=True)
    if run.splits.test is None:
        run.note(
            "no test split: the final evaluation uses the validation images, which also chose the best epoch "
            "(optimistic); use --test-fraction or a split.csv with a test split for an unbiased figure"
        )


def _epoch(
    run: _Run,
    state: _State,
    phases: list[tuple[str, int]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> None:
    """Train one epoch, validate, update best/early stopping, write the checkpoints and history."""
    config, model, device = run.config, run.model, run.device
    phase, phase_epochs = phases[state.phase_index]
    epoch = state.epochs_done + 1
    started = time.perf_counter()
    epoch_seed = _epoch_seed(config.seed, epoch)
    _seed_everything(epoch_seed)
    run.generator.manual_seed(epoch_seed)
    _set_modes(model, run.head, phase, run.bn)
    steps_per_epoch = len(run.loader)
    if run.callbacks.on_epoch_start is not None:
        run.callbacks.on_epoch_start(epoch, sum(n for _, n in phases), phase, steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    train_paths, train_targets = run.splits.train.paths, run.splits.train.targets
    targets = torch.tensor(train_targets, dtype=torch.long)
    amp = run.amp_dtype
    loss_sum, correct, seen, skipped = 0.0, 0, 0, 0
    step = state.epoch_in_phase * steps_per_epoch
    for n_batch, batch in enumerate(run.loader, 1):
        _apply_schedule(optimizer, config, step, steps_per_epoch * phase_epochs)
        step += 1
        for i, reason, detail in batch.failed:
            skipped += 1
            run.skip(SkippedFile(str(train_paths[i]), reason, detail, run.splits.classes[train_targets[i]]))
        if batch.images is None:
            continue
        x = run.preprocessing.normalize(batch.images.to(device, non_blocking=True))
        y = targets[batch.indices].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            output = model(x)
            if not isinstance(output, torch.Tensor):  # Inception/GoogLeNet with auxiliary outputs
                output = output[0]
        loss = criterion(output.float(), y)
        if not torch.isfinite(loss):
            raise CnnlabError(f"the training loss became {loss.item()} in epoch {epoch}; lower --lr (or use fp32)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.item() * len(y)
        correct += int((output.argmax(1) == y).sum())
        seen += len(y)
        if run.callbacks.on_batch is not None:
            run.callbacks.on_batch(n_batch, loss_sum / seen, correct / seen)
    if seen == 0:
        raise DatasetError(f"no training image of epoch {epoch} could be decoded")
    val = run.predict(run.splits.val) if run.splits.val is not None else None
    if val is not None and not len(val.targets):  # every validation file failed to decode
        val = None
    record = EpochRecord(
        epoch=epoch,
        phase=phase,
        lr=_group_lr(optimizer, "head"),
        backbone_lr=_group_lr(optimizer, "backbone"),
        train_loss=loss_sum / seen,
        train_acc=correct / seen,
        val_loss=val.loss if val is not None else None,
        val_acc=val.accuracy if val is not None else None,
        images=seen,
        skipped=skipped,
        seconds=round(time.perf_counter() - started, 3),
    )

    # best checkpoint and early stopping, on the validation loss
    state.history.append(record)
    state.epochs_done += 1
    state.epoch_in_phase += 1
    improved = record.val_loss is not None and (
        state.best_val_loss is None or record.val_loss < state.best_val_loss
    )
    is_best = improved or record.val_loss is None  # without validation the last epoch is the best
    if is_best:
        state.best_val_loss, state.best_epoch = record.val_loss, epoch
    state.bad_epochs = 0 if is_best else state.bad_epochs + 1
    stop = (
        config.patience is not None
        and state.bad_epochs >= config.patience
        and state.epoch_in_phase < phase_epochs
    )
    if stop:
        state.stopped_early.append(phase)
    if stop or state.epoch_in_phase >= phase_epochs:
        state.phase_index += 1
        state.epoch_in_phase = 0

    metrics = {k: v for k, v in record.to_dict().items() if k != "seconds"}
    if is_best:
        save_checkpoint(run.checkpoint(metrics), run.out / "best.pt")
    in_phase = state.epoch_in_phase > 0
    resume = {
        "state": state.to_dict(),
        "optimizer": optimizer.state_dict() if in_phase else None,
        "scaler": scaler.state_dict() if in_phase and scaler.is_enabled() else None,
        "rng": f"re-seeded from (seed={config.seed}, epoch) at the start of every epoch",
        "data_fingerprint": run.splits.fingerprint(),
    }
    save_checkpoint(run.checkpoint(metrics, resume), run.out / "last.pt")
    write_history(state.history, run.out / "history.csv")
    if run.callbacks.on_epoch_end is not None:
        run.callbacks.on_epoch_end(record, is_best)
    if stop:
        run.note(
            f"early stop of the {phase} phase after epoch {epoch}: "
            f"no lower validation loss for {config.patience} epochs"
        )


def _finish(run: _Run) -> None:
    """Evaluate best.pt on the test split (else val); write metrics.json and curves.png."""
    result, out, classes = run.result, run.out, run.splits.classes
    best = read_checkpoint(out / "best.pt")
    run.model.load_state_dict(best["state_dict"])
    reports: dict[str, Any] = {}
    for name, part in (("val", run.splits.val), ("test", run.splits.test)):
        if part is not None:
            preds = run.predict(part)
            reports[name] = {**evaluation_report(preds.logits, preds.targets, classes), "skipped": len(preds.skipped)}
    result.evaluated_on = "test" if "test" in reports else ("val" if "val" in reports else None)
    result.evaluation = reports[result.evaluated_on] if result.evaluated_on else {}
    metrics = {
        "model": result.arch,
        "random_weights": result.random_weights,
        "classes": classes,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "evaluated_on": result.evaluated_on,
        "note": (
            "best.pt on the test split, which took no part in training or in choosing the epoch"
            if result.evaluated_on == "test"
            else "no test split: validation figures, and the validation split chose the best epoch (optimistic)"
        ),
        **reports,
        "class_counts": result.class_counts,
        "split_source": result.split_source,
        "skipped": [s.to_dict() for s in result.skipped],
        "train_args": result.train_args,
    }
    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2) + "\n", encoding="utf-8")
    best["metrics"] = {
        **best.get("metrics", {}),
        "evaluated_on": result.evaluated_on,
        **{f"{name}_top1": rep.get("top1") for name, rep in reports.items()},
        **{f"{name}_n": rep.get("n") for name, rep in reports.items()},
    }
    save_checkpoint(best, out / "best.pt")
    start = "random weights" if result.random_weights else "pretrained"
    plot_curves(
        result.history,
        out / "curves.png",
        title=f"{result.arch} ({start}) on {len(classes)} classes",
        best_epoch=result.best_epoch,
    )
    run.note(f"wrote {', '.join(RUN_FILES)} to {out}")
