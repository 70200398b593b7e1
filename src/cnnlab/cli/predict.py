"""`cnnlab predict`: top-k classes for image files."""

from __future__ import annotations

import csv
import sys
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cnnlab.cli.app import app
from cnnlab.cli.common import err, handle_errors, out, print_json
from cnnlab.models import load_model
from cnnlab.predict import predict


@app.command("predict")
@handle_errors
def predict_command(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Registry name or a checkpoint from `cnnlab train`.")] = "efficientnet_lite0",
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, help="How many classes to show per image.")] = 5,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help="Decoding processes (default: GPU cores-1 up to 8; CPU a quarter of the cores).")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Explicit weights file.")] = None,
    weights_dir: Annotated[Optional[str], typer.Option("--weights-dir", help="Folder to search for weights.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout: path,rank,index,label,probability.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Predict the top-k classes of images. Exit status 1 if some files could not be read."""
    loaded = load_model(model, weights=weights, weights_dir=weights_dir, device=device, progress=not quiet)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, disable=quiet, transient=True) as progress:
        task = progress.add_task(f"predict {loaded.name}", total=None)
        result = predict(inputs, model=loaded, topk=topk, batch_size=batch_size, workers=workers,
                         on_start=lambda total: progress.update(task, total=total),
                         on_batch=lambda n: progress.advance(task, n))
    if as_json:
        print_json(result.to_dict())
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "index", "label", "probability"])
        for p in result.predictions:
            for rank, c in enumerate(p.top, 1):
                writer.writerow([p.path, rank, c.index, c.label, f"{c.probability:.6f}"])
    else:
        table = Table(title=f"{loaded.name} top-{topk}")
        table.add_column("file")
        for rank in range(1, topk + 1):
            table.add_column(f"#{rank}")
        for p in result.predictions:
            table.add_row(p.path, *[f"{c.label} ({c.probability:.0%})" for c in p.top])
        out.print(table)
    for s in result.skipped:
        err.print(f"[yellow]skipped[/] {s.path}: {s.reason}" + (f" ({s.detail})" if s.detail else ""), highlight=False)
    if not result.predictions and not result.skipped:
        err.print("no image files found in " + ", ".join(inputs))
        raise typer.Exit(1)
    if result.skipped:
        err.print(f"{len(result.predictions)} predicted, {len(result.skipped)} skipped")
        raise typer.Exit(1)
