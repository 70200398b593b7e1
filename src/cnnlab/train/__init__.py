"""`train`: fine-tuning a zoo model on the classes of a folder: ``run(TrainConfig(...)) -> TrainResult`` (also
``fine_tune``, its public name as ``cnnlab.fine_tune``).

* :mod:`~cnnlab.train.config`: :class:`TrainConfig` and the phases it asks for (no torch);
* :mod:`~cnnlab.train.data`: the splits (the data's own, or :mod:`cnnlab.imagedata.splits`'s), the
  training loader, seeding;
* :mod:`~cnnlab.train.augment`: augmentation presets and MixUp/CutMix;
* :mod:`~cnnlab.train.probe`: the linear probe that initialises the head (``freeze``: the probe alone);
* :mod:`~cnnlab.train.optim`: layer modes (BatchNorm policy), parameter groups, AdamW and
  torch's one-cycle or cosine schedule;
* :mod:`~cnnlab.train.loop`: :func:`training_step` (shared with the LR finder), :func:`train_one_epoch`
  and :func:`evaluate`;
* :mod:`~cnnlab.train.state`: the resume state, the run folder's rules, ``history.csv``, ``data_split.csv``,
  curves;
* :mod:`~cnnlab.train.start`: starting a run (settings, data, the starting model: a registry
  model, a checkpoint to continue from, or ``last.pt`` to resume);
* :mod:`~cnnlab.train.session`: the run in progress (loaders, EMA, checkpoints) and finishing it (reports);
* :mod:`~cnnlab.train.recipe`: :func:`fine_tune`: the probe, the head phase, the full network;
* :mod:`~cnnlab.train.lr_find`: :func:`find_lr`, the learning-rate range test;
* :mod:`~cnnlab.models.leakage`: the data record in checkpoints and :func:`overlap` for bench/predict;
* :mod:`~cnnlab.train.tblog`: TensorBoard event files;
* :mod:`~cnnlab.train.result`: :class:`EpochRecord` and :class:`TrainResult` (no torch).

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
        "config": ["BatchPlan", "Phase", "ResolvedSettings", "TrainConfig", "plan_batches", "plan_phases"],
        "data": ["DataSplits", "make_train_loader", "prepare_data"],
        "lr_find": ["LRFinderResult", "find_lr"],
        "probe": ["fit_logistic"],
        "loop": ["EpochStats", "Predictions", "Step", "evaluate", "evaluation_report", "train_one_epoch", "training_step"],
        "optim": ["make_optimizer", "make_scheduler", "set_phase_modes"],
        "recipe": ["fine_tune", "run"],
        "result": ["RUN_FILES", "EpochRecord", "TrainResult"],
        "state": ["RunState", "plot_curves", "read_history", "write_history"],
    },
)

if TYPE_CHECKING:
    from cnnlab.train.augment import TrainTransform, make_batch_mix
    from cnnlab.train.config import BatchPlan, Phase, ResolvedSettings, TrainConfig, plan_batches, plan_phases
    from cnnlab.train.data import DataSplits, make_train_loader, prepare_data
    from cnnlab.train.loop import (
        EpochStats,
        Predictions,
        Step,
        evaluate,
        evaluation_report,
        train_one_epoch,
        training_step,
    )
    from cnnlab.train.lr_find import LRFinderResult, find_lr
    from cnnlab.train.optim import make_optimizer, make_scheduler, set_phase_modes
    from cnnlab.train.probe import fit_logistic
    from cnnlab.train.recipe import fine_tune, run
    from cnnlab.train.result import RUN_FILES, EpochRecord, TrainResult
    from cnnlab.train.state import RunState, plot_curves, read_history, write_history
