"""`cnnlab predict`: top-k classes for image files."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cnnlab.cli.app import app
from cnnlab.cli.bench import auto_or_count
from cnnlab.cli.common import err, escape, format_csv, handle_errors, print_json, print_table, write_stdout
from cnnlab.cli.params import (
    CalibrationImages,
    Device,
    ImageColumn,
    Json,
    Quiet,
    Threads,
    Weights,
    WeightsDir,
    Wide,
)
from cnnlab.models.registry import OFFLINE_MODEL
from cnnlab.options import DEFAULT_CALIBRATION_IMAGES, ModelSource, RuntimeChoice, RuntimeOptions
from cnnlab.runtime.threads import passive_openmp

passive_openmp()  # before torch is imported (the model runs in this process): cnnlab.runtime.threads



class BackendName(StrEnum):
    """``--backend``: auto, then every runtime of :class:`~cnnlab.options.RuntimeChoice` (checked by a test)."""

    AUTO = "auto"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    ONNXRUNTIME_INT8 = "onnxruntime-int8"
    OPENVINO_INT8 = "openvino-int8"


@app.command("predict")
@handle_errors
def predict_command(
    inputs: Annotated[list[str], typer.Argument(metavar="PATH...", help="Image files, folders (searched recursively) or glob patterns.")],
    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="Registry name, a checkpoint of `cnnlab train` or an .onnx file of `cnnlab export`.")] = OFFLINE_MODEL,
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, max=1000, metavar="K", help="How many classes to show per image.")] = 5,
    device: Device = "auto",
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", metavar="auto|N", help="Images per batch; auto: measured on the first images when there are enough of them (else 16; 16 for ONNX Runtime and OpenVINO on the CPU).")] = "auto",
    workers: Annotated[str, typer.Option("--workers", metavar="auto|N", help="Decoding processes beside a PyTorch model (threads for an ONNX Runtime or OpenVINO model on the CPU); auto: none for a PyTorch model on the CPU (threads of this process decode each batch, taking turns with it), cores-1 up to 8 on a GPU.")] = "auto",
    backend: Annotated[BackendName, typer.Option("--backend", case_sensitive=False, help="What runs the model: auto (ONNX Runtime on the CPU when installed and its export matches PyTorch, else PyTorch), torch, or its ONNX export in onnxruntime or openvino; -int8: quantised, calibrated on your images.")] = BackendName.AUTO,
    threads: Threads = None,
    calibration_images: CalibrationImages = DEFAULT_CALIBRATION_IMAGES,
    weights: Weights = None,
    weights_dir: WeightsDir = None,
    unknown_threshold: Annotated[Optional[str], typer.Option("--unknown-threshold", metavar="P|auto", help="Mark an image unknown (none of these) when its top class is below this probability; auto: the threshold a cnnlab train checkpoint calibrated on its validation images.")] = None,
    image_column: ImageColumn = None,
    as_json: Json = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout: path,rank,index,label,probability (and unknown, with --unknown-threshold).")] = False,
    wide: Wide = False,
    quiet: Quiet = False,
) -> None:
    """Predict the top-k classes of images. Exit status 1 if some files could not be read."""
    from cnnlab.cli.progress import RichProgress
    from cnnlab.prediction import predict

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    source = ModelSource(name=model, weights=Path(weights) if weights else None,
                         weights_dir=Path(weights_dir) if weights_dir else None)
    auto = backend is BackendName.AUTO
    runtime = RuntimeOptions(device=device, backend=RuntimeChoice.TORCH if auto else RuntimeChoice(backend.value),
                             threads=threads,
                             workers=auto_or_count(workers, "the loader workers", 0, 256),
                             batch_size=auto_or_count(batch_size, "the batch size", 1, 65536))
    with RichProgress(quiet=quiet) as progress:
        result = predict(inputs, model=source, topk=topk, runtime=runtime, calibration_images=calibration_images,
                         unknown_threshold=unknown_threshold, image_column=image_column,
                         progress=progress, auto_backend=auto)
    rt = result.runtime
    choice = rt.get("backend_choice")
    if choice is not None and not quiet:
        err.print(f"backend: {escape(str(choice['backend']))} ({escape(str(choice['reason']))})")
    title = result.model if rt["backend"] == "torch" else f"{result.model} ({rt['backend']} {rt['precision']})"
    if as_json:
        print_json(result.to_dict())
    elif as_csv:
        marked = result.unknown_threshold is not None  # the unknown column only when a threshold applied
        lines = ([p.path, rank, c.index, c.label, f"{c.probability:.6f}", *([int(p.unknown)] if marked else [])]
                 for p in result.predictions for rank, c in enumerate(p.top, 1))
        header = ["path", "rank", "index", "label", "probability", *(["unknown"] if marked else [])]
        write_stdout(format_csv(header, lines))
    elif wide:
        header = ["file"] + [f"#{rank}" for rank in range(1, topk + 1)]
        rows = [[p.path, *[("unknown? " if p.unknown and rank == 0 else "") + f"{c.label} ({c.probability:.0%})"
                           for rank, c in enumerate(p.top)]] for p in result.predictions]
        print_table(header, rows, title=f"{title} top-{topk}")
    else:
        rows = [[p.path, ("unknown (none of these); " if p.unknown else "")
                 + ", ".join(f"{c.label} {c.probability:.0%}" for c in p.top)] for p in result.predictions]
        print_table(["file", f"top-{topk}"], rows, title=title)
    for s in result.skipped:
        err.print(f"[yellow]skipped[/] {escape(s.path)}: {s.reason}" + (f" ({escape(s.detail)})" if s.detail else ""))
    if not result.predictions and not result.skipped:
        err.print("no image files found in " + escape(", ".join(inputs)))
        raise typer.Exit(1)
    if result.skipped:
        err.print(f"{len(result.predictions)} predicted, {len(result.skipped)} skipped")
        raise typer.Exit(1)
