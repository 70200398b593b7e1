"""`cnnlab predict`: top-k classes for image files."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated

import typer

from cnnlab.cli.app import app
from cnnlab.cli.common import err, escape, handle_errors, print_json, print_table, write_stdout
from cnnlab.cli.params import (
    BackendOpt,
    BatchSize,
    CalibrationImages,
    Device,
    Json,
    Quiet,
    Threads,
    Weights,
    WeightsDir,
    Wide,
    Workers,
)
from cnnlab.models.registry import OFFLINE_MODEL
from cnnlab.options import DEFAULT_CALIBRATION_IMAGES, ModelSource, RuntimeChoice, RuntimeOptions


@app.command("predict")
@handle_errors
def predict_command(
    inputs: Annotated[list[str], typer.Argument(metavar="PATH...", help="Image files, folders (searched recursively) or glob patterns.")],
    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="Registry name, a checkpoint of `cnnlab train` or an .onnx file of `cnnlab export`.")] = OFFLINE_MODEL,
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, max=1000, metavar="K", help="How many classes to show per image.")] = 5,
    device: Device = "auto",
    batch_size: BatchSize = 16,
    workers: Workers = None,
    backend: BackendOpt = RuntimeChoice.TORCH,
    threads: Threads = None,
    calibration_images: CalibrationImages = DEFAULT_CALIBRATION_IMAGES,
    weights: Weights = None,
    weights_dir: WeightsDir = None,
    as_json: Json = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout: path,rank,index,label,probability.")] = False,
    wide: Wide = False,
    quiet: Quiet = False,
) -> None:
    """Predict the top-k classes of images. Exit status 1 if some files could not be read."""
    from cnnlab.cli.progress import RichProgress
    from cnnlab.prediction import predict

    source = ModelSource(name=model, weights=Path(weights) if weights else None,
                         weights_dir=Path(weights_dir) if weights_dir else None)
    runtime = RuntimeOptions(device=device, backend=backend, threads=threads, workers=workers, batch_size=batch_size)
    with RichProgress(quiet=quiet) as progress:
        result = predict(inputs, model=source, topk=topk, runtime=runtime, calibration_images=calibration_images,
                         progress=progress)
    rt = result.runtime
    title = result.model if rt["backend"] == "torch" else f"{result.model} ({rt['backend']} {rt['precision']})"
    if as_json:
        print_json(result.to_dict())
    elif as_csv:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["path", "rank", "index", "label", "probability"])
        for p in result.predictions:
            for rank, c in enumerate(p.top, 1):
                writer.writerow([p.path, rank, c.index, c.label, f"{c.probability:.6f}"])
        write_stdout(buf.getvalue())
    elif wide:
        header = ["file"] + [f"#{rank}" for rank in range(1, topk + 1)]
        rows = [[p.path, *[f"{c.label} ({c.probability:.0%})" for c in p.top]] for p in result.predictions]
        print_table(header, rows, title=f"{title} top-{topk}")
    else:
        rows = [[p.path, ", ".join(f"{c.label} {c.probability:.0%}" for c in p.top)] for p in result.predictions]
        print_table(["file", f"top-{topk}"], rows, title=title)
    for s in result.skipped:
        err.print(f"[yellow]skipped[/] {escape(s.path)}: {s.reason}" + (f" ({escape(s.detail)})" if s.detail else ""))
    if not result.predictions and not result.skipped:
        err.print("no image files found in " + escape(", ".join(inputs)))
        raise typer.Exit(1)
    if result.skipped:
        err.print(f"{len(result.predictions)} predicted, {len(result.skipped)} skipped")
        raise typer.Exit(1)
