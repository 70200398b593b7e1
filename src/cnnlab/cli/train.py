"""`cnnlab train`: fine-tune a zoo model on a folder's classes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from cnnlab.cli.app import app
from cnnlab.cli.common import err, handle_errors, out, print_json
from cnnlab.train import (
    BN_POLICIES,
    PRECISIONS,
    SCHEDULES,
    EpochRecord,
    TrainCallbacks,
    TrainConfig,
    TrainResult,
    train,
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command("train")
@handle_errors
def train_command(
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Class folders (DIR/<class>/*.jpg), a manifest, or a folder with the split.csv of `cnnlab split`.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Registry model to start from.")] = "efficientnet_lite0",
    out_dir: Annotated[str, typer.Option("--out", "-o", help="Run folder: best.pt, last.pt, history.csv, curves.png, metrics.json.")] = "runs/train",
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=0, help="Epochs of the whole network (of the head with --freeze).")] = 5,
    freeze_epochs: Annotated[int, typer.Option("--freeze-epochs", min=0, help="Head-only epochs first, backbone frozen.")] = 1,
    freeze: Annotated[bool, typer.Option("--freeze", help="Linear probe: train only the new head.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 32,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate of the head (AdamW).")] = 2e-3,
    backbone_lr_ratio: Annotated[float, typer.Option("--backbone-lr-ratio", min=0.0, help="Backbone learning rate relative to the head's.")] = 0.1,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0)] = 0.01,
    schedule: Annotated[str, typer.Option("--schedule", help=f"{' or '.join(SCHEDULES)}, per phase.")] = "onecycle",
    patience: Annotated[int, typer.Option("--patience", min=0, help="Early stopping: epochs without a lower validation loss (0: off).")] = 3,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", min=0.0, max=0.99)] = 0.0,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, help="Held out per class for validation when the data has no split.")] = 0.2,
    test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.0, max=0.9, help="Held out per class for the final test when the data has no split.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (mixed bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16.")] = "auto",
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help="Decoding processes (default: cores-1).")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random resized crop and flip for training images.")] = True,
    crop_scale: Annotated[float, typer.Option("--crop-scale", min=0.01, max=1.0, help="Smallest area fraction of a random crop.")] = 0.35,
    hflip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = True,
    color_jitter: Annotated[float, typer.Option("--color-jitter", min=0.0, help="Brightness/contrast/saturation jitter.")] = 0.0,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=16, help="Crop size instead of the model's (faster, less accurate).")] = None,
    balance: Annotated[bool, typer.Option("--balance", help="Sample every class equally often.")] = False,
    bn: Annotated[str, typer.Option("--bn", help=f"BatchNorm: {', '.join(BN_POLICIES)} (auto: frozen statistics for pretrained weights).")] = "auto",
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Start from random weights (testing only: not a fine-tune).")] = False,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Explicit starting weights file.")] = None,
    weights_dir: Annotated[Optional[str], typer.Option("--weights-dir", help="Folder to search for weights.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out from its last.pt.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run in --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The result as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")] = False,
) -> None:
    """Fine-tune a pretrained model for the classes in a folder: head first, then the whole network."""
    if schedule not in SCHEDULES:
        raise typer.BadParameter(f"choose from {', '.join(SCHEDULES)}", param_hint="--schedule")
    if precision not in PRECISIONS:
        raise typer.BadParameter(f"choose from {', '.join(PRECISIONS)}", param_hint="--precision")
    config = TrainConfig(
        data=data, out=out_dir, model=model, epochs=epochs, freeze_epochs=freeze_epochs, freeze=freeze,
        batch_size=batch_size, lr=lr, backbone_lr_ratio=backbone_lr_ratio, weight_decay=weight_decay,
        schedule=schedule, patience=patience or None, label_smoothing=label_smoothing,
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, device=device, precision=precision,
        workers=workers, augment=augment, crop_scale=(crop_scale, 1.0), hflip=hflip, color_jitter=color_jitter,
        image_size=image_size, balance=balance, bn=bn, random_weights=random_weights, weights=weights,
        weights_dir=weights_dir, resume=resume, overwrite=overwrite,
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"), TimeElapsedColumn(),
        console=err, disable=quiet, transient=True,
    ) as progress:
        task: list[TaskID] = []

        def on_epoch_start(epoch: int, total: int, phase: str, batches: int) -> None:
            if task:
                progress.remove_task(task.pop())
            task.append(progress.add_task(f"epoch {epoch}/{total} {phase}", total=batches, loss="-", acc="-"))

        def on_batch(done: int, loss: float, acc: float) -> None:
            progress.update(task[-1], completed=done, loss=f"{loss:.3f}", acc=f"{acc:.0%}")

        def on_epoch_end(r: EpochRecord, best: bool) -> None:
            if quiet:
                return
            err.print(
                f"epoch {r.epoch:>3} {r.phase:<4}  train loss {r.train_loss:.4f} acc {r.train_acc:.1%}  "
                f"val loss {_num(r.val_loss)} acc {_pct(r.val_acc)}  {r.seconds:.1f}s" + ("  [green]best[/]" if best else ""),
                highlight=False,
            )

        def on_message(message: str) -> None:
            if message.startswith("warning: "):
                err.print(f"[yellow]warning:[/] {message[9:]}", highlight=False)
            elif not quiet:
                err.print(message, highlight=False)

        callbacks = TrainCallbacks(on_message=on_message, on_epoch_start=on_epoch_start, on_batch=on_batch,
                                   on_epoch_end=on_epoch_end)
        try:
            result = train(config, callbacks)
        except KeyboardInterrupt:
            err.print(f"[yellow]interrupted:[/] continue with `cnnlab train --out {out_dir} --resume`")
            raise
    if as_json:
        print_json(result.to_dict())
    else:
        _print_summary(result)


def _print_summary(result: TrainResult) -> None:
    table = Table(title=f"cnnlab train: {result.out}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    start = "[bold red]RANDOM weights (not pretrained)[/]" if result.random_weights else "pretrained weights"
    table.add_row("model", f"{result.arch} from {start}; head {result.head}")
    table.add_row("classes", f"{len(result.classes)}: {', '.join(result.classes)}")
    table.add_row("images", f"{result.n_train} train / {result.n_val} val / {result.n_test} test ({result.split_source})")
    heads = sum(r.phase == "head" for r in result.history)
    fulls = sum(r.phase == "full" for r in result.history)
    stopped = f"; early stop in {', '.join(result.stopped_early)}" if result.stopped_early else ""
    table.add_row("epochs", f"{heads} head + {fulls} full{stopped}; BatchNorm {result.bn}; {result.precision} on {result.device}")
    times = [f"{p} {t:.1f}s" for p in ("head", "full") if (t := result.seconds_per_epoch(p)) is not None]
    table.add_row("time per epoch", ", ".join(times))
    best = next((r for r in result.history if r.epoch == result.best_epoch), None)
    if best is not None:
        table.add_row("best epoch", f"{best.epoch}: val loss {_num(best.val_loss)}, val acc {_pct(best.val_acc)}")
    ev = result.evaluation
    if ev:
        ci = ev.get("top1_ci") or [None, None]
        ci_text = f" (95% CI {_pct(ci[0])}-{_pct(ci[1])})" if ci[0] is not None else ""
        table.add_row(f"{result.evaluated_on} top-1", f"{_pct(ev.get('top1'))}{ci_text} on {ev.get('n')} images")
    if result.skipped:
        table.add_row("skipped files", str(len(result.skipped)))
    table.add_row("files", f"{result.best_path}, {result.last_path}, history.csv, curves.png, metrics.json")
    out.print(table)
    if ev.get("per_class"):
        per = Table(title=f"per class ({result.evaluated_on})")
        for col in ("class", "support", "correct", "accuracy", "precision"):
            per.add_column(col, justify="left" if col == "class" else "right")
        for c in ev["per_class"]:
            per.add_row(c["name"], str(c["support"]), str(c["correct"]), _pct(c["accuracy"]), _pct(c["precision"]))
        out.print(per)
    for s in result.skipped:
        err.print(f"[yellow]skipped[/] {s.path}: {s.reason}" + (f" ({s.detail})" if s.detail else ""), highlight=False)
