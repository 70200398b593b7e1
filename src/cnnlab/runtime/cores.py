"""How many cores this process may use, and how inference splits them between decoding and the model.

Light to import (no torch): the ONNX Runtime path of ``predict`` and bench's machine record use it before,
or without, PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device_type: str = "cpu") -> int:
    """Decoding processes to use by default.

    With a GPU the CPU only decodes: one worker per core, leaving one for the main process (at most
    8). On the CPU (training's augmenting loader, review's ONNX Runtime embeddings, and the decoding threads of the
    loop without PyTorch) a quarter of the cores, and the model gets the rest (see :func:`default_cpu_threads`); the
    inference loop of a PyTorch model on the CPU uses none, its batches decoded in threads that take turns with it
    (:func:`cnnlab.runtime.batches.decode_in_threads`).
    """
    cores = available_cores()
    if device_type == "cuda":
        return max(0, min(cores - 1, 8))
    return min(cores // 4, 8)


def default_cpu_threads(workers: int) -> int:
    """CPU threads of the model (torch's or the runtime's) next to ``workers`` decoding processes."""
    return max(1, available_cores() - workers)


#: Device files of the GPU drivers PyTorch can use (NVIDIA, NVIDIA Jetson, ROCm, CUDA on WSL).
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvmap", "/dev/kfd", "/dev/dxg")


def no_gpu_here() -> bool:
    """True when this Linux machine certainly has no GPU PyTorch could use (none of the drivers' device files
    exist), so ``--device auto`` means the CPU without importing torch to ask; False elsewhere (then
    ``torch.cuda.is_available()`` decides)."""
    import sys

    return sys.platform.startswith("linux") and not any(Path(p).exists() for p in _GPU_DEVICE_FILES)
