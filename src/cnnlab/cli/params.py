"""Option definitions shared by several commands (sqlite-utils' ``output_options``, for typer).

Each is an ``Annotated`` type: a command declares ``device: Device = BenchConfig.device`` and gets
the same flag, help text and validation as every other command. Defaults stay with the config
classes (:func:`default_of`), so the CLI, the library and the docs cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cnnlab.errors import UsageError
from cnnlab.options import Precision, RuntimeChoice, parse_device


def default_of(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config`` (also for ``default_factory`` fields)."""
    for f in dataclasses.fields(config):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(f"{config.__name__} has no field {name!r}")


def _check_device(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_device(value)
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None


def _check_devices(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return ",".join(parse_device(part) for part in value.split(",") if part.strip())
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None


Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (auto: CUDA when there is one).",
                                     callback=_check_device)]
#: ``--device`` of commands that can spread work over several devices (``cpu,cpu``, ``cuda:0,cuda:1``).
DeviceList = Annotated[str, typer.Option("--device", callback=_check_devices, metavar="DEVICE[,DEVICE...]",
                                         help="auto, cpu, cuda or cuda:N; or a comma-separated list: models run "
                                              "at the same time, one worker per device.")]
#: Processes to re-launch the command as, under torchrun.
Nproc = Annotated[Optional[int], typer.Option("--nproc", min=1, metavar="N", help="Run as N processes on this machine "
                                              "(torchrun --standalone --nproc-per-node N); rank 0 writes the outputs.")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", case_sensitive=False,
                                                 help="Arithmetic: fp32, tf32 (CUDA), bf16 or fp16 autocast; auto picks per device.")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=0, metavar="N", help="Decoding processes (default: on a GPU cores-1 up to 8; on a CPU a quarter of the cores).")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, metavar="N", help="CPU threads of the runtime (default: the cores not used for decoding).")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, max=65536, metavar="N", help="Images per batch.")]
Weights = Annotated[Optional[str], typer.Option("--weights", metavar="PATH", help="An explicit weights file for the model.")]
WeightsDir = Annotated[Optional[str], typer.Option("--weights-dir", metavar="PATH", help="Also look for weights here (before the torch hub cache). Env: CNNLAB_WEIGHTS_DIR.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes (warnings and errors still show).")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Wide = Annotated[bool, typer.Option("--wide", help="Show every column (the default table fits 80 columns).")]
OutDir = Annotated[Path, typer.Option("--out", "-o", metavar="PATH", help="Output folder.")]
BackendOpt = Annotated[RuntimeChoice, typer.Option("--backend", case_sensitive=False, help="What runs the model: torch, or its ONNX export in onnxruntime or openvino; -int8: quantised, calibrated on your images.")]
CalibrationImages = Annotated[int, typer.Option("--calibration-images", min=1, metavar="N", help="Images an -int8 backend calibrates on (a seeded sample of yours).")]


def out_option(help: str) -> Any:
    """``-o/--out PATH`` with a command's own help text: ``out: Annotated[Path, out_option("Run folder.")]``.

    Every command that writes names its output this way (tests/cli/test_grammar.py checks it).
    """
    return typer.Option("--out", "-o", metavar="PATH", help=help)


#: ``-o/--out PATH`` where the generic help is enough.
OutPath = Annotated[Path, out_option("Where the outputs go: a folder, or a file for commands that write one.")]
#: The columns of a Hugging Face dataset or Parquet file given as DATA (:mod:`cnnlab.imagedata.sources`).
ImageColumn = Annotated[Optional[str], typer.Option("--image-column", metavar="NAME", help="The image column of a Hugging Face dataset or Parquet file (default: its Image feature).")]
LabelColumn = Annotated[Optional[str], typer.Option("--label-column", metavar="NAME", help="The label column of a Hugging Face dataset or Parquet file (default: its ClassLabel feature).")]
