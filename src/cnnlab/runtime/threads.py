"""OpenMP settings that keep PyTorch's CPU threads fast when the cores are shared.

PyTorch's CPU kernels run in OpenMP (libgomp) parallel regions, and by default a thread that finishes its
share spins, burning its core, waiting for the next region. Alone on the machine that saves a wake-up; with
other work on the cores (other processes, or this run's own loader processes) the spinning threads take
the time the others need and every region waits for its slowest, descheduled thread: PyTorch's figures
collapse while ONNX Runtime's own thread pool does not. ``OMP_WAIT_POLICY=PASSIVE`` makes the threads
sleep instead. It is read once, when libgomp starts, so it must be in the environment before torch is
imported: :func:`passive_openmp` sets it for this process (the CLI commands that run models call it at
import) and for child processes (bench's workers). A value the user set is kept.
``benchmarks/bench_threads.py`` measures the effect.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: What cnnlab sets unless the user set it.
OPENMP_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE"}


def passive_openmp(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Add :data:`OPENMP_SETTINGS` to ``env`` (default: this process's environment) where not set already;
    returns ``env``. Has no effect on a process whose torch is imported already."""
    target = os.environ if env is None else env
    for key, value in OPENMP_SETTINGS.items():
        if not target.get(key):
            target[key] = value
    return target
