"""Measuring one model: the part of ``bench`` that runs in its own process.

:func:`run_model` loads a model, measures throughput and latency on synthetic batches, evaluates
it over a list of image files (the end-to-end time, split into data and model time), records
memory peaks and MACs, and returns plain data. It never raises: a failure is reported in
``error`` so that a bulk run goes on. ``python -m cnnlab.bench_run REQUEST.json`` runs it in a
fresh process (the default in ``bench``), so one model's memory, caches or cuDNN state cannot
colour the next model's figures.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.datasets import default_cpu_threads, default_workers, make_loader
from cnnlab.measure import MiB, MemoryMeter, count_macs, current_rss_mib, parameter_bytes, reset_peak_rss, time_repeated
from cnnlab.models import load_model, resolve_device
from cnnlab.weights import locate_weights
from cnnlab.zoo import get_spec

TOPK = 5


@dataclass(kw_only=True)
class MeasureOptions:
    """How a model is measured: the options ``bench`` passes on to each model's worker."""

    device: str = "auto"
    batch_size: int = 32
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    workers: int | None = None
    threads: int | None = None
    #: never | always | missing (random weights only for models whose weights are not on disk)
    random_weights: str = "never"
    weights_dir: str | Path | None = None
    fast_decode: bool = True
    warmup: int = 3
    latency_repeats: int = 20
    throughput_repeats: int = 10
    max_seconds_per_timing: float = 15.0
    progress: bool = True

    def measure_options(self) -> dict[str, Any]:
        """The options alone, as plain data (paths as strings)."""
        values = {f.name: getattr(self, f.name) for f in fields(MeasureOptions)}
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


@dataclass(kw_only=True)
class RunRequest(MeasureOptions):
    """Everything a worker needs, as plain data (it travels as JSON)."""

    model: str
    paths: list[str]
    predictions_file: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), **self.measure_options()}


@dataclass
class RunResult:
    """Plain-data figures for one model (see :class:`cnnlab.bench.ModelResult` for their meaning)."""

    model: str
    error: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)
    random_weights: bool = False
    weights_path: str | None = None
    device: str = ""
    device_name: str = ""
    threads: int = 0
    workers: int = 0
    load_s: float | None = None
    eval_images: int = 0
    eval_skipped: list[dict[str, Any]] = field(default_factory=list)
    eval_total_s: float | None = None
    eval_data_s: float | None = None
    eval_model_s: float | None = None
    latency_b1: dict[str, Any] | None = None
    throughput_batch: int | None = None
    throughput_timing: dict[str, Any] | None = None
    throughput_ips: float | None = None
    params: int | None = None
    weights_mib: float | None = None
    weights_file_mb: float | None = None
    gmacs_measured: float | None = None
    rss_after_load_mib: float | None = None
    rss_peak_mib: float | None = None
    cuda_weights_mib: float | None = None
    cuda_peak_allocated_mib: float | None = None
    cuda_peak_reserved_mib: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_model(request: RunRequest) -> RunResult:
    """Measure one model. Never raises; errors end up in ``result.error``."""
    result = RunResult(model=request.model)
    try:
        _run(request, result)
    except Exception as exc:  # noqa: BLE001 - a bulk run must go on; the row carries the error
        from cnnlab.errors import CnnlabError

        if isinstance(exc, CnnlabError):
            result.error = str(exc)
        elif isinstance(exc, torch.cuda.OutOfMemoryError):
            result.error = f"out of GPU memory: {str(exc).splitlines()[0]}"
        else:  # an unexpected failure: keep the traceback for a bug report
            result.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
    return result


def _load(request: RunRequest) -> Any:
    if Path(request.model).is_file():  # a checkpoint from `cnnlab train` always brings its own weights
        random_weights = False
    elif request.random_weights == "missing":
        random_weights = locate_weights(get_spec(request.model), request.weights_dir).found is None
    else:
        random_weights = request.random_weights == "always"
    return load_model(
        request.model,
        weights_dir=request.weights_dir,
        random_weights=random_weights,
        device=request.device,
        precision=request.precision,
        channels_last=request.channels_last,
        compile=request.compile,
        progress=request.progress,
    )


def _run(request: RunRequest, result: RunResult) -> None:
    requested_threads = request.threads
    # Load the registry, BLAS and (on a GPU) the CUDA context and cuDNN before the memory baseline,
    # so that the baseline is the bare runtime and the figures are the model's own.
    if not Path(request.model).is_file():
        get_spec(request.model)
    torch.ones(8, 8) @ torch.ones(8, 8)
    target = resolve_device(request.device)
    if target.type == "cuda":
        torch.cuda.init()
        torch.nn.functional.conv2d(torch.ones(1, 3, 8, 8, device=target), torch.ones(4, 3, 3, 3, device=target))
        torch.cuda.synchronize(target)
    reset_peak_rss()
    rss_start = current_rss_mib()
    t0 = time.perf_counter()
    model = _load(request)
    result.load_s = time.perf_counter() - t0
    device = model.device
    workers = default_workers(device.type) if request.workers is None else request.workers
    torch.set_num_threads(requested_threads or (default_cpu_threads(workers) if device.type == "cpu" else torch.get_num_threads()))
    result.threads = torch.get_num_threads()
    result.device = str(device)
    result.device_name = _device_name(device)
    result.spec = model.spec.to_dict()
    result.categories = list(model.categories)
    result.random_weights = model.random_weights
    result.weights_path = str(model.weights_path) if model.weights_path else None
    result.params = sum(p.numel() for p in model.module.parameters())
    result.weights_mib = parameter_bytes(model.module) / MiB
    if model.weights_path is not None:
        result.weights_file_mb = model.weights_path.stat().st_size / 1e6
    result.rss_after_load_mib = current_rss_mib() - rss_start
    if device.type == "cuda":
        result.cuda_weights_mib = torch.cuda.memory_allocated(device) / MiB

    crop = model.preprocessing.crop_size
    with MemoryMeter(device) as meter, torch.inference_mode():
        batch = torch.randint(0, 256, (request.batch_size, 3, crop, crop), dtype=torch.uint8, device=device)
        timing = time_repeated(lambda: model(batch), device, warmup=request.warmup,
                               repeats=request.throughput_repeats, max_seconds=request.max_seconds_per_timing)
        result.throughput_batch = request.batch_size
        result.throughput_timing = timing.to_dict()
        result.throughput_ips = request.batch_size / timing.median_s
        one = batch[:1].clone()
        result.latency_b1 = time_repeated(lambda: model(one), device, warmup=request.warmup,
                                          repeats=request.latency_repeats,
                                          max_seconds=request.max_seconds_per_timing).to_dict()
        del batch, one
        _evaluate(model, request, result)
    result.rss_peak_mib = max(0.0, meter.rss_before - rss_start + meter.rss_peak_increase)
    result.cuda_peak_allocated_mib = meter.cuda_peak_allocated
    result.cuda_peak_reserved_mib = meter.cuda_peak_reserved
    try:
        result.gmacs_measured = count_macs(model.module, crop, device)
    except Exception as exc:  # noqa: BLE001 - a counting failure must not lose the other figures
        print(f"cnnlab: could not count MACs for {request.model}: {exc}", file=sys.stderr)


def _evaluate(model: Any, request: RunRequest, result: RunResult) -> None:
    """The lab's "time": evaluate every file once, data (decode + preprocess) and model time apart."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.console import Console

    paths = [Path(p) for p in request.paths]
    if model.device.type == "cuda":  # the first pinned host-to-device copy sets things up: keep it out of the timing
        crop = model.preprocessing.crop_size
        torch.zeros(1, 3, crop, crop, dtype=torch.uint8).pin_memory().to(model.device, non_blocking=True)
        torch.cuda.synchronize(model.device)
    loader = make_loader(paths, model.preprocessing, batch_size=request.batch_size, workers=request.workers,
                         pin_memory=model.device.type == "cuda", fast_decode=request.fast_decode,
                         device_type=model.device.type)
    result.workers = loader.num_workers
    n = len(paths)
    indices = np.full(n, -1, dtype=np.int64)
    top_idx = np.zeros((n, TOPK), dtype=np.int64)
    top_prob = np.zeros((n, TOPK), dtype=np.float32)
    k = min(TOPK, model.spec.num_classes)
    data_s = model_s = 0.0
    done = 0
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not request.progress, transient=False) as progress:
        task = progress.add_task(f"{model.name} eval", total=n)
        start = time.perf_counter()
        iterator = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            t1 = time.perf_counter()
            data_s += t1 - t0
            for i, reason, detail in batch.failed:
                result.eval_skipped.append({"path": request.paths[i], "reason": reason, "detail": detail})
            if batch.images is not None:
                probs = model(batch.images).softmax(dim=1)
                values, idx = probs.topk(k, dim=1)
                values, idx = values.cpu().numpy(), idx.cpu().numpy()  # .cpu() waits for the GPU
                rows = np.asarray(batch.indices)
                indices[rows] = rows
                top_idx[rows, :k] = idx
                top_prob[rows, :k] = values
            model_s += time.perf_counter() - t1
            done += len(batch.indices) + len(batch.failed)
            progress.update(task, completed=done)
        result.eval_total_s = time.perf_counter() - start
    result.eval_data_s = data_s
    result.eval_model_s = model_s
    ok = indices >= 0
    result.eval_images = int(ok.sum())
    # a model with fewer than TOPK classes (a fine-tuned 3-class head) has only k columns
    np.savez(request.predictions_file, rows=np.nonzero(ok)[0], topk=top_idx[ok, :k], probs=top_prob[ok, :k])


def main(argv: list[str] | None = None) -> int:
    """``python -m cnnlab.bench_run REQUEST.json RESULT.json``."""
    args = sys.argv[1:] if argv is None else argv
    request = RunRequest(**json.loads(Path(args[0]).read_text()))
    result = run_model(request)
    Path(args[1]).write_text(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
