"""Fine-tuning a zoo model on the classes of a folder: ``fine_tune(TrainConfig(...)) -> TrainResult``.

* :mod:`~cnnlab.finetune.config`: :class:`TrainConfig` and the phases it asks for (no torch);
* :mod:`~cnnlab.finetune.data`: the splits (the data's own, or :mod:`cnnlab.split`'s), the
  training augmentation and loader, seeding;
* :mod:`~cnnlab.finetune.optim`: layer modes (BatchNorm policy), parameter groups, AdamW and
  torch's one-cycle or cosine schedule;
* :mod:`~cnnlab.finetune.loop`: :func:`train_one_epoch` and :func:`evaluate`;
* :mod:`~cnnlab.finetune.state`: the resume state, ``history.csv``, ``data_split.csv``, curves;
* :mod:`~cnnlab.finetune.run`: starting a run (settings, data, model) and finishing it (reports);
* :mod:`~cnnlab.finetune.recipe`: :func:`fine_tune`, the head phase and then the full network;
* :mod:`~cnnlab.finetune.result`: :class:`EpochRecord` and :class:`TrainResult` (no torch).

Outputs in ``out``: ``best.pt`` (lowest validation loss), ``last.pt`` (plus the optimiser and
scheduler state for ``resume``), ``history.csv``, ``curves.png``, ``metrics.json`` (the best model
on the test split, or on the validation split when there is none) and ``data_split.csv``. On
the CPU two runs with the same seed give identical histories, and ``resume=True`` continues from
``last.pt`` to exactly the weights an uninterrupted run ends with.

Names are imported on first use, so the CLI can read the config's defaults without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["Phase", "TrainConfig", "plan_phases"],
        "data": ["DataSplits", "TrainTransform", "make_train_loader", "prepare_data"],
        "loop": ["EpochStats", "Predictions", "evaluate", "evaluation_report", "train_one_epoch"],
        "optim": ["make_optimizer", "make_scheduler", "set_phase_modes"],
        "recipe": ["fine_tune"],
        "result": ["RUN_FILES", "EpochRecord", "TrainResult"],
        "state": ["RunState", "plot_curves", "read_history", "write_history"],
    },
)

if TYPE_CHECKING:
    from cnnlab.finetune.config import Phase, TrainConfig, plan_phases
    from cnnlab.finetune.data import (
        DataSplits,
        TrainTransform,
        make_train_loader,
        prepare_data,
    )
    from cnnlab.finetune.loop import (
        EpochStats,
        Predictions,
        evaluate,
        evaluation_report,
        train_one_epoch,
    )
    from cnnlab.finetune.optim import make_optimizer, make_scheduler, set_phase_modes
    from cnnlab.finetune.recipe import fine_tune
    from cnnlab.finetune.result import RUN_FILES, EpochRecord, TrainResult
    from cnnlab.finetune.state import RunState, plot_curves, read_history, write_history
