"""``bench`` on several processes (``torchrun`` or ``--nproc N``) and on several devices at once.

Design: under torchrun every rank runs the whole ``bench`` command. Rank 0 checks the data and the
weights (:func:`cnnlab.bench.runner.preflight`) and hands its plan to the others, so every rank sees
the same list of images. For each model, each rank starts the usual worker process (or runs it
in-process with ``--in-process``) on its own contiguous shard of the images
(:func:`cnnlab.runtime.distributed.shard`: every image exactly once, no padding with repeats), on its own
device (``cuda:LOCAL_RANK`` on GPUs). The ranks talk only between models, in the parent processes,
over gloo (objects only, no tensors: the model never runs in these processes): each rank's
:class:`RunResult` and prediction records go to rank 0 (:func:`gather_run`), which merges them into
one row and alone scores, reports and writes files. A worker that fails, crashes or times out
is that rank's error, and the row carries it; the collective calls are never skipped.

Merged figures: counts and skipped files are summed; the evaluation's wall time is the slowest
rank's, so ``eval_images_per_s`` is the images/s of all ranks together; memory columns are the
largest rank's (one process), with ``*_total`` columns summing them; model-only throughput and
latency are rank 0's, with ``throughput_images_per_s_total`` summing the ranks'. Every rank's own
figures are kept in ``run.ranks`` (results.json) and ``rank_eval_images_per_s`` (results.csv).

Several devices without torchrun (``--device cpu,cpu`` or ``cuda:0,cuda:1``): the rows (models) are
dealt out to one worker process per device, running at the same time; each model runs whole on one
device, so its figures are those of a single run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

from cnnlab.bench.config import MeasureOptions
from cnnlab.bench.protocol import PREDICTION_DTYPE, RunResult
from cnnlab.runtime.distributed import (
    DistContext,
    barrier,
    broadcast_from_main,
    from_environment,
    gather_to_main,
    init_process_group,
)

T = TypeVar("T")

#: Per-rank figures kept in ``RunResult.ranks``.
RANK_FIELDS = ("device", "device_name", "threads", "workers", "load_s", "eval_images", "eval_total_s",
               "eval_data_s", "eval_model_s", "throughput_ips", "rss_peak_mib", "process_peak_rss_mib",
               "cuda_peak_allocated_mib", "cuda_peak_reserved_mib", "error")


def join() -> DistContext | None:
    """This process's place in a torchrun launch (joining its gloo group), or ``None`` outside one."""
    ctx = from_environment()
    if ctx is not None and ctx.world_size > 1:
        init_process_group(ctx, "cpu")  # objects only between parents: gloo even when the models run on GPUs
    return ctx


def on_main(ctx: DistContext | None, work: Callable[[], T]) -> T:
    """``work()`` on rank 0 only, its value (or the error it raised) on every rank."""
    if ctx is None or ctx.world_size == 1:
        return work()
    outcome: tuple[bool, Any] = (True, None)
    if ctx.is_main:
        try:
            outcome = (True, work())
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            outcome = (False, exc)
    ok, value = broadcast_from_main(outcome, ctx)
    if not ok:
        if not ctx.is_main:
            value.reported_by_main = True  # rank 0 says it: the others exit with its status, quietly
        raise value
    return value


@contextlib.contextmanager
def main_first(ctx: DistContext | None) -> Iterator[None]:
    """Rank 0 does the block first (e.g. fills a cache), then the other ranks."""
    if ctx is not None and not ctx.is_main:
        barrier(ctx)
    try:
        yield
    finally:
        if ctx is not None and ctx.is_main:
            barrier(ctx)


def measure_for_rank(measure: MeasureOptions, ctx: DistContext | None) -> MeasureOptions:
    """This rank's device (``cuda:LOCAL_RANK`` on GPUs) and, on CPUs, its share of the cores."""
    if ctx is None or ctx.world_size == 1:
        return measure
    import torch

    from cnnlab.runtime.cores import available_cores

    device = measure.runtime.device
    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{ctx.local_rank % torch.cuda.device_count()}"
    elif device == "auto":
        device = "cpu"
    threads = measure.runtime.threads
    if threads is None and device == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        workers = measure.runtime.workers or 0
        threads = max(1, available_cores() // max(1, local) - workers)
    return dataclasses.replace(measure, runtime=measure.runtime.replace(device=device, threads=threads))


def gather_run(run: RunResult, predictions: np.ndarray | None, offset: int, ctx: DistContext | None
               ) -> tuple[RunResult, np.ndarray | None] | None:
    """Every rank's result for one row on rank 0, merged; ``None`` on the other ranks.

    ``predictions`` hold rows relative to this rank's shard, which starts at ``offset``.
    """
    if ctx is None or ctx.world_size == 1:
        return run, predictions
    if predictions is not None:
        predictions = predictions.copy()
        predictions["row"] += offset
    parts = gather_to_main((run.to_dict(), predictions), ctx)
    if parts is None:
        return None
    runs = [RunResult.from_dict(r) for r, _ in parts]
    return merge_runs(runs, [p for _, p in parts])


def merge_runs(runs: list[RunResult], predictions: list[np.ndarray | None]) -> tuple[RunResult, np.ndarray | None]:
    """One row from the ranks' results (see the module's docstring for how each figure combines)."""
    first = runs[0]
    merged = dataclasses.replace(first, eval_skipped=[s for r in runs for s in r.eval_skipped])
    merged.world_size = len(runs)
    merged.ranks = [{"rank": i, **{name: getattr(r, name) for name in RANK_FIELDS}} for i, r in enumerate(runs)]
    errors: dict[str, list[int]] = {}  # the same error on several ranks is said once, with its ranks
    for i, r in enumerate(runs):
        if r.error is not None:
            errors.setdefault(r.error, []).append(i)
    if errors:
        merged.error = "; ".join(f"{_ranks_phrase(where, len(runs))}: {error}" for error, where in errors.items())
        return merged, None
    merged.eval_images = sum(r.eval_images for r in runs)
    for name in ("eval_total_s", "eval_data_s", "eval_model_s", "load_s", "rss_after_load_mib", "rss_peak_mib",
                 "process_peak_rss_mib", "cuda_weights_mib", "cuda_peak_allocated_mib", "cuda_peak_reserved_mib"):
        values = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        setattr(merged, name, max(values) if values else None)
    devices = list(dict.fromkeys(r.device for r in runs))
    merged.device = ",".join(devices)
    if any(p is None for p in predictions):
        return merged, None
    records = np.concatenate([p for p in predictions if p is not None]) if predictions else \
        np.zeros(0, dtype=PREDICTION_DTYPE)
    return merged, records[np.argsort(records["row"], kind="stable")]


def _ranks_phrase(ranks: list[int], world_size: int) -> str:
    if len(ranks) == world_size > 1:
        return "every rank"
    return ("ranks " if len(ranks) > 1 else "rank ") + ", ".join(map(str, ranks))


def rank_totals(run: RunResult) -> dict[str, Any]:
    """The extra results.csv columns of a row: processes, per-rank speed, totals over the ranks."""
    ranks = run.ranks or []

    def total(name: str) -> float | None:
        values = [float(r[name]) for r in ranks if r.get(name) is not None]
        return sum(values) if values else None

    # a rank with no image to evaluate (fewer images than ranks) has no images/s, rather than 0
    per_rank = [(r["eval_images"] / r["eval_total_s"]) if r.get("eval_total_s") and r.get("eval_images") else None
                for r in ranks]
    single = {"throughput_images_per_s_total": run.throughput_ips, "process_peak_rss_mib_total":
              run.process_peak_rss_mib, "cuda_peak_allocated_mib_total": run.cuda_peak_allocated_mib}
    if not ranks:
        return {"processes": run.world_size, "rank_eval_images_per_s": "", **single}
    return {
        "processes": run.world_size,
        "rank_eval_images_per_s": ";".join(f"{v:.2f}" if v is not None else "" for v in per_rank),
        "throughput_images_per_s_total": total("throughput_ips"),
        "process_peak_rss_mib_total": total("process_peak_rss_mib"),
        "cuda_peak_allocated_mib_total": total("cuda_peak_allocated_mib"),
    }


def on_devices(run_row: Callable[[int, str], T], count: int, devices: list[str]) -> list[T]:
    """``run_row(i, device)`` for every row ``i``, one row at a time per device, all devices at once.

    Each device takes the next row as soon as its previous one finished; the results come back in
    row order.
    """
    import queue
    import threading

    todo: queue.Queue[int] = queue.Queue()
    for i in range(count):
        todo.put(i)
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def serve(device: str) -> None:
        while not errors:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[i] = run_row(i, device)
            except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
                errors.append(exc)

    threads = [threading.Thread(target=serve, args=(d,), name=f"bench-{d}", daemon=True) for d in devices]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException as exc:  # Ctrl-C: the threads take no new row (the caller stops the running ones)
        errors.append(exc)
        raise
    if errors:
        raise errors[0]
    return [results[i] for i in range(count)]
