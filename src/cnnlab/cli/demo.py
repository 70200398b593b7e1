"""`cnnlab demo`: the lab's comparison on real photos that ship with installed packages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from cnnlab.bench.config import BenchConfig, MeasureOptions
from cnnlab.cli.app import app
from cnnlab.cli.common import err, escape, handle_errors
from cnnlab.cli.params import Device, Quiet, Wide, out_option
from cnnlab.models.registry import LAB_MODELS, OFFLINE_MODEL
from cnnlab.options import RuntimeOptions, WeightsPolicy


@app.command("demo")
@handle_errors
def demo_command(
    out_dir: Annotated[Path, out_option("Where the results go (the demo photos are copied into PATH/demo-data).")] = Path("demo-results"),
    device: Device = "auto",
    wide: Wide = False,
    quiet: Quiet = False,
) -> None:
    """Run the lab's comparison on built-in real photos: the offline model plus resnet50, alexnet, googlenet.

    The lab's three models use their pretrained weights when they are on disk (see `cnnlab weights
    where`); otherwise they run with random weights, for speed and memory only, and say so.
    """
    from cnnlab.cli.bench import run_bench
    from cnnlab.imagedata.demo import build_demo_set

    data = build_demo_set(out_dir / "demo-data")
    err.print(f"demo set: {escape(str(data))} (sources listed in {escape(str(data / 'SOURCES.csv'))})")
    measure = MeasureOptions(runtime=RuntimeOptions(device=device), weights=WeightsPolicy.RANDOM_IF_MISSING,
                             latency_repeats=10, throughput_repeats=5)
    config = BenchConfig(data=data, models=[OFFLINE_MODEL, *LAB_MODELS], measure=measure)
    run_bench(config, out_dir, plots=True, quiet=quiet, wide=wide, overwrite=True)  # the demo's own folder
