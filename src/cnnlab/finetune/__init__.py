"""Fine-tuning a zoo model on the classes of a folder: ``fine_tune(TrainConfig(...)) -> TrainResult``.

* :mod:`~cnnlab.finetune.config`: :class:`TrainConfig` and the phases it asks for (no torch);
* :mod:`~cnnlab.finetune.data`: the splits (the data's own, or :mod:`cnnlab.split`'s), the
  training loader, seeding;
* :mod:`~cnnlab.finetune.augment`: augmentation presets and MixUp/CutMix;
* :mod:`~cnnlab.finetune.probe`: the linear probe that initialises the head (``freeze``: the probe alone);
* :mod:`~cnnlab.finetune.optim`: layer modes (BatchNorm policy), parameter groups, AdamW and
  torch's one-cycle or cosine schedule;
* :mod:`~cnnlab.finetune.loop`: :func:`train_one_epoch` and :func:`evaluate`;
* :mod:`~cnnlab.finetune.state`: the resume state, ``history.csv``, ``data_split.csv``, curves;
* :mod:`~cnnlab.finetune.start`: starting a run (settings, data, the starting model: a registry
  model, a checkpoint to continue from, or ``last.pt`` to resume);
* :mod:`~cnnlab.finetune.run`: the run in progress (loaders, EMA, checkpoints) and finishing it (reports);
* :mod:`~cnnlab.finetune.recipe`: :func:`fine_tune`: the probe, the head phase, the full network;
* :mod:`~cnnlab.finetune.lr_find`: :func:`find_lr`, the learning-rate range test;
* :mod:`~cnnlab.finetune.leakage`: the data record in checkpoints and :func:`overlap` for bench/predict;
* :mod:`~cnnlab.finetune.tblog`: TensorBoard event files;
* :mod:`~cnnlab.finetune.result`: :class:`EpochRecord` and :class:`TrainResult` (no torch).

Outputs in ``out``: ``best.pt`` (lowest validation loss), ``last.pt`` (plus the optimiser and
scheduler state for ``resume``), ``history.csv``, ``curves.png``, ``metrics.json`` (the best model
on the test split, or on the validation split when there is none), ``data_split.csv`` and, with
``tensorboard``, ``tensorboard/``. On
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
        "augment": ["TrainTransform", "make_batch_mix"],
        "config": ["BatchPlan", "Phase", "TrainConfig", "plan_batches", "plan_phases"],
        "data": ["DataSplits", "make_train_loader", "prepare_data"],
        "leakage": ["OverlapReport", "overlap"],
        "lr_find": ["LRFinderResult", "find_lr"],
        "probe": ["fit_logistic"],
        "loop": ["EpochStats", "Predictions", "evaluate", "evaluation_report", "train_one_epoch"],
        "optim": ["make_optimizer", "make_scheduler", "set_phase_modes"],
        "recipe": ["fine_tune"],
        "result": ["RUN_FILES", "EpochRecord", "TrainResult"],
        "state": ["RunState", "plot_curves", "read_history", "write_history"],
    },
)

if TYPE_CHECKING:
    from cnnlab.finetune.augment import TrainTransform, make_batch_mix
    from cnnlab.finetune.config import BatchPlan, Phase, TrainConfig, plan_batches, plan_phases
    from cnnlab.finetune.data import DataSplits, make_train_loader, prepare_data
    from cnnlab.finetune.leakage import OverlapReport, overlap
    from cnnlab.finetune.loop import (
        EpochStats,
        Predictions,
        evaluate,
        evaluation_report,
        train_one_epoch,
    )
    from cnnlab.finetune.lr_find import LRFinderResult, find_lr
    from cnnlab.finetune.optim import make_optimizer, make_scheduler, set_phase_modes
    from cnnlab.finetune.probe import fit_logistic
    from cnnlab.finetune.recipe import fine_tune
    from cnnlab.finetune.result import RUN_FILES, EpochRecord, TrainResult
    from cnnlab.finetune.state import RunState, plot_curves, read_history, write_history
