"""The machine a benchmark ran on, and how busy it was: recorded with every speed figure.

A speed figure taken while other processes compete for the cores says more about them than about the
model, so ``bench`` records the load average when it starts and ends, the CPU model, the cores, and the
share of time the hypervisor gave to other guests (steal, from ``/proc/stat``), and warns when the
machine was busy. Light to import: no torch.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.runtime.cores import available_cores


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _proc_stat_cpu() -> list[int] | None:
    """The first eight jiffy counters of all CPUs from ``/proc/stat`` (user, nice, system, idle, iowait, irq,
    softirq, steal); ``None`` where there is no such file."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    return [int(v) for v in first[1:9]]


def _cpu_times() -> tuple[int, int] | None:
    """(total, steal) jiffies of all CPUs; ``None`` where there is no ``/proc/stat``."""
    values = _proc_stat_cpu()
    if values is None:
        return None
    return sum(values), values[7] if len(values) > 7 else 0


def _busy_jiffies() -> tuple[int, int] | None:
    """(total, busy) jiffies of all CPUs (busy: neither idle nor waiting for I/O)."""
    values = _proc_stat_cpu()
    if values is None:
        return None
    total = sum(values)
    return total, total - values[3] - (values[4] if len(values) > 4 else 0)


#: Seconds bench watches the CPUs before its first model, to tell whether other processes keep them busy.
START_SAMPLE_S = 0.5


def busy_cores_now(seconds: float) -> float | None:
    """How many cores other processes keep busy, measured over ``seconds`` while this process sleeps.

    The load average is a minute's moving average: just after a pip install or an earlier run it still says
    busy on a machine that has gone quiet (and says quiet for a while after a job starts), so the start of a
    run is judged on what the CPUs do now."""
    first = _busy_jiffies()
    if first is None or seconds <= 0:
        return None
    time.sleep(seconds)
    second = _busy_jiffies()
    if second is None or second[0] <= first[0]:
        return None
    return (second[1] - first[1]) / (second[0] - first[0]) * (os.cpu_count() or 1)


@dataclass(frozen=True)
class LoadSnapshot:
    """The load average and CPU time counters at one moment, and the cores busy just then (when sampled)."""

    loadavg: tuple[float, float, float] | None
    cpu_times: tuple[int, int] | None
    busy_cores: float | None = None

    @classmethod
    def take(cls, sample_s: float = 0.0) -> LoadSnapshot:
        """The snapshot; with ``sample_s``, also the cores busy over that many seconds (:func:`busy_cores_now`)."""
        try:
            load = os.getloadavg()
        except (OSError, AttributeError):
            load = None
        busy = busy_cores_now(sample_s) if sample_s > 0 else None
        return cls(load, _cpu_times(), busy)


def machine_state(start: LoadSnapshot, end: LoadSnapshot, *, cores_in_use: int) -> dict[str, Any]:
    """What results.json records about the machine, with ``busy`` (and ``busy_reason``) when the speed
    figures are not reliable: other work above the cores the run left free when it started, more
    load at the end than the run itself makes, or the hypervisor stealing time.

    ``cores_in_use``: the most threads plus loader workers any model ran with (capped at the cores).
    """
    cores = available_cores()
    in_use = max(1, min(cores, cores_in_use))
    steal = None
    if start.cpu_times and end.cpu_times and end.cpu_times[0] > start.cpu_times[0]:
        steal = (end.cpu_times[1] - start.cpu_times[1]) / (end.cpu_times[0] - start.cpu_times[0])
    reasons = []
    load_start = start.loadavg[0] if start.loadavg else None
    load_end = end.loadavg[0] if end.loadavg else None
    if start.busy_cores is not None:  # what the CPUs did just before the run: the load average lags a minute
        if start.busy_cores + in_use > cores + 0.5:
            reasons.append(f"other processes kept {start.busy_cores:.1f} cores busy when the run started, with "
                           f"{in_use} of {cores} cores needed")
    elif load_start is not None and load_start + in_use > cores + 0.5:
        reasons.append(f"load average {load_start:.1f} when the run started, with {in_use} of {cores} cores needed")
    if load_end is not None and load_end > max(cores, in_use) + 1.0:
        reasons.append(f"load average {load_end:.1f} when it ended, on {cores} cores")
    if steal is not None and steal > 0.05:
        reasons.append(f"{steal:.0%} of the CPU time stolen by the hypervisor")
    return {
        "cpu_model": cpu_model(),
        "cores": cores,
        "cpu_count": os.cpu_count(),
        "cores_in_use": in_use,
        "loadavg_start": list(start.loadavg) if start.loadavg else None,
        "loadavg_end": list(end.loadavg) if end.loadavg else None,
        "busy_cores_start": start.busy_cores,
        "steal_fraction": steal,
        "busy": bool(reasons),
        "busy_reason": "; ".join(reasons) or None,
    }


def busy_warning(machine: dict[str, Any]) -> str | None:
    """The warning for a busy machine (terminal and report), or ``None``."""
    if not machine.get("busy"):
        return None
    return (f"the machine was busy ({machine.get('busy_reason')}): the speed figures are not reliable; "
            "compare rows of this run only, or measure again on a quiet machine")
