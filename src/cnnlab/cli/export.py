"""`cnnlab export`: a checkpoint (or registry model) as TorchScript or ONNX, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnnlab.cli.app import app
from cnnlab.cli.common import handle_errors, out, print_json, printable
from cnnlab.cli.params import Json, Weights, out_option
from cnnlab.options import DEFAULT_EXPORT_TOLERANCE, ExportFormat


@app.command("export")
@handle_errors
def export_command(
    checkpoint: Annotated[str, typer.Argument(metavar="MODEL", help="A checkpoint of `cnnlab train`, or a registry model name (timm/... too).")],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", case_sensitive=False, help="File format.")] = ExportFormat.ONNX,
    out_file: Annotated[Optional[Path], out_option("Output file (default: next to the checkpoint); never the checkpoint itself.")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, metavar="DIFF", help="Largest accepted logit difference from PyTorch.")] = DEFAULT_EXPORT_TOLERANCE,
    weights: Weights = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file that an earlier export did not write.")] = False,
    as_json: Json = False,
) -> None:
    """Export to TorchScript or ONNX and check the file against PyTorch on a sample batch."""
    from cnnlab.models.export import export_model

    result = export_model(checkpoint, format, out_file, tolerance=tolerance, weights=weights, overwrite=overwrite)
    if as_json:
        print_json(result.to_dict())
        return
    out.print(
        printable(f"wrote {result.path} ({result.format}, uint8 NCHW input {list(result.input_shape[1:])}, "
                  f"{len(result.classes)} classes) and {result.metadata_path}"),
        markup=False,
    )
    out.print(
        f"check: max |logit difference| vs PyTorch {result.max_abs_diff:.2e} on {result.check_batch} images "
        f"(tolerance {result.tolerance:g}): [green]ok[/]",
    )
