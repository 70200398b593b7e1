"""The demo job: the lab's comparison on real photos that ship inside installed packages (``cnnlab demo``).

The demo owns its output folder: it copies the photos into ``OUT/demo-data`` and benchmarks them into ``OUT``.
So it refuses a folder that holds anything but an earlier demo (a data set, another bench run) unless told to
replace it, before it copies a single photo.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.bench.config import BenchConfig, MeasureOptions
from cnnlab.bench.outputs import RUN_FILES, listed_plots
from cnnlab.errors import UsageError
from cnnlab.models.registry import LAB_MODELS, OFFLINE_MODEL
from cnnlab.options import RuntimeOptions, WeightsPolicy
from cnnlab.outputs import OutputFolder
from cnnlab.progress import Progress

if TYPE_CHECKING:
    from cnnlab.bench.result import BenchResult

#: The folder of the demo photos inside the demo's output folder (with their SOURCES.csv).
DEMO_DATA = "demo-data"


def run_demo(out: str | Path = "demo-results", *, runtime: RuntimeOptions | None = None, overwrite: bool = False,
             progress: Progress | None = None) -> BenchResult:
    """Build the demo set in ``out/demo-data`` and compare the offline model with the lab's three in ``out``.

    The lab's models use their pretrained weights when they are on disk, random weights otherwise (speed and
    memory only; the results say so). Returns the :class:`~cnnlab.bench.result.BenchResult`.

    Raises:
        UsageError: ``out`` is a file, or holds something other than an earlier demo and ``overwrite`` is off.
    """
    from cnnlab.bench.job import run
    from cnnlab.imagedata.demo import build_demo_set

    folder = Path(out)
    OutputFolder(folder, "demo", run_files=(*RUN_FILES, DEMO_DATA), listed_files=listed_plots).check_path()
    earlier_demo = (folder / DEMO_DATA / "SOURCES.csv").is_file()
    if folder.is_dir() and not earlier_demo and not overwrite and any(
            not p.name.startswith(".") for p in folder.iterdir()):
        raise UsageError(f"output folder {folder} is not empty and holds no earlier demo: the demo copies its photos "
                         "and writes its results there; choose a new folder, or replace what is there (overwrite)")
    data = build_demo_set(folder / DEMO_DATA)
    measure = MeasureOptions(runtime=runtime or RuntimeOptions(), weights=WeightsPolicy.RANDOM_IF_MISSING,
                             latency_repeats=10, throughput_repeats=5)
    config = BenchConfig(data=data, models=[OFFLINE_MODEL, *LAB_MODELS], measure=measure)
    return run(config, out=folder, overwrite=True, progress=progress)  # its own earlier results: replaced
