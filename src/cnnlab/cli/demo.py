"""`cnnlab demo`: the lab's comparison on real photos that ship with installed packages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnnlab.cli.app import app
from cnnlab.cli.common import err, escape, handle_errors
from cnnlab.cli.params import Device, Quiet, Wide, out_option
from cnnlab.options import RuntimeOptions


@app.command("demo")
@handle_errors
def demo_command(
    out_dir: Annotated[Path, out_option("Where the results go (the demo photos are copied into PATH/demo-data).")] = Path("demo-results"),
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace what PATH holds when it is not an earlier demo.")] = False,
    wide: Wide = False,
    quiet: Quiet = False,
) -> None:
    """Run the lab's comparison on built-in real photos: the offline model plus resnet50, alexnet, googlenet.

    The lab's three models use their pretrained weights when they are on disk (see `cnnlab weights
    where`); otherwise they run with random weights, for speed and memory only, and say so.
    """
    from cnnlab.bench.demo import DEMO_DATA, run_demo
    from cnnlab.cli.bench import report_bench
    from cnnlab.cli.progress import RichProgress

    with RichProgress(quiet=quiet) as progress:
        result = run_demo(out_dir, runtime=RuntimeOptions(device=device), overwrite=overwrite, progress=progress)
    data = out_dir / DEMO_DATA
    err.print(f"demo set: {escape(str(data))} (sources listed in {escape(str(data / 'SOURCES.csv'))})")
    report_bench(result, out_dir, wide=wide)
