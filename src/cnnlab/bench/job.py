"""The ``bench`` job: check the output folder, lock it, measure every model, write the outputs.

:func:`run` (public as :func:`cnnlab.bench_models`) owns the output folder from the first check to
the last write, so the library gives the same guarantees as the command line: an output folder that
cannot be used (a file, inside the data, holding an earlier run) is refused before anything is
created; the data, models and weights are checked (:func:`cnnlab.bench.runner.preflight`) before the
folder is made, so a run that cannot start leaves nothing behind; one run writes to a folder at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.bench.outputs import RUN_FILES, listed_plots
from cnnlab.outputs import OutputFolder
from cnnlab.progress import Progress

if TYPE_CHECKING:
    from cnnlab.bench.config import BenchConfig
    from cnnlab.bench.result import BenchResult


def output_folder(out: str | Path, config: BenchConfig) -> OutputFolder:
    """The rules ``out`` follows for a run of ``config``: not inside its data, not holding another run's files."""
    return OutputFolder(Path(out), "bench", run_files=RUN_FILES, data=config.data, listed_files=listed_plots)


def run(config: BenchConfig, *, out: str | Path | None = None, overwrite: bool = False, plots: bool = True,
        progress: Progress | None = None) -> BenchResult:
    """Benchmark the models of ``config``; with ``out``, write every output file there.

    ``out=None`` measures and returns the result, writing nothing. With ``out``: the folder is checked
    before any work (not a file, not inside the data folder unless under a hidden folder, not holding an
    earlier run unless ``overwrite``), then the data and weights (:func:`~cnnlab.bench.runner.preflight`),
    then the folder is created and locked, checked again under the lock, the models run, the earlier
    run's files are removed and the new ones written (:func:`~cnnlab.bench.outputs.write_bench_outputs`;
    ``plots=False`` skips the PNG plots). A model that fails is a row with its error, never an exception.

    Under torchrun every rank calls this; rank 0 checks, merges and writes, the others only measure
    their share (their result holds no rows).

    Raises:
        UsageError: an unusable output folder or configuration, said before any model runs.
        DatasetError, WeightsNotFoundError: see :func:`~cnnlab.bench.runner.preflight`.
        OutputError: the folder cannot be written, or another run holds its lock.
    """
    from cnnlab.bench.outputs import write_bench_outputs
    from cnnlab.bench.runner import measure_models, preflight, start_standby
    from cnnlab.runtime.distributed import destroy_process_group, from_environment

    progress = progress or Progress()
    ctx = from_environment()
    if out is None or (ctx is not None and not ctx.is_main):  # torchrun: only rank 0 writes
        try:
            return measure_models(config, progress=progress)
        finally:
            destroy_process_group()
    folder = output_folder(out, config)
    folder.check(replace=overwrite)  # creates nothing: a bad folder is said at once
    # Under torchrun too, rank 0 checks before it makes the folder: if that fails, it raises and the
    # launcher stops the other ranks (waiting for rank 0 to join them); if it passes, measure_models
    # hands the plan to every rank.
    # the first model's worker imports while the data and weights are checked (not under torchrun: each rank's own)
    standby = start_standby(config) if ctx is None else None
    try:
        plan = preflight(config, progress)
        folder.create()
        with folder.lock():
            folder.check(replace=overwrite)  # again, under the lock: another run may have finished meanwhile
            try:
                result = measure_models(config, progress=progress, plan=plan, standby=standby)
            finally:
                destroy_process_group()
            folder.clear_previous()
            result.files = write_bench_outputs(result, folder.path, plots=plots)
    finally:
        if standby is not None:
            standby.close()
    return result


#: The public name (``cnnlab.bench_models``): the same function.
bench_models = run
