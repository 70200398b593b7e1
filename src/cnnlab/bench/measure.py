"""Honest measurement: timers that synchronise, repeated timings with warm-up, memory peaks, MACs.

* On CUDA, timings bracket the work with ``torch.cuda.synchronize`` so that clocks read finished
  work (asynchronous kernel launches would otherwise make everything look instantaneous).
* Latency and throughput run under ``torch.inference_mode`` after warm-up iterations, in rounds
  (a fast call repeated until a round is long enough to time, as ``torch.utils.benchmark`` does), and
  report the median of the rounds with its spread (quartiles, min-max).
* The machine's state is part of every speed figure: :func:`machine_load` records the load average,
  CPU model, cores and steal time, and says when the machine was busy.
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
    """Repeated timings of one operation, in seconds per call: the median of the rounds and their spread.

    A round times ``calls_per_round`` back-to-back calls (``torch.utils.benchmark``'s autorange: a fast
    call is repeated until a round is long enough for the clock), and is reported per call.
    """

    repeats: int
    median_s: float
    p90_s: float
    min_s: float
    mean_s: float
    #: Quartiles and slowest round: the spread (the IQR is ``q3_s - q1_s``).
    q1_s: float = 0.0
    q3_s: float = 0.0
    max_s: float = 0.0
    calls_per_round: int = 1
    warmup: int = 0
    #: Whether the time budget cut the rounds short.
    budget_hit: bool = False

    @property
    def iqr_relative(self) -> float:
        """The interquartile range as a share of the median (0.05: the middle half within 5 %)."""
        return (self.q3_s - self.q1_s) / self.median_s if self.median_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "iqr_relative": self.iqr_relative}


#: Shortest round worth timing: below it a round repeats the call (the clock and the loop would show).
MIN_ROUND_S = 0.05


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values."""
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def time_repeated(
    func: Callable[[], Any], device: torch.device, *, warmup: int = 3, repeats: int = 10,
    max_seconds: float | None = None, min_repeats: int = 3,
    on_round: Callable[[int, int, float], None] | None = None,
) -> Timing:
    """Time ``func``: ``warmup`` calls, then up to ``repeats`` rounds, synchronising around each round.

    A call faster than :data:`MIN_ROUND_S` is repeated within a round so the round is long enough to time
    (the figure stays per call). ``max_seconds`` bounds the rounds (at least ``min_repeats`` are made;
    ``budget_hit`` says when it cut them short), and the warm-up to half of it (at least one call).
    ``on_round(done, planned, seconds_per_call)`` is called after every round (live progress).
    """
    first = 0.0
    warmed = 0
    warm_start = time.perf_counter()
    while warmed < max(1, warmup):  # a slow call needs fewer warm-ups: stop once half the budget is spent
        synchronize(device)
        t0 = time.perf_counter()
        func()
        synchronize(device)
        first = time.perf_counter() - t0
        warmed += 1
        if max_seconds is not None and time.perf_counter() - warm_start > max_seconds / 2:
            break
    calls = 1 if first >= MIN_ROUND_S else max(1, min(1000, int(MIN_ROUND_S / max(first, 1e-7)) + 1))
    times: list[float] = []
    started = time.perf_counter()
    hit = False
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            func()
        synchronize(device)
        times.append((time.perf_counter() - t0) / calls)
        if on_round is not None:
            on_round(len(times), repeats, times[-1])
        if max_seconds is not None and len(times) >= min_repeats and time.perf_counter() - started > max_seconds:
            hit = len(times) < repeats
            break
    ordered = sorted(times)
    return Timing(len(times), statistics.median(times), _quantile(ordered, 0.9), ordered[0], statistics.fmean(times),
                  q1_s=_quantile(ordered, 0.25), q3_s=_quantile(ordered, 0.75), max_s=ordered[-1],
                  calls_per_round=calls, warmup=warmed, budget_hit=hit)


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
