"""Honest measurement: timers that synchronise, repeated timings with warm-up, memory peaks, MACs.

* On CUDA, timings bracket the work with ``torch.cuda.synchronize`` so that clocks read finished
  work (asynchronous kernel launches would otherwise make everything look instantaneous).
* Latency and throughput run under ``torch.inference_mode`` after warm-up iterations, and report
  the median and 90th percentile of repeats.
* Memory: CUDA allocated and reserved peaks (reset before each measurement), and the process's
  resident-set peak (Linux ``VmHWM``, which can be reset through ``/proc/self/clear_refs``).
* MACs are counted with ``torch.utils.flop_counter`` (FLOPs / 2).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

MiB = 1024 * 1024


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Repeated timings of one operation, in seconds."""

    repeats: int
    median_s: float
    p90_s: float
    min_s: float
    mean_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_repeated(
    func: Callable[[], Any], device: torch.device, *, warmup: int = 3, repeats: int = 10, max_seconds: float | None = None
) -> Timing:
    """Time ``func`` ``repeats`` times after ``warmup`` calls, synchronising around each call.

    ``max_seconds`` stops early (after at least 3 repeats) so slow models on slow machines do not
    take forever; the number of repeats actually made is reported.
    """
    for _ in range(warmup):
        func()
    synchronize(device)
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and len(times) >= 3 and time.perf_counter() - started > max_seconds:
            break
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return Timing(len(times), statistics.median(times), p90, ordered[0], statistics.fmean(times))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (``VmHWM``), in MiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MiB if sys.platform == "darwin" else rss / 1024


def current_rss_mib() -> float:
    """Current resident set size of this process, in MiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mib()


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux only). Returns whether it worked."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory of a block of work: CUDA allocated/reserved and process RSS increase, in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss_before = 0.0
        self.rss_peak_increase = 0.0
        self.cuda_peak_allocated: float | None = None
        self.cuda_peak_reserved: float | None = None
        self.cuda_before: float | None = None

    def __enter__(self) -> MemoryMeter:
        reset_peak_rss()
        self.rss_before = current_rss_mib()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_before = torch.cuda.memory_allocated(self.device) / MiB
        return self

    def __exit__(self, *exc: object) -> None:
        self.rss_peak_increase = max(0.0, peak_rss_mib() - self.rss_before)
        if self.device.type == "cuda":
            synchronize(self.device)
            self.cuda_peak_allocated = torch.cuda.max_memory_allocated(self.device) / MiB
            self.cuda_peak_reserved = torch.cuda.max_memory_reserved(self.device) / MiB


def count_macs(model: nn.Module, input_size: int, device: torch.device | None = None) -> float:
    """Multiply-accumulates of one forward pass on a 1x3xSxS input, in GMACs."""
    from torch.utils.flop_counter import FlopCounterMode

    device = device or next(model.parameters()).device
    x = torch.zeros(1, 3, input_size, input_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def parameter_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
