"""TensorBoard event files next to ``history.csv`` (``--tensorboard``), through :mod:`torch.utils.tensorboard`.

One scalar per figure of :class:`~cnnlab.train.result.EpochRecord`, at the epoch number as the
step (the probe is step 0): ``loss/train``, ``loss/val``, ``accuracy/train``, ``accuracy/val``,
``lr/head``, ``lr/backbone``. A resumed run continues the same folder; events of epochs after the
resume point (written before an interruption) are purged, so every epoch appears once.

``tensorboard`` is an optional dependency (the ``tensorboard`` extra): :func:`check_available`
says so before any work starts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from cnnlab.errors import UsageError
from cnnlab.train.result import EpochRecord
from cnnlab.train.state import TENSORBOARD_FOLDER as FOLDER


def check_available() -> None:
    """Raise :class:`UsageError` (exit 2) when the ``tensorboard`` package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError("tensorboard logs need the tensorboard package: pip install 'cnnlab[tensorboard]' "
                         "(or pip install tensorboard)")
    try:  # installed but unusable (a dependency too old or missing): say so before any work
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"tensorboard logs: the tensorboard package does not import ({exc}); "
                         "reinstall it: pip install -U 'cnnlab[tensorboard]'") from None


class TensorBoardLog:
    """Writes each epoch's figures as TensorBoard scalars into ``out/tensorboard``."""

    def __init__(self, out: Path, *, first_epoch: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer: Any = SummaryWriter(log_dir=str(out / FOLDER), purge_step=first_epoch or None)

    def epoch(self, record: EpochRecord) -> None:
        figures = {
            "loss/train": record.train_loss, "accuracy/train": record.train_acc,
            "loss/val": record.val_loss, "accuracy/val": record.val_acc,
            "lr/head": record.lr, "lr/backbone": record.backbone_lr,
        }
        for tag, value in figures.items():
            if value is not None:
                self.writer.add_scalar(tag, value, record.epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
