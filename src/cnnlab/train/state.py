"""The state of a run on disk: what ``last.pt`` keeps for ``resume``, the run folder and its files.

* :class:`RunState`: where the run is (phase, epoch), its best epoch and early-stopping count,
  and the history; with the optimiser, scheduler and scaler states it is ``last.pt``'s ``resume``
  entry, from which :func:`cnnlab.train.fine_tune` continues exactly.
* The run folder: refusing to overwrite a run by accident, ``history.csv``, ``data_split.csv``
  and ``curves.png``. Checkpoints themselves are :mod:`cnnlab.models.checkpoint`'s.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.models.checkpoint import read_checkpoint
from cnnlab.outputs import OutputFolder, atomic_open
from cnnlab.train.config import Phase, TrainConfig
from cnnlab.train.data import DataSplits
from cnnlab.train.mixing import rank_key
from cnnlab.train.result import RUN_FILES, EpochRecord

#: TensorBoard's folder inside the run folder (:mod:`cnnlab.train.tblog`).
TENSORBOARD_FOLDER = "tensorboard"


@dataclass
class RunState:
    """Progress of a run: what ``last.pt`` stores for ``resume`` (with the optimiser state)."""

    phase_index: int = 0
    epoch_in_phase: int = 0
    epochs_done: int = 0
    best_val_loss: float | None = None
    best_epoch: int | None = None
    #: The best epoch's validation accuracy (``None`` in runs that chose by loss alone, before this was kept).
    best_val_acc: float | None = None
    bad_epochs: int = 0
    stopped_early: list[str] = field(default_factory=list)
    history: list[EpochRecord] = field(default_factory=list)

    def end_epoch(self, record: EpochRecord, phase: Phase, patience: int | None) -> tuple[bool, bool]:
        """Add ``record``; return ``(is_best, stop_early)`` and move on to the next phase when due.

        The best epoch has the highest validation accuracy so far, ties going to the lower validation
        loss (:func:`~cnnlab.train.mixing.rank_key`; without validation, the last one): the loss alone
        prefers a cautious early epoch that a later, more accurate one beats by several points. A phase
        stops early after ``patience`` epochs without a new best (later phases compare with the best so
        far, the probe's included). The probe is not a training epoch (it is recorded as epoch 0).
        """
        self.history.append(record)
        self.epochs_done += phase.name != "probe"
        self.epoch_in_phase += 1
        improved = record.val_loss is not None and (
            self.best_val_loss is None
            or rank_key(record.val_acc if record.val_acc is not None else math.nan, record.val_loss)[:2]
            < rank_key(self.best_val_acc if self.best_val_acc is not None else math.nan, self.best_val_loss)[:2])
        is_best = improved or record.val_loss is None
        if is_best:
            self.best_val_loss, self.best_epoch = record.val_loss, record.epoch
            self.best_val_acc = record.val_acc
        self.bad_epochs = 0 if is_best else self.bad_epochs + 1
        stop = patience is not None and self.bad_epochs >= patience and self.epoch_in_phase < phase.epochs
        if stop:
            self.stopped_early.append(phase.name)
        if stop or self.epoch_in_phase >= phase.epochs:
            self.phase_index += 1
            self.epoch_in_phase = 0
        return is_best, stop

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["history"] = [r.to_dict() for r in self.history]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["history"] = [EpochRecord(**r) for r in d.get("history", [])]
        return cls(**kwargs)


def resume_entry(
    state: RunState,
    splits: DataSplits,
    seed: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """``last.pt``'s ``resume`` entry after an epoch (optimiser states only inside a phase)."""
    in_phase = state.epoch_in_phase > 0
    return {
        "state": state.to_dict(),
        "optimizer": optimizer.state_dict() if in_phase and optimizer is not None else None,
        "scheduler": scheduler.state_dict() if in_phase and scheduler is not None else None,
        "scaler": scaler.state_dict() if in_phase and scaler is not None and scaler.is_enabled() else None,
        "rng": f"re-seeded from (seed={seed}, epoch) at the start of every epoch",
        "data_fingerprint": splits.fingerprint(),
    }


def load_phase_states(
    entry: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    """Continue a phase where ``last.pt``'s ``resume`` ``entry`` left it."""
    if entry.get("optimizer") is None or entry.get("scheduler") is None:
        raise CnnlabError("last.pt lacks the optimiser or scheduler state of its phase (it was written by an "
                          "older cnnlab): finish it with that version, or start again with overwrite")
    optimizer.load_state_dict(entry["optimizer"])
    scheduler.load_state_dict(entry["scheduler"])
    if entry.get("scaler"):
        scaler.load_state_dict(entry["scaler"])


def read_resume_checkpoint(out: Path) -> dict[str, Any]:
    """``out/last.pt``, checked to hold a resume state."""
    path = out / "last.pt"
    if not path.is_file():
        raise UsageError(f"nothing to resume: {path} does not exist (start a new run without resume)")
    ckpt = read_checkpoint(path)
    if "resume" not in ckpt:
        raise CnnlabError(f"{path} holds no resume state")
    return ckpt


def run_folder(config: TrainConfig) -> OutputFolder:
    """The run folder ``config.out`` and its rules (:class:`~cnnlab.outputs.OutputFolder`): not a file, not inside
    the data (its curves.png would become a training image, the folder a class, of the next run), one run at a
    time, and an earlier run (:data:`~cnnlab.train.result.RUN_FILES`) kept unless ``resume`` or ``overwrite``."""
    return OutputFolder(Path(config.out), "train", run_files=RUN_FILES,
                        data=Path(config.data) if config.data is not None else None, resumable=True)


def clear_run(folder: OutputFolder) -> None:
    """Make the run folder (proved writable) and remove an earlier run's files from it, its TensorBoard events
    included."""
    folder.create()
    folder.clear_previous()
    shutil.rmtree(folder.path / TENSORBOARD_FOLDER, ignore_errors=True)


def write_split_csv(splits: DataSplits, path: Path) -> None:
    """``data_split.csv``: ``path,label,split`` of every image of the run, paths relative to the CSV's own folder
    (as every manifest's are read, so ``bench`` and ``train`` can take it back from any working folder); absolute
    where no relative path exists (another drive); a record of a hub dataset (``hf:...``) by its name."""
    from cnnlab.imagedata.hfdata import HF_PREFIX

    folder = os.path.abspath(path.parent)

    def located(p: str) -> str:
        if p.startswith(HF_PREFIX):  # a record of a dataset on the hub: a name, not a path
            return p
        try:
            return Path(os.path.relpath(os.path.abspath(p), folder)).as_posix()
        except ValueError:
            return os.path.abspath(p)

    with atomic_open(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        writer.writerows((located(p), label, split) for p, label, split in splits.rows())


def write_history(records: Sequence[EpochRecord], path: Path) -> None:
    """``history.csv``: one row per epoch (empty cells for missing validation figures)."""
    names = [f.name for f in dataclasses.fields(EpochRecord)]
    with atomic_open(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})


def read_history(path: str | Path) -> list[EpochRecord]:
    """Read a ``history.csv`` back."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return [
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
            for row in csv.DictReader(fh)
        ]


def plot_curves(records: Sequence[EpochRecord], path: Path, *, title: str = "", best_epoch: int | None = None) -> None:
    """Loss and accuracy per epoch (train and validation) as a PNG; matplotlib's Agg canvas, no pyplot.

    Written like every output of a run (:func:`cnnlab.outputs.atomic_open`): whole or not at all,
    a failure (a full disk) raised as :class:`~cnnlab.errors.OutputError`.
    """
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
            ax.text(full[0] - 0.45, 0.02, "full phase", transform=ax.get_xaxis_transform(), va="bottom", fontsize=8)
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
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
