"""What a training run produces: one :class:`EpochRecord` per epoch and the :class:`TrainResult`.

Light to import (no torch), so the CLI can describe results without loading the training code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.imagedata.datasets import SkippedFile
from cnnlab.jsonable import to_jsonable
from cnnlab.train.config import ResolvedSettings
from cnnlab.train.mixing import MIX_RULE, MixScore

#: Files of a run in its output folder (removed by ``overwrite=True``).
RUN_FILES = ("best.pt", "last.pt", "history.csv", "curves.png", "metrics.json", "data_split.csv", "report.html")


@dataclass
class EpochRecord:
    """One line of ``history.csv``.

    ``epoch`` 0 with ``phase`` ``probe`` is the head's logistic-regression fit (learning rates 0,
    ``train_*`` on the clean training features). ``lr``/``backbone_lr``: the learning rates at the
    epoch's last step (``backbone_lr`` is 0 while the backbone is frozen); ``train_*``: running
    figures over the epoch's augmented batches, in training mode; ``val_*``: the model after the
    epoch on the validation split (``None`` without one); ``images``/``skipped``: training images
    used and undecodable files met; ``seconds``: wall time of the epoch including validation.
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

    def summary(self, *, best: bool = False) -> str:
        """One line (under 80 characters) for the progress display."""
        val_loss = "-" if self.val_loss is None else f"{self.val_loss:.4f}"
        val_acc = "-" if self.val_acc is None else f"{self.val_acc:.1%}"
        return (
            f"epoch {self.epoch:>3} {self.phase:<4}  loss {self.train_loss:.4f} acc {self.train_acc:.1%}  "
            f"val loss {val_loss} acc {val_acc}  {self.seconds:.1f}s" + ("  best" if best else "")
        )


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
    #: What the run resolved its automatic settings to (stored in its checkpoints; resume reads them back).
    resolved: ResolvedSettings | None = None
    #: How the best epoch and the weights mix were chosen (:data:`cnnlab.train.mixing.MIX_RULE`).
    selection: str = MIX_RULE
    #: Share of the best epoch's weights in best.pt, the rest the probe's (``None``: not mixed, the best epoch as is).
    weight_mix: float | None = None
    mix_scores: list[MixScore] = field(default_factory=list)
    #: The head refitted on training and validation images (:mod:`cnnlab.train.refit`): images, folds, validation
    #: accuracy before and out of fold after; ``None`` when it was not refitted.
    refit: dict[str, Any] | None = None
    #: The untouched pretrained model on the validation images through the WordNet mapping
    #: (:mod:`cnnlab.train.zero_shot`): ``{"val_acc", "n", "synsets"}``; ``None`` when a class does not map.
    zero_shot: dict[str, Any] | None = None

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def imbalance_ratio(self) -> float:
        """Training images of the largest class over those of the smallest."""
        counts = list(self.class_counts.values())
        return max(counts) / min(counts) if counts and min(counts) > 0 else math.inf

    @property
    def final_top1(self) -> float | None:
        return self.evaluation.get("top1")

    def seconds_per_epoch(self, phase: str | None = None) -> float | None:
        """Mean wall time of the epochs (of one phase), training plus validation."""
        times = [r.seconds for r in self.history if phase is None or r.phase == phase]
        return sum(times) / len(times) if times else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (no nan: missing or infinite figures are ``None``)."""
        data: dict[str, Any] = to_jsonable({
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
            "seconds_per_epoch": {phase: self.seconds_per_epoch(phase) for phase in ("probe", "head", "full")},
            "evaluated_on": self.evaluated_on,
            "evaluation": self.evaluation,
            "files": {name: str(self.out / name) for name in RUN_FILES},
            "skipped": [s.to_dict() for s in self.skipped],
            "warnings": self.warnings,
            "train_args": self.train_args,
            "resolved": self.resolved.to_dict() if self.resolved is not None else None,
            "selection": self.selection,
            "weight_mix": self.weight_mix,
            "mix_scores": [m.to_dict() for m in self.mix_scores],
            "refit": self.refit,
            "zero_shot": self.zero_shot,
        })
        return data
