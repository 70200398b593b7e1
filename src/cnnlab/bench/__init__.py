"""``bench``: compare classifiers on a labelled image set — accuracy, speed and memory, one row per model.

* :mod:`~cnnlab.bench.config`: :class:`BenchConfig` and :class:`MeasureOptions` (what and how);
* :mod:`~cnnlab.bench.job`: :func:`run` (also :func:`bench_models`): check, lock, measure, write;
* :mod:`~cnnlab.bench.runner`: :func:`~cnnlab.bench.runner.measure_models`, one worker process per model;
* :mod:`~cnnlab.bench.worker`: measuring one model (run as ``python -m cnnlab.bench.worker``);
* :mod:`~cnnlab.bench.protocol`: the versioned request/result messages between the two;
* :mod:`~cnnlab.bench.measure`: timers, memory meters, MAC counting;
* :mod:`~cnnlab.bench.scoring` and :mod:`~cnnlab.bench.result`: accuracy and the result objects.

Names are imported on first use, so the CLI can read the config's defaults without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["BenchConfig", "MeasureOptions"],
        "result": ["BenchResult", "ModelAccuracy", "ModelResult"],
        "outputs": ["write_bench_outputs"],
        "job": ["bench_models", "run"],
        "tables": ["full_table", "lab_table", "summary_table"],
    },
)

if TYPE_CHECKING:
    from cnnlab.bench.config import BenchConfig, MeasureOptions
    from cnnlab.bench.job import bench_models, run
    from cnnlab.bench.outputs import write_bench_outputs
    from cnnlab.bench.result import BenchResult, ModelAccuracy, ModelResult
    from cnnlab.bench.tables import full_table, lab_table, summary_table
