"""`cnnlab train`: fine-tune a zoo model on a folder's classes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cnnlab.cli.app import app
from cnnlab.cli.common import err, escape, handle_errors, out, print_json, print_table
from cnnlab.cli.params import (
    Device,
    ImageColumn,
    Json,
    LabelColumn,
    Nproc,
    PrecisionOpt,
    Quiet,
    Weights,
    WeightsDir,
    Wide,
    Workers,
    out_option,
)
from cnnlab.cli.tracking import Track, TrackUri, check_tracking, track_run
from cnnlab.imagedata.preprocess import MAX_INPUT_SIZE
from cnnlab.options import Augment, BNPolicy, Schedule
from cnnlab.train.config import TrainConfig

if TYPE_CHECKING:
    from cnnlab.train.lr_find import LRFinderResult
    from cnnlab.train.result import TrainResult

_C = TrainConfig()


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command("train")
@handle_errors
def train_command(
    data: Annotated[Optional[str], typer.Argument(metavar="DATA", show_default=False, help="Class folders (DIR/<class>/*.jpg), a manifest, or a folder with the split.csv of `cnnlab split` (with --resume: the run's own by default).")] = None,
    data_option: Annotated[Optional[str], typer.Option("--data", "-d", hidden=True, metavar="DATA", help="Deprecated: pass DATA as the first argument.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="Registry model, or a checkpoint (runs/x/best.pt) to start a new run from.")] = _C.model,
    out_dir: Annotated[Path, out_option("Run folder: best.pt, last.pt, history.csv, curves.png, metrics.json.")] = Path(_C.out),
    epochs: Annotated[int, typer.Option("--epochs", min=0, metavar="N", help="Epochs of the whole network.")] = _C.epochs,
    freeze_epochs: Annotated[int, typer.Option("--freeze-epochs", min=0, metavar="N", help="Head-only epochs after the probe, backbone frozen.")] = _C.freeze_epochs,
    freeze: Annotated[bool, typer.Option("--freeze", help="Linear probe only: fit the head on frozen features (seconds), no epochs.")] = _C.freeze,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Start the head from a logistic regression on frozen features.")] = _C.probe,
    refit: Annotated[bool, typer.Option("--refit/--no-refit", help="End by refitting the head on the training and validation images (validation figures then out of fold).")] = _C.refit,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, max=65536, metavar="N", help="Largest batch (lowered for small data, see --min-phase-steps).")] = _C.batch_size,
    min_phase_steps: Annotated[int, typer.Option("--min-phase-steps", min=1, metavar="N", help="Optimiser steps each phase should have; smaller batches (>= 8) give them.")] = _C.min_phase_steps,
    find_lr: Annotated[bool, typer.Option("--find-lr", help="Only run the learning-rate range test: lr_find.png/csv and a suggested --lr.")] = False,
    lr: Annotated[float, typer.Option("--lr", min=0.0, metavar="RATE", help="Peak learning rate (AdamW) of the head; in the full phase the head peaks at half of it.")] = _C.lr,
    backbone_lr_ratio: Annotated[float, typer.Option("--backbone-lr-ratio", min=0.0, metavar="RATIO", help="Backbone learning rate relative to the head's.")] = _C.backbone_lr_ratio,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, metavar="DECAY", help="AdamW's decoupled weight decay (not applied to biases and normalisation layers).")] = _C.weight_decay,
    schedule: Annotated[Schedule, typer.Option("--schedule", case_sensitive=False, help="Learning-rate schedule of each phase.")] = _C.schedule,
    patience: Annotated[int, typer.Option("--patience", min=0, metavar="N", help="Early stopping: epochs without a better validation accuracy (ties: loss) (0: off).")] = _C.patience or 0,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", min=0.0, max=0.99, metavar="FRACTION", help="Label smoothing of the training loss, from 0 (off) to 0.99.")] = _C.label_smoothing,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, metavar="FRACTION", help="Held out per class for validation when the data has no split.")] = _C.val_fraction,
    test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.0, max=0.9, metavar="FRACTION", help="Held out per class for the final test when the data has no split.")] = _C.test_fraction,
    near_dup_threshold: Annotated[int, typer.Option("--near-dup-threshold", min=-1, metavar="BITS", help="Near duplicates (phash distance) stay in one split; -1: off.")] = _C.near_dup_threshold,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the split, the new head, the augmentation and the batch order: the same seed gives the same run on the CPU.")] = _C.seed,
    device: Device = _C.device,
    nproc: Nproc = None,
    precision: PrecisionOpt = _C.precision,
    workers: Workers = _C.workers,
    augment: Annotated[Augment, typer.Option("--augment", case_sensitive=False, help="Augmentation preset (light: random resized crop and flip).")] = _C.augment,
    mixup: Annotated[float, typer.Option("--mixup", min=0.0, metavar="ALPHA", help="MixUp of batches: Beta alpha, e.g. 0.2 (0: off).")] = _C.mixup,
    cutmix: Annotated[float, typer.Option("--cutmix", min=0.0, metavar="ALPHA", help="CutMix of batches: Beta alpha, e.g. 1.0 (0: off).")] = _C.cutmix,
    ema: Annotated[bool, typer.Option("--ema", help="Validate and save a moving average of the weights.")] = _C.ema,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also write TensorBoard event files to OUT/tensorboard.")] = _C.tensorboard,
    crop_scale: Annotated[float, typer.Option("--crop-scale", min=0.01, max=1.0, metavar="FRACTION", help="Smallest area fraction of a random crop.")] = _C.crop_scale[0],
    hflip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = _C.hflip,
    color_jitter: Annotated[float, typer.Option("--color-jitter", min=0.0, metavar="AMOUNT", help="Brightness/contrast/saturation jitter.")] = _C.color_jitter,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=16, max=MAX_INPUT_SIZE, metavar="PX", help="Crop size instead of the model's (faster, less accurate).")] = _C.image_size,
    train_size_ratio: Annotated[float, typer.Option("--train-size-ratio", min=0.1, max=2.0, metavar="RATIO", help="Training crop side relative to the evaluation crop, to 8 px, not shrunk below 128 px (1: the same).")] = _C.train_size_ratio,
    frozen_stride: Annotated[Optional[int], typer.Option("--frozen-stride", min=1, max=MAX_INPUT_SIZE, metavar="N", help="Layers before the maps get coarser than 1/N keep their weights (default: 4 pretrained, 1 random; 1: all train).")] = _C.frozen_stride,
    balance: Annotated[bool, typer.Option("--balance", help="Sample every class equally often.")] = _C.balance,
    bn: Annotated[BNPolicy, typer.Option("--bn", case_sensitive=False, help="BatchNorm layers (auto: frozen statistics for pretrained weights).")] = _C.bn,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Start from random weights (testing only: not a fine-tune).")] = _C.random_weights,
    weights: Weights = _C.weights,
    weights_dir: WeightsDir = _C.weights_dir,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out from its last.pt.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run in --out.")] = False,
    crops: Annotated[bool, typer.Option("--crops/--no-crops", help="In train's own split, also keep crops and rescales of one photo together (offline model's features, checked on pixels).")] = _C.crops,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    track: Track = None,
    track_uri: TrackUri = None,
    as_json: Json = False,
    wide: Wide = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a pretrained model for the classes in DATA: a linear probe for the new head, then the whole network."""
    from cnnlab.cli.progress import RichProgress

    if data_option is not None:
        if data is not None:
            raise typer.BadParameter("give the data once: as the first argument (--data is its deprecated form)")
        err.print("[yellow]warning:[/] --data is deprecated: pass the data as the first argument, "
                  f"`cnnlab train {escape(data_option)} ...`")
        data = data_option
    config = TrainConfig(
        data=data, out=str(out_dir), model=model, epochs=epochs, freeze_epochs=freeze_epochs, freeze=freeze, probe=probe, refit=refit,
        batch_size=batch_size, min_phase_steps=min_phase_steps, lr=lr, backbone_lr_ratio=backbone_lr_ratio, weight_decay=weight_decay,
        schedule=schedule, patience=patience or None, label_smoothing=label_smoothing, val_fraction=val_fraction,
        test_fraction=test_fraction, near_dup_threshold=near_dup_threshold, crops=crops, image_column=image_column,
        label_column=label_column, seed=seed, device=device,
        precision=precision, workers=workers, augment=augment, mixup=mixup, cutmix=cutmix, ema=ema,
        tensorboard=tensorboard, crop_scale=(crop_scale, 1.0), hflip=hflip,
        color_jitter=color_jitter, image_size=image_size, train_size_ratio=train_size_ratio, frozen_stride=frozen_stride, balance=balance, bn=bn, random_weights=random_weights,
        weights=weights, weights_dir=weights_dir, resume=resume, overwrite=overwrite,
    )
    config.validate()  # bad settings exit 2 before any work
    if not find_lr:  # the range test logs nothing
        track_uri = check_tracking(track, track_uri)
    from cnnlab.runtime.distributed import from_environment, relaunch

    ctx = from_environment()
    if nproc is not None and ctx is None:
        raise typer.Exit(relaunch(nproc, "train"))
    quiet = quiet or (ctx is not None and not ctx.is_main)  # torchrun: rank 0 reports
    if find_lr:
        _find_lr(config, quiet=quiet, as_json=as_json)
        return
    from cnnlab.train.recipe import fine_tune

    with RichProgress(quiet=quiet) as progress:
        try:
            result = fine_tune(config, progress=progress)
        except KeyboardInterrupt:
            err.print(f"[yellow]interrupted:[/] continue with `cnnlab train --out {escape(str(out_dir))} --resume`")
            raise
    if ctx is not None and not ctx.is_main:
        return
    if as_json:
        print_json(result.to_dict())
    else:
        _print_summary(result, wide=wide)
    _print_skipped(result)
    track_run(result.out, track, track_uri)


#: Classes the summary's per-class table lists one by one; with more it lists the least accurate half as many.
MAX_CLASS_ROWS = 30


def _print_skipped(result: TrainResult) -> None:
    """Every file left out (by the data scan, or undecodable in training or evaluation), on stderr, and their count."""
    for s in result.skipped:
        err.print(f"[yellow]skipped[/] {escape(s.path)}: {s.reason}" + (f" ({escape(s.detail)})" if s.detail else ""))
    if result.skipped:
        n = len(result.skipped)
        err.print(f"[yellow]{n} file{'' if n == 1 else 's'} skipped[/] (also in {escape(str(result.out))}/metrics.json)")


def _find_lr(config: TrainConfig, *, quiet: bool, as_json: bool) -> None:
    """The learning-rate range test: files in --out, the suggestion on stdout."""
    from cnnlab.cli.progress import RichProgress
    from cnnlab.train.lr_find import find_lr

    with RichProgress(quiet=quiet) as progress:
        result: LRFinderResult = find_lr(config, progress)
    if as_json:
        print_json(result.to_dict())
        return
    value = "none (no loss recorded)" if result.suggestion is None else f"{result.suggestion:.2e}"
    out.print(f"suggested --lr {value}")  # result.warning was shown as find_lr's warning note (stderr, also with -q)
    out.print(f"rule: {escape(result.rule)}")
    if result.rules:
        out.print("fastai's rules: " + ", ".join(f"{name} {lr:.2e}" for name, lr in result.rules.items()))
    out.print(f"plot: {escape(result.files[-1])}")


def _run_files(result: TrainResult) -> list[str]:
    """The files the run wrote into its folder, in :data:`~cnnlab.train.result.RUN_FILES`' order (report.html
    included), and ``tensorboard/`` when it was asked for."""
    from cnnlab.train.result import RUN_FILES

    names = [name for name in RUN_FILES if (result.out / name).is_file()]
    return names + (["tensorboard/"] if (result.out / "tensorboard").is_dir() else [])


def _print_summary(result: TrainResult, *, wide: bool = False) -> None:
    """The run in a two-column table (readable in 80 columns), then the per-class scores; ``wide``: every class
    name and every class, with the predicted count."""
    from rich.table import Table

    table = Table(title=f"cnnlab train: {escape(str(result.out))}", title_justify="left", show_header=False)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    start = "[bold red]RANDOM weights (not pretrained)[/]" if result.random_weights else "pretrained weights"
    table.add_row("model", f"{escape(result.arch)}, {start}")
    table.add_row("head", escape(result.head))
    names = ", ".join(result.classes)
    table.add_row("classes", escape(f"{len(result.classes)}: {names if wide or len(names) <= 120 else names[:117] + '...'}"))
    table.add_row("images", f"{result.n_train} train / {result.n_val} val / {result.n_test} test")
    table.add_row("split", escape(result.split_source))
    heads = sum(r.phase == "head" for r in result.history)
    fulls = sum(r.phase == "full" for r in result.history)
    stopped = f"; early stop in {', '.join(result.stopped_early)}" if result.stopped_early else ""
    probe = "probe + " if any(r.phase == "probe" for r in result.history) else ""
    table.add_row("epochs", f"{probe}{heads} head + {fulls} full{stopped}")
    table.add_row("settings", f"BatchNorm {result.bn}, {result.precision} on {result.device}")
    times = [f"{p} {t:.1f}s" for p in ("probe", "head", "full") if (t := result.seconds_per_epoch(p)) is not None]
    table.add_row("time/epoch", ", ".join(times))
    best = next((r for r in result.history if r.epoch == result.best_epoch), None)
    if best is not None:
        table.add_row("best epoch", f"{best.epoch}: val loss {_num(best.val_loss)}, acc {_pct(best.val_acc)} "
                                    "(chosen by validation accuracy, ties by loss)")
    if result.weight_mix is not None:
        table.add_row("best.pt", f"{result.weight_mix:g} x epoch {result.best_epoch}'s weights + "
                                 f"{1 - result.weight_mix:g} x the probe's (WiSE-FT, chosen on validation)")
    if result.refit is not None:
        rf = result.refit
        table.add_row("refit", f"head refitted on {rf['images']} train + val images; val acc {_pct(rf['val_acc'])} "
                               f"out of {rf['folds']} folds ({_pct(rf['val_acc_before'])} before)")
    if result.zero_shot is not None:
        zs = result.zero_shot
        table.add_row("zero-shot", f"{_pct(zs['val_acc'])} on {zs['n']} val images: the untouched pretrained model "
                                   "through the WordNet mapping of the classes")
    ev = result.evaluation
    if ev:
        ci = ev.get("top1_ci") or [None, None]
        ci_text = f" (95% CI {_pct(ci[0])}-{_pct(ci[1])})" if ci[0] is not None else ""
        table.add_row(f"{result.evaluated_on} top-1", f"{_pct(ev.get('top1'))}{ci_text} on {ev.get('n')} images")
    if result.skipped:
        table.add_row("skipped", f"{len(result.skipped)} file{'' if len(result.skipped) == 1 else 's'}")
    table.add_row("files", escape(f"{result.out}/: " + ", ".join(_run_files(result))))
    out.print(table)
    if ev.get("per_class"):
        classes, title = ev["per_class"], f"per class ({result.evaluated_on})"
        if len(classes) > MAX_CLASS_ROWS and not wide:  # the least accurate; metrics.json has them all
            scored = [c for c in classes if c["accuracy"] is not None]
            classes = sorted(scored, key=lambda c: (c["accuracy"], c["name"]))[:MAX_CLASS_ROWS // 2]
            unseen = len(ev["per_class"]) - len(scored)
            title += (f": the {len(classes)} least accurate of {len(ev['per_class']):,} classes"
                      + (f" ({unseen:,} with no {result.evaluated_on} image)" if unseen else "") + " (all in metrics.json)")
        rows = [[c["name"], str(c["support"]), str(c["correct"]), _pct(c["accuracy"]), _pct(c["precision"])]
                + ([str(c.get("predicted", "-"))] if wide else []) for c in classes]
        header = ["class", "support", "correct", "accuracy", "precision"] + (["predicted"] if wide else [])
        if rows:
            print_table(header, rows, title=title, justify={h: "right" for h in header[1:]})
