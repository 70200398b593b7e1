"""Starting a training run: settings, data, the starting model, the leakage record, the run folder.

The starting model is one of three:

* a registry model (``config.model``), whose ImageNet classifier is replaced by a new head;
* a checkpoint of ``cnnlab train`` (``--model runs/x/best.pt``): a *new* run continues from its
  weights. With the same classes (same names, same order) it keeps the trained head and skips the
  probe; with other classes the head is replaced (and fitted by the probe). The checkpoint's
  preprocessing is kept unless ``image_size`` is given, and its data record is inherited;
* ``last.pt`` of the run in ``config.out`` (``resume``), with the settings stored there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError, UsageError, WeightsIntegrityError
from cnnlab.imagedata.preprocess import MAX_INPUT_SIZE, Preprocessing
from cnnlab.models.checkpoint import (
    HeadInfo,
    base_spec,
    build_finetuned,
    checkpoint_preprocessing,
    find_head,
    read_checkpoint,
    replace_head,
)
from cnnlab.models.files import is_checkpoint_file
from cnnlab.models.leakage import make_record
from cnnlab.models.load import (
    LoadedModel,
    load_torch,
    precision_dtype,
    resolve_device,
    resolve_precision,
    set_tf32,
)
from cnnlab.models.registry import ModelSpec, get_spec
from cnnlab.options import Augment, BNPolicy, Precision, RuntimeOptions
from cnnlab.progress import Progress
from cnnlab.runtime.cores import default_workers
from cnnlab.runtime.features import FeatureStore
from cnnlab.train import tblog
from cnnlab.train.config import (
    ResolvedSettings,
    TrainConfig,
    plan_phases,
    resumed_config,
    stored_resolved,
    train_crop_size,
)
from cnnlab.train.data import DataSplits, prepare_data, seed_everything
from cnnlab.train.optim import early_layers, kept_layer_modes
from cnnlab.train.probe import PROBE_MAX_IMAGES
from cnnlab.train.result import TrainResult
from cnnlab.train.session import TrainingRun
from cnnlab.train.state import RunState, clear_run, read_resume_checkpoint, run_folder, write_split_csv
from cnnlab.train.zero_shot import keep_imagenet_head

#: Classes whose training images are counted one by one in the run's first notes; more get a summary.
MAX_LISTED_CLASSES = 30
#: Ratio of the largest to the smallest training class above which a warning suggests ``balance``.
IMBALANCE_WARNING = 3.0


@dataclass
class StartingModel:
    """The network a run starts from, before it is wrapped for the run's device and precision."""

    spec: ModelSpec  # the registry entry it was built from
    module: nn.Module
    head_info: HeadInfo
    preprocessing: Preprocessing
    random_weights: bool = False
    #: A continued run over the same classes keeps the trained head (no probe).
    keep_head: bool = False
    #: A continued run: the checkpoint and its data record.
    parent: str | None = None
    inherited: dict[str, Any] | None = None
    #: The pretrained ImageNet classifier the new head replaced (:mod:`cnnlab.train.zero_shot`), when one was kept.
    imagenet_head: nn.Linear | None = None


def is_checkpoint(name: str) -> bool:
    """Whether ``--model`` names a checkpoint file rather than a registry model."""
    return is_checkpoint_file(name)


def start_run(config: TrainConfig, progress: Progress, *, prepare_out: bool = True,
              range_test: bool = False) -> tuple[TrainingRun, RunState]:
    """Check the settings, read and split the data, build the model, prepare the run folder.

    With ``config.resume`` the settings, weights and progress come from ``last.pt`` in
    ``config.out``. Nothing is written before the data has been read and the model built (but for
    the lock file in a run folder that exists already); ``prepare_out=False`` writes nothing at all
    (the learning-rate finder, which locks the folder itself). ``range_test``: the run
    is prepared for the learning-rate range test, so the plan's warnings about the training schedule
    and validation, which do not apply to it, are left out.

    Every rule on the run folder is :class:`~cnnlab.outputs.OutputFolder`'s (:func:`~cnnlab.train.state.run_folder`):
    checked before any work; with ``prepare_out`` it is locked (a :class:`UsageError` when another run holds
    it) from the start when it exists, else from when it is made, until the run's ``locks`` are closed
    (:func:`cnnlab.train.fine_tune` does at its end).
    """
    with contextlib.ExitStack() as locks:
        run, state = _start_run(config, progress, prepare_out=prepare_out, range_test=range_test,
                                locks=locks if prepare_out else None)
        run.locks = locks.pop_all()  # released on an error above
    return run, state


def _start_run(config: TrainConfig, progress: Progress, *, prepare_out: bool, range_test: bool,
               locks: contextlib.ExitStack | None) -> tuple[TrainingRun, RunState]:
    config.validate()
    stored: dict[str, Any] | None = None
    notes: list[str] = []
    if config.resume:
        stored = read_resume_checkpoint(Path(config.out))
        config, notes = resumed_config(config, stored["train_args"], stored_resolved(stored))
        config.validate()
    if Path(config.model).suffix.lower() == ".onnx":
        raise UsageError(f"model {config.model} is an ONNX file: train needs PyTorch weights, a registry model or "
                         "a checkpoint of cnnlab train (runs/x/best.pt)")
    if stored is None:  # a name or file that cannot work is refused before the data are read
        if Path(config.model).is_dir():
            hint = f"; its best checkpoint is {Path(config.model) / 'best.pt'}" \
                if (Path(config.model) / "best.pt").is_file() else ""
            raise UsageError(f"model {config.model} is a folder: pass a registry model or a checkpoint file{hint}")
        if not is_checkpoint(config.model):
            get_spec(config.model)
        elif not Path(config.model).is_file():
            raise UsageError(f"model {config.model}: no such checkpoint file")
        elif config.weights is not None or config.random_weights:
            raise UsageError(f"model {config.model} is a checkpoint with its own weights: "
                             "weights and random_weights do not apply")
    if config.data is None:
        raise UsageError("no training data: give data (a class-folder tree, a manifest or a split folder)")
    folder = run_folder(config)
    folder.check_path()
    folder.check_outside_data()
    if config.tensorboard and prepare_out:
        tblog.check_available()
    locked = locks is not None and folder.path.is_dir()
    if locks is not None and locked:  # before the folder is checked for an earlier run
        locks.enter_context(folder.lock(error=UsageError))
    out = folder.check(replace=config.overwrite, resume=config.resume) if prepare_out else folder.path
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    store = FeatureStore()
    splits = prepare_data(config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                          seed=config.seed, near_dup_threshold=config.near_dup_threshold, crops=config.crops,
                          progress=progress, image_column=config.image_column, label_column=config.label_column,
                          store=store)
    seed_everything(config.seed)  # the random parts of the model (the new head) are reproducible
    if stored is not None:
        _check_same_data(stored, splits, config.data)
        start = _from_last(stored, out / "last.pt")
    else:
        start = _from_checkpoint(config, splits.classes) if is_checkpoint(config.model) else _from_registry(
            config, len(splits.classes), progress)
    with_probe = config.freeze or (config.probe and not start.keep_head)
    bn: BNPolicy = config.bn if config.bn is not BNPolicy.AUTO else (
        BNPolicy.TRAIN if start.random_weights else BNPolicy.FROZEN)
    stride = config.frozen_stride if config.frozen_stride is not None else (1 if start.random_weights else 4)
    if stored is not None:  # what the run resolved when it started (a run continued from a checkpoint of
        kept = stored_resolved(stored)  # random weights does not store random_weights itself)
        with_probe = bool(kept.get("probe", config.probe))
        bn = BNPolicy(kept.get("bn", bn))
        stride = int(kept.get("frozen_stride", stride))
    model = _wrap(start, splits.classes, device, precision)
    head_info = start.head_info
    phases = plan_phases(config, probe=with_probe)
    sgd = any(p.name != "probe" for p in phases)
    train_size, size_note = resolve_train_size(model, config) if sgd else (model.preprocessing.crop_size, None)
    frozen = early_layers(model.module, model.preprocessing.crop_size, stride,
                          head=model.module.get_submodule(head_info.path)) if sgd else []
    state = RunState.from_dict(stored["resume"]["state"]) if stored is not None else RunState()
    finished = stored is not None and state.phase_index >= len(phases)  # nothing is left to train
    if size_note and not finished:
        notes.append(size_note)
    result = TrainResult(
        out=out, model=config.model, arch=start.spec.name, classes=splits.classes,
        random_weights=start.random_weights, device=str(device), precision=precision.value, bn=bn.value,
        head=f"{head_info.path}: {head_info.kind} {head_info.in_features} -> {head_info.num_classes}"
             + (" (kept)" if start.keep_head else ""),
        split_source=splits.source, class_counts=splits.class_counts(), n_train=len(splits.train),
        n_val=len(splits.val) if splits.val else 0, n_test=len(splits.test) if splits.test else 0,
        skipped=list(splits.skipped),
        train_args={**config.to_dict(), "arch": start.spec.name,
                    **({"continued_from": start.parent} if start.parent else {})},
        resolved=ResolvedSettings(bn=bn, frozen_stride=stride, probe=with_probe, train_size=train_size,
                                  precision=precision),
    )
    record: dict[str, Any] = {}
    if stored is not None and stored.get("data_record"):
        record = stored["data_record"]
    elif prepare_out:  # not for the learning-rate finder, which writes no checkpoint
        record = make_record({name: (part.root, part.paths) for name, part in splits.parts() if name != "test"},
                             inherited=start.inherited, parent=start.parent, progress=progress)
    workers = default_workers(device.type) if config.workers is None else config.workers
    run = TrainingRun(config=config, out=out, splits=splits, model=model, head_info=head_info, bn=bn,
                      frozen=frozen, train_size=train_size, workers=workers, result=result, progress=progress,
                      phases=phases, data_record=record, imagenet_head=start.imagenet_head,
                      pretrained_features=_reusable(store, config, start, splits, device=device, precision=precision))
    for n in notes:
        run.note(n, warning=True)
    _describe(run, start, range_test=range_test, finished=finished)
    if stored is not None:
        run.resume = stored["resume"]
        run.probe_state = stored["resume"].get("probe")
        result.resumed_from_epoch = state.epochs_done
        if finished:
            run.note(f"the run in {out} had finished (epoch {state.epochs_done}): nothing is left to train; "
                     "best.pt is evaluated again and the reports rewritten", warning=True)
        else:
            run.note(f"resuming after epoch {state.epochs_done}")
    elif prepare_out:
        if locks is not None and not locked:  # the folder is made now: locked first, checked again under the lock
            folder.create()
            locks.enter_context(folder.lock(error=UsageError))
            folder.check(replace=config.overwrite)
        clear_run(folder)
        write_split_csv(splits, out / "data_split.csv")
    if config.tensorboard and prepare_out:
        run.tensorboard = tblog.TensorBoardLog(out, first_epoch=state.epochs_done + 1 if stored is not None else 0)
    return run, state


def _reusable(store: FeatureStore, config: TrainConfig, start: StartingModel, splits: DataSplits, *,
              device: torch.device, precision: Precision) -> FeatureStore | None:
    """``store``, cut to the training and validation images, when the run starts from the network that computed it
    (its registry model with the default pretrained weights and preprocessing, in fp32 on the CPU, as the split ran
    it; a resumed run too, so that it ends as the uninterrupted run did) and holds no more images than the probe
    fits on (:data:`~cnnlab.train.probe.PROBE_MAX_IMAGES`: the store's memory stays as bounded as the probe's);
    else ``None``."""
    if not store.rows or is_checkpoint(config.model) or start.random_weights or start.parent is not None:
        return None
    if config.weights is not None or config.weights_dir is not None:
        return None
    if device.type != "cpu" or precision is not Precision.FP32:
        return None
    spec = get_spec(store.model)
    if start.spec != spec or start.preprocessing != spec.preprocessing:
        return None
    labelled = [*splits.train.paths, *(splits.val.paths if splits.val is not None else [])]
    if len(labelled) > PROBE_MAX_IMAGES:
        return None
    store.keep_only(labelled)
    return store


def resolve_train_size(model: LoadedModel, config: TrainConfig) -> tuple[int, str | None]:
    """The side of the training crops, and a warning when it is not what ``train_size_ratio`` asks for
    (capped at :data:`~cnnlab.imagedata.preprocess.MAX_INPUT_SIZE`, or the evaluation crop, see below).

    ``train_size_ratio`` of the evaluation crop (:func:`~cnnlab.train.config.train_crop_size`; the
    evaluation crop itself with ``augment`` none), if the network trains on inputs of that size: a
    forward pass of two blank images in training mode (so that auxiliary heads run too) tells. ViTs
    take only the size they were built for, Inception v3's auxiliary head needs 299 px, AlexNet's
    pooling runs out of pixels below about 63 px: those train on the evaluation crop, with a warning.
    A network that cannot train on the evaluation crop either is a :class:`UsageError`.
    """
    eval_size = model.preprocessing.crop_size
    wanted = eval_size if config.augment is Augment.NONE else train_crop_size(eval_size, config.train_size_ratio)
    problem = _training_forward_fails(model, wanted)
    if problem is None:
        asked = round(eval_size * config.train_size_ratio / 8) * 8  # train_crop_size before its cap
        if config.augment is not Augment.NONE and asked > wanted == MAX_INPUT_SIZE:
            return wanted, (f"--train-size-ratio {config.train_size_ratio:g} of the {eval_size} px evaluation crop asks "
                            f"for {asked} px training crops: capped at {MAX_INPUT_SIZE} px, the largest input size")
        return wanted, None
    if wanted != eval_size and _training_forward_fails(model, eval_size) is None:
        return eval_size, (f"{model.spec.arch} cannot train on {wanted} px crops (--train-size-ratio "
                           f"{config.train_size_ratio:g}: {problem}): training crops are the evaluation size, "
                           f"{eval_size} px")
    raise UsageError(f"{model.spec.arch} cannot train on {eval_size} px inputs ({problem}): "
                     "choose another image_size (or the model's own)")


def _training_forward_fails(model: LoadedModel, size: int) -> str | None:
    """Why the network fails on a batch of two ``size`` px images in training mode (``None``: it runs).

    Nothing changes: no gradient, the random-number state, BatchNorm statistics and layer modes are restored."""
    module = model.module
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    devices = [model.device] if model.device.type == "cuda" else []
    try:
        with kept_layer_modes(module), torch.random.fork_rng(devices=devices), torch.no_grad():
            module.train()
            model(torch.zeros(2, 3, size, size, dtype=torch.uint8))
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the network raises on that size
        return _brief(exc).rstrip(".") or type(exc).__name__
    finally:
        with torch.no_grad():
            for name, b in module.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
    return None


def _from_registry(config: TrainConfig, num_classes: int, progress: Progress) -> StartingModel:
    loaded = load_torch(config.model_source, RuntimeOptions(device="cpu", channels_last=False, fold_bn=False),
                        progress=type(progress) is not Progress)  # a display was given: show downloads
    imagenet_head = None if config.random_weights else keep_imagenet_head(loaded.module)
    head_info = replace_head(loaded.module, num_classes)
    return StartingModel(loaded.spec, loaded.module, head_info, _run_preprocessing(loaded.spec, config.image_size),
                         random_weights=config.random_weights, imagenet_head=imagenet_head)


def _from_checkpoint(config: TrainConfig, classes: list[str]) -> StartingModel:
    """A new run from a checkpoint of ``cnnlab train``: its weights, a new head for new classes
    (:func:`start_run` has refused ``--weights`` and ``--random-weights`` with it)."""
    path = Path(config.model)
    ckpt = read_checkpoint(path)
    spec = base_spec(ckpt, path)
    old = list(ckpt["classes"])
    stored_head = HeadInfo(**ckpt["head"])
    try:
        module = build_finetuned(spec, len(old), ckpt["state_dict"])
    except (RuntimeError, CnnlabError) as exc:
        raise WeightsIntegrityError(f"the weights in {path} do not fit {spec.name}: {_brief(exc)}") from None
    keep = old == classes
    head_info = stored_head
    if not keep:
        if find_head(module, len(old))[0] != stored_head.path:
            raise WeightsIntegrityError(f"{path}: its head {stored_head.path!r} is not the model's last classifier")
        new = replace_head(module, len(classes), num_outputs=len(old))
        head_info = dataclasses.replace(new, old_outputs=stored_head.old_outputs)
    pp = checkpoint_preprocessing(ckpt, path) if config.image_size is None else _run_preprocessing(
        spec, config.image_size)
    random_weights = bool((ckpt.get("train_args") or {}).get("random_weights", False))
    return StartingModel(spec, module, head_info, pp, random_weights=random_weights, keep_head=keep,
                         parent=str(path), inherited=ckpt.get("data_record"))


def _brief(exc: BaseException, width: int = 160) -> str:
    """An exception's message cut to a few short lines (load_state_dict lists every key it misses)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:3]
    return " ".join(line if len(line) <= width else line[:width] + f"... ({line.count(',') + 1} items)"
                    for line in lines)


def _from_last(stored: dict[str, Any], path: Path) -> StartingModel:
    """The interrupted run's model (its raw training weights when it averages them)."""
    spec = base_spec(stored, path)
    weights = stored["resume"].get("model") or stored["state_dict"]
    module = build_finetuned(spec, len(stored["classes"]), weights)
    args = stored["train_args"]
    return StartingModel(spec, module, HeadInfo(**stored["head"]), checkpoint_preprocessing(stored, path),
                         random_weights=bool(args.get("random_weights")), parent=args.get("continued_from"))


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
    resize = min(MAX_INPUT_SIZE, max(image_size, round(image_size * ratio)))  # the resize limit of Preprocessing
    return dataclasses.replace(pp, crop_size=image_size, resize_size=resize)


def _wrap(start: StartingModel, classes: list[str], device: torch.device, precision: Precision) -> LoadedModel:
    """The starting network on ``device`` as a :class:`LoadedModel` over ``classes`` with the run's preprocessing."""
    set_tf32(precision, device)  # as loading does: TF32 matrix units only when asked for
    run_spec = dataclasses.replace(start.spec, categories=tuple(classes), preprocessing=start.preprocessing)
    # On the CPU the network trains in the channels-last (NHWC) layout, oneDNN's own, which makes a training
    # step faster for most networks (benchmarks/bench_train_layout.py). Checkpoint weights are written in the default layout
    # (make_checkpoint). CUDA keeps the default (not measured there).
    channels_last = device.type == "cpu"
    module = start.module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return LoadedModel(spec=run_spec, module=module, device=device, dtype=precision_dtype(precision),
                       precision=precision, channels_last=channels_last)


def _class_counts_line(counts: dict[str, int]) -> str:
    """Every class's count for up to :data:`MAX_LISTED_CLASSES` classes; beyond that the range, the median
    and the classes with the fewest images (a line per run, not a page, for 1,000 classes)."""
    if len(counts) <= MAX_LISTED_CLASSES:
        return ", ".join(f"{k} {n}" for k, n in counts.items())
    values = sorted(counts.values())
    fewest = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:5]
    median = statistics.median(values)
    return (f"{min(values):,}-{max(values):,} (median {int(median):,}{'' if median == int(median) else '.5'}) over "
            f"{len(counts):,} classes; fewest: " + ", ".join(f"{k} {n:,}" for k, n in fewest) + " (all in metrics.json)")


def _describe(run: TrainingRun, start: StartingModel, *, range_test: bool = False, finished: bool = False) -> None:
    """Tell what the run is about to do, with the warnings that matter.

    ``range_test`` (the learning-rate finder) trains a fixed number of steps and validates nothing: no
    warning about the phases' steps or validation. ``finished`` (a resumed run with nothing left to train)
    only evaluates ``best.pt`` again: no plan of the phases and no warning about training."""
    r, c = run.result, run.config
    if r.random_weights:
        run.note(f"starting from RANDOM weights ({run.model.spec.arch}): not a pretrained fine-tune", warning=True)
    if start.parent:
        kept = "keeps its head (same classes)" if start.keep_head else "gets a new head (other classes)"
        run.note(f"a new run from the checkpoint {start.parent}: it {kept}")
    run.note(f"model {r.arch}, head {r.head}, BatchNorm {r.bn}, {r.precision} on {r.device}")
    if run.frozen and any(p.name == "full" for p in run.phases):
        n = sum(p.numel() for m in run.frozen for p in m.parameters(recurse=False))
        total = sum(p.numel() for p in run.model.module.parameters())
        run.note(f"early layers kept frozen (frozen stride {run.resolved.frozen_stride}): {len(run.frozen)} "
                 f"layers, {n / 1e6:.2f} M of {total / 1e6:.2f} M parameters")
    elif run.resolved.frozen_stride > 1 and any(p.name == "full" for p in run.phases):
        stride = run.resolved.frozen_stride
        run.note(f"frozen stride {stride}: no early layers to keep, every layer trains (the maps of {r.arch} get "
                 f"coarser than 1/{stride} of {run.model.preprocessing.crop_size} px inputs in its first block)")
    run.note(f"data: {r.n_train} train / {r.n_val} val / {r.n_test} test images, {len(r.classes)} classes "
             f"({r.split_source})")
    run.note("train images per class: " + _class_counts_line(r.class_counts))
    if run.splits.skipped:
        reasons: dict[str, int] = {}
        for s in run.splits.skipped:
            reasons[s.reason] = reasons.get(s.reason, 0) + 1
        run.note(f"{len(run.splits.skipped):,} files of the data left out ("
                 + ", ".join(f"{n:,} {reason}" for reason, n in sorted(reasons.items())) + "): listed at the end")
    for phase in [] if finished else run.phases:
        if phase.name == "probe":
            run.note("probe: the head is fitted by logistic regression on frozen features"
                     + (" (--freeze: nothing else trains)" if c.freeze else ""))
            continue
        plan = run.batch_plan(phase)
        steps = plan.steps(phase.epochs)
        size = run.train_size
        run.note(f"{phase.name} phase: {phase.epochs} epoch(s) x {plan.steps_per_epoch} steps of about "
                 f"{plan.batch_size} images = {steps} optimiser steps, {size} px training crops "
                 f"(evaluation {run.model.preprocessing.crop_size} px)")
        if steps < c.min_phase_steps and not range_test:
            run.note(f"the {phase.name} phase has only {steps} optimiser steps ({r.n_train} training images, "
                     f"{phase.epochs} epoch(s)), fewer than the {c.min_phase_steps} a schedule needs to warm up "
                     "and settle: add images or epochs", warning=True)
    defaults = TrainConfig()
    unused = [name for name, on in (("--ema", c.ema), ("--mixup", c.mixup), ("--cutmix", c.cutmix),
                                    ("--frozen-stride", c.frozen_stride is not None),
                                    ("--train-size-ratio", c.train_size_ratio != defaults.train_size_ratio)) if on]
    if not finished and not any(p.name != "probe" for p in run.phases) and unused:
        run.note(f"{', '.join(unused)} act on SGD epochs, and this run has none (the probe alone): not used",
                 warning=True)
    elif not finished and c.augment is Augment.NONE and c.train_size_ratio != defaults.train_size_ratio:
        run.note("--augment none trains on the evaluation preprocessing: --train-size-ratio is not used", warning=True)
    folded: dict[str, list[str]] = {}
    for name in r.classes:
        folded.setdefault(name.casefold(), []).append(name)
    for names in (n for n in folded.values() if len(n) > 1):
        run.note(f"classes {', '.join(repr(n) for n in names)} differ only in case: they are trained as different "
                 "classes here, but their folders merge on a case-insensitive file system (macOS, Windows); "
                 "merge or rename them if they are one class", warning=True)
    if run.splits.dropped_classes:
        run.note(f"class folder(s) without images left out: {', '.join(run.splits.dropped_classes)}", warning=True)
    if r.imbalance_ratio >= IMBALANCE_WARNING:
        advice = "classes are sampled equally (--balance)" if c.balance else "consider --balance"
        run.note(f"classes are imbalanced: the largest has {r.imbalance_ratio:.1f}x the images of the smallest; "
                 f"{advice}", warning=True)
    if range_test:
        return
    if run.splits.val is None and not finished:
        run.note("no validation images: no early stopping, and best.pt is the last epoch", warning=True)
    if run.splits.test is None and run.splits.val is None:
        run.note("no validation or test images: the run gives no held-out figure", warning=True)
    elif run.splits.test is None:
        run.note("no test split: the final evaluation uses the validation images, which also chose the best epoch "
                 "(optimistic); use --test-fraction or a split.csv with a test split for an unbiased figure")
