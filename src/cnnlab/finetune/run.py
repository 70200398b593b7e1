"""Starting and finishing a training run: settings, data, model, run folder; final evaluation and reports.

:func:`start_run` turns a :class:`TrainConfig` into a :class:`TrainingRun` (everything the epochs
work with) and the :class:`RunState` to continue from; :func:`finish_run` evaluates ``best.pt``
and writes ``metrics.json`` and ``curves.png``. :func:`cnnlab.finetune.fine_tune` runs the
epochs in between.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.checkpoint import (
    HeadInfo,
    base_spec,
    build_finetuned,
    make_checkpoint,
    read_checkpoint,
    replace_head,
    save_checkpoint,
)
from cnnlab.datasets import LabelledImages, SkippedFile
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.finetune.config import TrainConfig, resumed_config
from cnnlab.finetune.data import (
    DataSplits,
    TrainTransform,
    make_train_loader,
    prepare_data,
    seed_everything,
)
from cnnlab.finetune.loop import Predictions, evaluate, evaluation_report
from cnnlab.finetune.result import RUN_FILES, EpochRecord, TrainResult
from cnnlab.finetune.state import (
    RunState,
    check_out,
    plot_curves,
    read_resume_checkpoint,
    reset_out,
    write_history,
    write_split_csv,
)
from cnnlab.inference import Batch, default_workers
from cnnlab.jsonable import to_jsonable
from cnnlab.models import (
    LoadedModel,
    load_model,
    precision_dtype,
    resolve_device,
    resolve_precision,
)
from cnnlab.options import BNPolicy, Precision
from cnnlab.preprocess import Preprocessing
from cnnlab.progress import Progress
from cnnlab.zoo import ModelSpec

#: Ratio of the largest to the smallest training class above which a warning suggests ``balance``.
IMBALANCE_WARNING = 3.0
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


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
    workers: int
    result: TrainResult
    progress: Progress
    #: ``last.pt``'s ``resume`` entry, until the interrupted phase has taken its optimiser states.
    resume: dict[str, Any] | None = None
    generator: torch.Generator = field(default_factory=torch.Generator)
    loader: DataLoader[Batch] = field(init=False, repr=False)
    _skipped_paths: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        c, pp = self.config, self.model.preprocessing
        transform = (TrainTransform(pp, crop_scale=c.crop_scale, hflip=c.hflip, color_jitter=c.color_jitter)
                     if c.augment else pp)
        self.loader = make_train_loader(self.splits.train, transform, batch_size=c.batch_size, workers=self.workers,
                                        balance=c.balance, generator=self.generator,
                                        device_type=self.model.device.type)
        self._skipped_paths = {s.path for s in self.result.skipped}

    @property
    def head(self) -> nn.Module:
        """The new classifier layer."""
        return self.model.module.get_submodule(self.head_info.path)

    def note(self, message: str, *, warning: bool = False) -> None:
        """Tell the user; warnings are also kept in the result."""
        if warning:
            self.result.warnings.append(message)
        self.progress.note(message, warning=warning)

    def skip(self, files: list[SkippedFile]) -> None:
        """Record undecodable files (each once)."""
        for s in files:
            if s.path not in self._skipped_paths:
                self._skipped_paths.add(s.path)
                self.result.skipped.append(s)

    def evaluate(self, images: LabelledImages, description: str) -> Predictions:
        """The model (in eval mode) over ``images``; skipped files are recorded."""
        preds = evaluate(self.model, images, batch_size=self.config.batch_size, workers=self.workers,
                         progress=self.progress, description=description)
        self.skip(preds.skipped)
        return preds

    def checkpoint(self, metrics: dict[str, Any], resume: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint dict of the model as it is now."""
        return make_checkpoint(
            arch=self.model.spec.name,  # the registry entry it was trained from
            head=self.head_info,
            classes=self.splits.classes,
            preprocessing=self.model.preprocessing,
            state_dict=self.model.module.state_dict(),
            train_args=self.result.train_args,
            metrics=metrics,
            resume=resume,
        )

    def save_epoch(self, state: RunState, record: EpochRecord, is_best: bool, resume: dict[str, Any]) -> None:
        """``best.pt`` (when ``is_best``), ``last.pt`` with the ``resume`` entry, and ``history.csv``."""
        metrics = {k: v for k, v in record.to_dict().items() if k != "seconds"}
        if is_best:
            save_checkpoint(self.checkpoint(metrics), self.out / "best.pt")
        save_checkpoint(self.checkpoint(metrics, resume), self.out / "last.pt")
        write_history(state.history, self.out / "history.csv")


def start_run(config: TrainConfig, progress: Progress) -> tuple[TrainingRun, RunState]:
    """Check the settings, read and split the data, build the model, prepare the run folder.

    With ``config.resume`` the settings, weights and progress come from ``last.pt`` in
    ``config.out``. Nothing is written before the data has been read and the model built.
    """
    config.validate()
    stored: dict[str, Any] | None = None
    notes: list[str] = []
    if config.resume:
        stored = read_resume_checkpoint(Path(config.out))
        config, notes = resumed_config(config, stored["train_args"])
        config.validate()
    if config.data is None:
        raise UsageError("no training data: pass --data DIR (a class-folder tree, a manifest or a split folder)")
    if Path(config.model).suffix in _CHECKPOINT_SUFFIXES and Path(config.model).is_file():
        raise UsageError(f"--model {config.model} is a checkpoint; training starts from a registry model "
                         "(to continue an interrupted run use --resume with its --out)")
    out = check_out(config)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    splits = prepare_data(config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                          seed=config.seed, near_dup_threshold=config.near_dup_threshold, progress=progress)
    seed_everything(config.seed)  # the random parts of the model (the new head) are reproducible
    if stored is not None:
        spec = base_spec(stored, out / "last.pt")
        _check_same_data(stored, splits, config.data)
        module = build_finetuned(spec, len(splits.classes), stored["state_dict"])
        head_info = HeadInfo(**stored["head"])
    else:
        loaded = load_model(config.model, weights=config.weights, weights_dir=config.weights_dir,
                            random_weights=config.random_weights, device="cpu",
                            progress=type(progress) is not Progress)  # a display was given: show downloads
        spec, module = loaded.spec, loaded.module
        head_info = replace_head(module, len(splits.classes))
        reset_out(out)
    bn = config.bn if config.bn is not BNPolicy.AUTO else (BNPolicy.TRAIN if config.random_weights else BNPolicy.FROZEN)
    model = _wrap(spec, module, splits.classes, _run_preprocessing(spec, config.image_size), device, precision)
    result = TrainResult(
        out=out, model=config.model, arch=spec.name, classes=splits.classes, random_weights=config.random_weights,
        device=str(device), precision=precision.value, bn=bn.value,
        head=f"{head_info.path}: {head_info.kind} {head_info.in_features} -> {head_info.num_classes}",
        split_source=splits.source, class_counts=splits.class_counts(), n_train=len(splits.train),
        n_val=len(splits.val) if splits.val else 0, n_test=len(splits.test) if splits.test else 0,
        skipped=list(splits.skipped),
        train_args={**config.to_dict(), "arch": spec.name, "bn_resolved": bn.value,
                    "precision_resolved": precision.value},
    )
    workers = default_workers(device.type) if config.workers is None else config.workers
    run = TrainingRun(config=config, out=out, splits=splits, model=model, head_info=head_info, bn=bn,
                      workers=workers, result=result, progress=progress)
    for n in notes:
        run.note(n, warning=True)
    _describe(run)
    if stored is None:
        write_split_csv(splits, out / "data_split.csv")
        return run, RunState()
    run.resume = stored["resume"]
    state = RunState.from_dict(stored["resume"]["state"])
    result.resumed_from_epoch = state.epochs_done
    run.note(f"resuming after epoch {state.epochs_done}")
    return run, state


def _check_same_data(stored: dict[str, Any], splits: DataSplits, data: str) -> None:
    if list(stored["classes"]) != splits.classes:
        raise CnnlabError(
            f"the classes in {data} ({', '.join(splits.classes)}) differ from those of the run "
            f"({', '.join(stored['classes'])}); resume needs the same data"
        )
    if stored["resume"].get("data_fingerprint") != splits.fingerprint():
        raise CnnlabError(f"the images in {data} or their split changed since the run started; "
                          "resume needs the same data")


def _run_preprocessing(spec: ModelSpec, image_size: int | None) -> Preprocessing:
    """The weights' evaluation preprocessing, scaled to ``image_size`` when one is given."""
    pp = spec.preprocessing
    if image_size is None:
        return pp
    ratio = pp.resize_size / pp.crop_size
    return dataclasses.replace(pp, crop_size=image_size, resize_size=max(image_size, round(image_size * ratio)))


def _wrap(spec: ModelSpec, module: nn.Module, classes: list[str], preprocessing: Preprocessing,
          device: torch.device, precision: Precision) -> LoadedModel:
    """``module`` on ``device`` as a :class:`LoadedModel` over ``classes`` with the run's preprocessing."""
    if device.type == "cuda":  # as load_model does: TF32 matrix units only when asked for
        torch.backends.cuda.matmul.allow_tf32 = precision is Precision.TF32
        torch.backends.cudnn.allow_tf32 = precision is Precision.TF32
    run_spec = dataclasses.replace(spec, categories=tuple(classes), preprocessing=preprocessing)
    return LoadedModel(spec=run_spec, module=module.to(device), device=device, dtype=precision_dtype(precision),
                       precision=precision)


def _describe(run: TrainingRun) -> None:
    """Tell what the run is about to do, with the warnings that matter."""
    r, c = run.result, run.config
    if c.random_weights:
        run.note(f"starting from RANDOM weights ({run.model.spec.arch}): not a pretrained fine-tune", warning=True)
    run.note(f"model {r.arch}, new head {r.head}, BatchNorm {r.bn}, {r.precision} on {r.device}")
    run.note(f"data: {r.n_train} train / {r.n_val} val / {r.n_test} test images, {len(r.classes)} classes "
             f"({r.split_source})")
    run.note("train images per class: " + ", ".join(f"{k} {n}" for k, n in r.class_counts.items()))
    if run.splits.dropped_classes:
        run.note(f"class folder(s) without images left out: {', '.join(run.splits.dropped_classes)}", warning=True)
    if r.imbalance_ratio >= IMBALANCE_WARNING:
        advice = "classes are sampled equally (--balance)" if c.balance else "consider --balance"
        run.note(f"classes are imbalanced: the largest has {r.imbalance_ratio:.1f}x the images of the smallest; "
                 f"{advice}", warning=True)
    if run.splits.val is None:
        run.note("no validation images: no early stopping, and best.pt is the last epoch", warning=True)
    if run.splits.test is None:
        run.note("no test split: the final evaluation uses the validation images, which also chose the best epoch "
                 "(optimistic); use --test-fraction or a split.csv with a test split for an unbiased figure")


def finish_run(run: TrainingRun, state: RunState) -> TrainResult:
    """Evaluate ``best.pt`` on the test split (else val); write ``metrics.json`` and ``curves.png``."""
    result, out, classes = run.result, run.out, run.splits.classes
    result.history = list(state.history)
    result.best_epoch, result.best_val_loss = state.best_epoch, state.best_val_loss
    result.stopped_early = list(state.stopped_early)
    best = read_checkpoint(out / "best.pt")
    run.model.module.load_state_dict(best["state_dict"])
    reports: dict[str, Any] = {}
    for name, part in (("val", run.splits.val), ("test", run.splits.test)):
        if part is not None:
            preds = run.evaluate(part, f"best.pt on {name}")
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
    text = json.dumps(to_jsonable(metrics), indent=2, allow_nan=False)
    (out / "metrics.json").write_text(text + "\n", encoding="utf-8")
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
    run.note(f"wrote {', '.join(RUN_FILES)} to {out}")
    return result
