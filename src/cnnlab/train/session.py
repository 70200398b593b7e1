"""A training run in progress: :class:`TrainingRun` (what the epochs work with) and :func:`finish_run`.

:func:`cnnlab.train.start.start_run` builds a :class:`TrainingRun` from a :class:`TrainConfig`;
:func:`cnnlab.train.fine_tune` runs its phases; :func:`finish_run` reports ``best.pt`` on the test and
validation splits and writes ``metrics.json``, ``curves.png`` and ``report.html`` (:mod:`cnnlab.train.report`).

With ``ema`` the run keeps an exponential moving average of the weights (torch's
:class:`~torch.optim.swa_utils.AveragedModel` with ``get_ema_multi_avg_fn``, updated after every
optimiser step, buffers included): validation, ``best.pt`` and ``last.pt``'s ``state_dict`` are
the averaged weights; ``last.pt`` keeps the raw training weights in its ``resume`` entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from cnnlab.errors import DatasetError
from cnnlab.imagedata.datasets import LabelledImages, SkippedFile
from cnnlab.jsonable import to_jsonable
from cnnlab.models.checkpoint import HeadInfo, make_checkpoint, read_checkpoint, save_checkpoint
from cnnlab.models.load import LoadedModel
from cnnlab.options import BNPolicy
from cnnlab.outputs import atomic_write
from cnnlab.progress import Progress
from cnnlab.runtime.features import FeatureStore
from cnnlab.runtime.inference import Batch
from cnnlab.train.augment import make_transform
from cnnlab.train.config import BatchPlan, Phase, ResolvedSettings, TrainConfig, plan_batches
from cnnlab.train.data import DataSplits, make_train_loader
from cnnlab.train.loop import Predictions, evaluate, evaluation_report
from cnnlab.train.mixing import choose_mix, interpolate, score_mixes
from cnnlab.train.refit import can_refit, refit_head
from cnnlab.train.report import REPORT_FILE, SplitPredictions, write_run_report
from cnnlab.train.result import RUN_FILES, EpochRecord, TrainResult
from cnnlab.train.state import RunState, plot_curves, write_history
from cnnlab.train.tblog import TensorBoardLog
from cnnlab.train.unknown import CHECKPOINT_KEY, calibrate_unknown

#: Bounds of the EMA decay chosen from the run's length (``1 - 10 / steps``).
EMA_DECAY_RANGE = (0.5, 0.9998)


def ema_decay(total_steps: int, given: float | None = None) -> float:
    """The EMA decay: ``given``, else one that averages over about the last tenth of the run's steps."""
    if given is not None:
        return given
    lo, hi = EMA_DECAY_RANGE
    return min(hi, max(lo, 1.0 - 10.0 / max(total_steps, 1)))


@dataclass
class TrainingRun:
    """Everything one training run works with."""

    config: TrainConfig
    out: Path
    splits: DataSplits
    #: The network being trained, wrapped for the run's classes, preprocessing, device and precision.
    model: LoadedModel
    head_info: HeadInfo
    bn: BNPolicy
    #: The early layers that keep their weights in SGD phases (``frozen_stride``, :func:`~cnnlab.train.optim.early_layers`).
    frozen: list[nn.Module]
    #: Side of the training crops: ``train_size_ratio`` of the evaluation crop
    #: (:func:`~cnnlab.train.config.train_crop_size`), or the evaluation crop where the network
    #: cannot train on the smaller one (:func:`~cnnlab.train.start.resolve_train_size`).
    train_size: int
    workers: int
    result: TrainResult
    progress: Progress
    #: The run's phases (:func:`cnnlab.train.config.plan_phases`).
    phases: list[Phase]
    #: What the run trains and validates on (:mod:`cnnlab.models.leakage`), stored in every checkpoint.
    data_record: dict[str, Any]
    #: ``last.pt``'s ``resume`` entry, until the interrupted phase has taken its states.
    resume: dict[str, Any] | None = None
    ema: AveragedModel | None = None
    #: The validation predictions of the best epoch so far in this process (``best.pt``'s on the validation
    #: split), which :func:`finish_run` reports instead of evaluating ``best.pt`` on those images again.
    best_val: Predictions | None = None
    #: The probe's weights (the start of the line that :mod:`cnnlab.train.mixing` scores), in the default layout
    #: on the CPU (``last.pt`` keeps them for a resumed run); ``None`` in a run without a probe.
    probe_state: dict[str, torch.Tensor] | None = None
    #: The probe's validation predictions (epoch 0) when this process fitted it: the mix's share 0.
    probe_val: Predictions | None = None
    #: Features of the run's training and validation images by the *pretrained* network (the probe's backbone),
    #: computed by the split, when the run fine-tunes the offline model from its pretrained weights; ``None``
    #: otherwise. A resumed run has them too while ``model`` holds trained weights: use them only for the probe's
    #: network.
    pretrained_features: FeatureStore | None = None
    #: The pretrained ImageNet classifier, for the zero-shot figure (:mod:`cnnlab.train.zero_shot`).
    imagenet_head: nn.Linear | None = None
    tensorboard: TensorBoardLog | None = None
    generator: torch.Generator = field(default_factory=torch.Generator)
    #: The lock on the run folder (:func:`~cnnlab.train.start.start_run`), closed when the run ends.
    locks: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _skipped_paths: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self._skipped_paths = {s.path for s in self.result.skipped}

    @property
    def resolved(self) -> ResolvedSettings:
        """What the run resolved its automatic settings to (:func:`~cnnlab.train.start.start_run` sets them)."""
        assert self.result.resolved is not None
        return self.result.resolved

    @property
    def head(self) -> nn.Module:
        """The new classifier layer."""
        return self.model.module.get_submodule(self.head_info.path)

    @property
    def eval_model(self) -> LoadedModel:
        """The weights that are validated and saved: the moving average with ``ema``, else the model."""
        if self.ema is None or int(self.ema.n_averaged) == 0:
            return self.model
        return dataclasses.replace(self.model, module=self.ema.module)

    def note(self, message: str, *, warning: bool = False) -> None:
        """Tell the user; warnings are also kept in the result."""
        if warning:
            self.result.warnings.append(message)
        self.progress.note(message, warning=warning)

    def skip(self, files: list[SkippedFile]) -> None:
        """Record undecodable files (each once); raise :class:`DatasetError` when they are every
        training image of a class (a class the network could never learn)."""
        new = False
        for s in files:
            if s.path not in self._skipped_paths:
                self._skipped_paths.add(s.path)
                self.result.skipped.append(s)
                new = True
        if new:
            self._check_classes_decodable()

    def _check_classes_decodable(self) -> None:
        train = self.splits.train
        total = train.class_counts()
        failed: dict[str, int] = {}
        for path, target in zip(train.paths, train.targets):
            if str(path) in self._skipped_paths:
                name = train.classes[target]
                failed[name] = failed.get(name, 0) + 1
        lost = [name for name, n in failed.items() if n >= total.get(name, 0) > 0]
        if lost:
            examples = [s for s in self.result.skipped if s.label in lost][:3]
            raise DatasetError(
                f"none of the training images of class(es) {', '.join(lost)} could be decoded, e.g. "
                + "; ".join(f"{s.path}: {s.reason}" + (f" ({s.detail})" if s.detail else "") for s in examples)
                + ". Fix or remove those files or class folders"
            )

    def batch_plan(self, phase: Phase) -> BatchPlan:
        """How ``phase`` walks through the training images."""
        c = self.config
        return plan_batches(len(self.splits.train), phase.epochs, c.batch_size, c.min_phase_steps)

    def train_loader(self, phase: Phase) -> DataLoader[Batch]:
        """The augmented, shuffled training batches of ``phase``."""
        c, plan = self.config, self.batch_plan(phase)
        transform = make_transform(self.model.preprocessing, c.augment, crop_scale=c.crop_scale, hflip=c.hflip,
                                   color_jitter=c.color_jitter, crop_size=self.train_size)
        return make_train_loader(self.splits.train, transform, batch_size=plan.batch_size, workers=self.workers,
                                 balance=c.balance, generator=self.generator, device_type=self.model.device.type,
                                 drop_last=plan.drop_last)

    def sgd_steps(self) -> int:
        """Optimiser steps of the whole run."""
        return sum(self.batch_plan(p).steps(p.epochs) for p in self.phases if p.name != "probe")

    def start_ema(self) -> None:
        """Start the moving average of the weights (``ema``), from ``last.pt``'s state when resuming."""
        if not self.config.ema or self.ema is not None:
            return
        decay = ema_decay(self.sgd_steps(), self.config.ema_decay)
        self.ema = AveragedModel(self.model.module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        if self.resume is not None and self.resume.get("ema") is not None:
            self.ema.load_state_dict(self.resume["ema"])

    def evaluate(self, images: LabelledImages, description: str) -> Predictions:
        """The validated weights (in eval mode) over ``images``; skipped files are recorded."""
        preds = evaluate(self.eval_model, images, batch_size=self.config.batch_size, workers=self.workers,
                         progress=self.progress, description=description)
        self.skip(preds.skipped)
        return preds

    def keep_if_best(self, val: Predictions | None, is_best: bool) -> None:
        """Keep the validation predictions of a new best epoch (see ``best_val``)."""
        if is_best:
            self.best_val = val

    def checkpoint(self, metrics: dict[str, Any], resume: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint dict of the validated weights as they are now."""
        return make_checkpoint(
            arch=self.model.spec.name,  # the registry entry it was trained from
            head=self.head_info,
            classes=self.splits.classes,
            preprocessing=self.model.preprocessing,
            state_dict=self.eval_model.module.state_dict(),
            train_args=self.result.train_args,
            metrics=metrics,
            resume=resume,
            data_record=self.data_record,
            resolved=self.result.resolved.to_dict() if self.result.resolved is not None else None,
        )

    def save_epoch(self, state: RunState, record: EpochRecord, is_best: bool, resume: dict[str, Any]) -> None:
        """TensorBoard scalars, ``best.pt`` (when ``is_best``), ``last.pt`` with ``resume``, ``history.csv``."""
        if self.tensorboard is not None:
            self.tensorboard.epoch(record)
        if self.ema is not None:  # the raw weights go on training
            resume = {**resume, "model": self.model.module.state_dict(), "ema": self.ema.state_dict()}
        if self.probe_state is not None:  # a resumed run mixes its best epoch with the probe too
            resume = {**resume, "probe": self.probe_state}
        metrics = {k: v for k, v in record.to_dict().items() if k != "seconds"}
        if is_best:
            save_checkpoint(self.checkpoint(metrics), self.out / "best.pt")
        save_checkpoint(self.checkpoint(metrics, resume), self.out / "last.pt")
        write_history(state.history, self.out / "history.csv")


def finish_run(run: TrainingRun, state: RunState) -> TrainResult:
    """Report ``best.pt`` on the test split (else val); write ``metrics.json``, ``curves.png`` and ``report.html``.

    The test split is evaluated with ``best.pt``'s weights loaded into the run's model; the validation report
    is the best epoch's own validation (``best_val``), evaluated again only when this process did not see
    that epoch (a resumed run). Both are evaluated as the run evaluates, in its precision and, on the CPU,
    its channels-last layout: ``predict`` and ``bench`` load ``best.pt`` in the default layout, and their logits
    can differ from these in the fifth decimal.
    """
    result, out, classes = run.result, run.out, run.splits.classes
    result.history = list(state.history)
    result.best_epoch, result.best_val_loss = state.best_epoch, state.best_val_loss
    result.stopped_early = list(state.stopped_early)
    if run.tensorboard is not None:
        run.tensorboard.close()
    best = read_checkpoint(out / "best.pt")
    run.ema = None  # the best weights (averaged or not) are evaluated in the model itself
    run.model.module.load_state_dict(best["state_dict"])
    if run.splits.val is not None and state.best_epoch:  # the best epoch trained: mix it with the probe
        _mix_with_probe(run, best)
    if run.splits.val is not None and run.config.refit:  # the chosen network's head, fitted on every labelled image
        _refit(run, best)
    reports: dict[str, Any] = {}
    held_out: list[SplitPredictions] = []  # for report.html
    for name, part in (("val", run.splits.val), ("test", run.splits.test)):
        if part is not None:  # best.pt's validation predictions are at hand unless this process resumed after it
            preds = run.best_val if name == "val" and run.best_val is not None else run.evaluate(part, f"best.pt on {name}")
            reports[name] = {**evaluation_report(preds.logits, preds.targets, classes), "skipped": len(preds.skipped)}
            held_out.append(_split_predictions(name, part, preds))
            if name == "val":  # "none of these": calibrated on validation (cnnlab.train.unknown)
                best[CHECKPOINT_KEY] = calibrate_unknown(
                    preds.logits, calibrated_on="val, out of fold" if result.refit is not None else "val")
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
            else "no validation or test images: no held-out figures"
            if result.evaluated_on is None
            else "no test split: validation figures, and the validation split chose the best epoch (optimistic)"
            + ("; the refitted head's validation figures are out of fold" if result.refit is not None else "")
        ),
        **reports,
        "class_counts": result.class_counts,
        "split_source": result.split_source,
        "skipped": [s.to_dict() for s in result.skipped],
        "train_args": result.train_args,
        "resolved": result.resolved.to_dict() if result.resolved is not None else None,
        "selection": result.selection,
        "zero_shot": result.zero_shot,
        "weight_mix": result.weight_mix,
        "mix_scores": [m.to_dict() for m in result.mix_scores],
        "refit": result.refit,
        "unknown": best.get(CHECKPOINT_KEY),
    }
    atomic_write(out / "metrics.json", json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n")
    best["metrics"] = {
        **best.get("metrics", {}),
        "evaluated_on": result.evaluated_on,
        **{f"{name}_top1": rep.get("top1") for name, rep in reports.items()},
        **{f"{name}_n": rep.get("n") for name, rep in reports.items()},
    }
    save_checkpoint(best, out / "best.pt")
    start = "random weights" if result.random_weights else "pretrained"
    plot_curves(result.history, out / "curves.png", title=f"{result.arch} ({start}) on {len(classes)} classes",
                best_epoch=result.best_epoch)
    write_run_report(result, held_out, run.model, out)
    run.note(f"wrote {', '.join(dict.fromkeys((*RUN_FILES, REPORT_FILE)))} to {out}")
    return result


def _split_predictions(name: str, part: LabelledImages, preds: Predictions) -> SplitPredictions:
    """``preds`` with the file of each row: those of ``part`` that decoded, in order."""
    skipped = {s.path for s in preds.skipped}
    paths = [p for p in part.paths if str(p) not in skipped]
    if len(paths) != len(preds.targets):  # a file listed twice and skipped once: the report goes without names
        paths = [Path(f"{name}-{i}") for i in range(len(preds.targets))]
    return SplitPredictions(name, paths, preds.logits, preds.targets)


def _mix_with_probe(run: TrainingRun, best: dict[str, Any]) -> None:
    """Score points between the probe's and ``best``'s weights on validation (:mod:`cnnlab.train.mixing`); put
    the chosen one in the run's model, ``best`` and ``run.best_val``."""
    assert run.splits.val is not None
    if run.probe_state is None:  # no probe (or a last.pt written before the probe's weights were kept)
        return
    if best.get("metrics", {}).get("weight_mix") is not None:  # mixed already (a finished run resumed)
        run.result.weight_mix = best["metrics"]["weight_mix"]
        return
    # the ends of the line were validated when they were trained (in this process): the probe at epoch 0, best.pt
    # at its epoch
    seen: dict[float, Predictions] = {share: preds for share, preds in ((0.0, run.probe_val), (1.0, run.best_val))
                                      if preds is not None}
    mixing: list[Predictions] = []

    def validate(weights: dict[str, torch.Tensor]) -> tuple[float, float]:
        assert run.splits.val is not None
        run.model.module.load_state_dict(weights)
        preds = run.evaluate(run.splits.val, "mixing with the probe")
        mixing.append(preds)
        return preds.accuracy, preds.loss

    tuned = best["state_dict"]
    scores = score_mixes(run.probe_state, tuned, validate,
                         known={share: (preds.accuracy, preds.loss) for share, preds in seen.items()})
    seen.update(zip([s.share for s in scores if s.share not in seen], mixing))  # validated in the grid's order
    chosen = choose_mix(scores)
    weights = interpolate(run.probe_state, tuned, chosen.share)
    run.model.module.load_state_dict(weights)
    best["state_dict"] = weights
    best["metrics"] = {**best.get("metrics", {}), "weight_mix": chosen.share}
    run.best_val = seen[chosen.share]
    run.result.weight_mix, run.result.mix_scores = chosen.share, scores
    run.note(f"best.pt: {chosen.share:g} of the fine-tuned weights (epoch {run.result.best_epoch}) and "
             f"{1 - chosen.share:g} of the probe's, val acc {chosen.accuracy:.1%} loss {chosen.loss:.4f} ("
             + ", ".join(f"{s.share:g}: {s.accuracy:.1%}" for s in scores) + ")")


def _refit(run: TrainingRun, best: dict[str, Any]) -> None:
    """Refit the head of the run's model (``best``'s weights) on every labelled image (:mod:`cnnlab.train.refit`);
    put it in the model and ``best``, and the out-of-fold validation logits in ``run.best_val``."""
    assert run.splits.val is not None
    head = run.head
    if not can_refit(head):
        run.note(f"refit: skipped, the head of {run.model.spec.name} is not a linear layer")
        return
    stored = best.get("metrics", {}).get("refit")  # a finished run resumed: its head is refitted already
    if stored is None:
        before_acc = (run.best_val if run.best_val is not None else run.evaluate(run.splits.val, "best.pt on val")).accuracy
    else:  # best.pt's head saw the validation images: the figure from before the refit is the stored one
        before_acc = stored["val_acc_before"]
    try:
        # the probe's end of the mix is the starting network with a new head: the same features
        unchanged = run.result.best_epoch == 0 or run.result.weight_mix == 0.0
        fit = refit_head(run.model, head, run.splits.train, run.splits.val, batch_size=run.config.batch_size,
                         workers=run.workers, balance=run.config.balance, seed=run.config.seed, progress=run.progress,
                         known=run.pretrained_features if unchanged else None)
    except DatasetError as exc:  # e.g. no validation image decodes: the head stays as chosen
        run.note(f"refit: skipped, {exc}", warning=True)
        return
    run.skip(fit.skipped)
    with torch.no_grad():
        head.weight.copy_(fit.weight.to(head.weight))
        if fit.bias is not None and head.bias is not None:
            head.bias.copy_(fit.bias.to(head.bias))
    prefix = f"{run.head_info.path}."
    state = dict(best["state_dict"])
    for name, value in head.state_dict().items():
        state[prefix + name] = value.detach().to("cpu", copy=True)
    best["state_dict"] = state
    run.best_val = Predictions(fit.val_logits, fit.val_targets, fit.val_skipped)
    record = {"images": fit.images, "folds": fit.folds, "val_acc_before": before_acc,
              "val_acc": run.best_val.accuracy, "val_loss": run.best_val.loss}
    run.result.refit = record
    best["metrics"] = {**best.get("metrics", {}), "refit": record}
    run.note(f"best.pt: head refitted on {fit.images} training and validation images; validation "
             f"{run.best_val.accuracy:.1%} out of {fit.folds} folds ({before_acc:.1%} before the refit)")
