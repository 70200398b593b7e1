"""Measuring one model: the part of ``bench`` that runs in its own process.

:func:`run_model` loads a model (PyTorch, or the ONNX file the parent prepared for ONNX Runtime or
OpenVINO: :mod:`cnnlab.runtime`), measures throughput and latency on synthetic batches, evaluates
it over the request's image files (the end-to-end time, split into data and model time), records
memory peaks and MACs, and returns a :class:`~cnnlab.bench.protocol.RunResult`. It never raises:
a failure is reported in ``error`` so that a bulk run goes on. ``python -m cnnlab.bench.worker
REQUEST.json RESULT.json`` runs it in a fresh process (the default in ``bench``), so one model's
memory, caches or cuDNN state cannot colour the next model's figures; it reports progress as JSON
lines on stdout (:class:`cnnlab.progress.JsonLinesProgress`).
"""

from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C during the imports below (seconds): a quiet 130 too, not a traceback
    import os as _os
    import signal as _signal

    _signal.signal(_signal.SIGINT, lambda *_: _os._exit(130))
    import sys as _sys

    if _sys.argv[1:2] == ["--standby"] and len(_sys.argv) == 3:  # started early: it must not outlive bench
        from cnnlab.bench.orphans import die_with_parent

        die_with_parent(int(_sys.argv[2]))

import contextlib
import dataclasses
import functools
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cnnlab.bench.config import MeasureOptions
from cnnlab.bench.measure import (
    MemoryMeter,
    MiB,
    count_macs,
    current_rss_mib,
    parameter_bytes,
    peak_rss_mib,
    reset_peak_rss,
    time_repeated,
)
from cnnlab.bench.protocol import PREDICTION_DTYPE, TOPK, RunRequest, RunResult
from cnnlab.bench.user_classes import UserClasses, accepted_sets
from cnnlab.errors import CnnlabError
from cnnlab.models.files import is_checkpoint_file, model_file_kind
from cnnlab.models.load import LoadedModel, load_torch, resolve_device
from cnnlab.models.registry import get_spec
from cnnlab.options import RuntimeChoice, WeightsPolicy
from cnnlab.progress import JsonLinesProgress, Progress
from cnnlab.runtime.allocator import give_back_free_memory
from cnnlab.runtime.autotune import choose_batch_and_workers
from cnnlab.runtime.cores import available_cores, default_cpu_threads, default_workers
from cnnlab.runtime.gpu_decode import decode_label, use_device_decode
from cnnlab.runtime.inference import run_inference
from cnnlab.runtime.loader import load_runtime_file

if TYPE_CHECKING:
    from cnnlab.runtime.base import Runtime

def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_model(request: RunRequest, progress: Progress | None = None) -> RunResult:
    """Measure one model. Never raises; errors end up in ``result.error``."""
    result = RunResult(model=request.model)
    try:
        _run(request, result, progress or Progress())
    except Exception as exc:  # noqa: BLE001 - a bulk run must go on; the row carries the error
        if isinstance(exc, CnnlabError):
            result.error = str(exc)
        elif isinstance(exc, torch.cuda.OutOfMemoryError):
            result.error = f"out of GPU memory: {str(exc).splitlines()[0]}"
        else:  # an unexpected failure: keep the traceback for a bug report
            result.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
    return result


def _load(request: RunRequest, threads: int) -> Runtime:
    m = request.measure
    if request.backend != RuntimeChoice.TORCH:  # the parent exported (and quantised) the model already
        if request.runtime_file is None:
            raise CnnlabError(f"the {request.backend} backend: the worker was given no ONNX file")
        return load_runtime_file(Path(request.runtime_file), request.backend, device=m.runtime.device, threads=threads)
    source = m.source(request.model)
    if is_checkpoint_file(request.model):  # a checkpoint from `cnnlab train` always brings its own weights
        source = dataclasses.replace(source, policy=WeightsPolicy.PRETRAINED)
    return load_torch(source, m.runtime.to_run(), progress=request.progress)


def _run(request: RunRequest, result: RunResult, progress: Progress) -> None:
    m = request.measure
    # Load the registry, BLAS and (on a GPU) the CUDA context and cuDNN before the memory baseline,
    # so that the baseline is the bare runtime and the figures are the model's own.
    if model_file_kind(request.model) is None:
        get_spec(request.model)
    torch.ones(8, 8) @ torch.ones(8, 8)
    target = resolve_device(m.runtime.device)
    if target.type == "cuda":
        torch.cuda.init()
        torch.nn.functional.conv2d(torch.ones(1, 3, 8, 8, device=target), torch.ones(4, 3, 3, 3, device=target))
        torch.cuda.synchronize(target)
    auto = m.runtime.workers is None or m.runtime.batch_size is None
    workers = default_workers(target.type) if m.runtime.workers is None else m.runtime.workers
    if m.runtime.threads:
        threads = m.runtime.threads
    elif target.type != "cpu":
        threads = torch.get_num_threads()
    else:  # auto workers: the model keeps every core (loader processes share them: cnnlab.runtime.threads)
        threads = available_cores() if m.runtime.workers is None else default_cpu_threads(workers)
    torch.set_num_threads(threads)
    reset_peak_rss()
    rss_start = current_rss_mib()
    progress.start("load", f"{request.model}: load")
    t0 = time.perf_counter()
    model = _load(request, threads)
    result.load_s = time.perf_counter() - t0
    progress.finish("load")
    info = model.runtime_info()
    result.threads = int(info["threads"])
    result.workers = workers
    result.device = str(info.get("device", target))
    result.device_name = _device_name(torch.device(result.device))
    result.precision = model.precision_label
    result.backend = model.backend.value
    result.quantization = model.quantization.value
    result.provider = str(info["provider"])
    result.calibration_images = int(info.get("calibration_images", 0))
    result.spec = model.spec.to_dict()
    result.categories = list(model.categories)
    result.random_weights = model.random_weights
    result.weights_path = str(model.weights_path) if model.weights_path else None
    if isinstance(model, LoadedModel):
        result.channels_last, result.folded_bn = model.channels_last, model.folded_bn
        result.params = model.params or sum(p.numel() for p in model.module.parameters())  # before folding
        result.weights_mib = parameter_bytes(model.module) / MiB  # what the running module holds
        if model.weights_path is not None:
            result.weights_file_mb = model.weights_path.stat().st_size / 1e6
    else:  # an ONNX file: what is loaded is the file
        result.runtime_file = str(info["file"])
        result.params = model.spec.num_params or None
        file = Path(result.runtime_file)
        data = file.with_name(file.name + ".data")  # weights over 1.5 GB go to a separate file
        size = file.stat().st_size + (data.stat().st_size if data.is_file() else 0)
        result.weights_mib, result.weights_file_mb = size / MiB, size / 1e6
    result.rss_after_load_mib = current_rss_mib() - rss_start
    if target.type == "cuda" and isinstance(model, LoadedModel):
        result.cuda_weights_mib = torch.cuda.memory_allocated(target) / MiB

    kind = target.type
    if auto:
        choice = choose_batch_and_workers(model, [Path(p) for p in request.paths], batch_size=m.runtime.batch_size,
                                          workers=m.runtime.workers, fast_decode=m.runtime.fast_decode,
                                          progress=progress, task="auto")
        result.auto = choice.to_dict()
        result.workers = workers = choice.workers
        m = dataclasses.replace(m, runtime=m.runtime.replace(batch_size=choice.batch_size, workers=choice.workers))
        request = dataclasses.replace(request, measure=m)
        give_back_free_memory()  # the trials' larger batches stay out of the chosen batch's memory figures
    with MemoryMeter(model.device) as meter, torch.inference_mode():
        _time_synthetic(model, kind, result, progress, m)
        _evaluate(model, kind, request, result, progress)
    result.rss_peak_mib = max(0.0, meter.rss_before - rss_start + meter.rss_peak_increase)
    result.cuda_peak_allocated_mib = meter.cuda_peak_allocated
    result.cuda_peak_reserved_mib = meter.cuda_peak_reserved
    result.process_peak_rss_mib = peak_rss_mib()
    if not isinstance(model, LoadedModel):
        return  # MACs are counted on the PyTorch module (the published figure stays in the row)
    try:
        result.gmacs_measured = count_macs(model.module, model.preprocessing.crop_size, model.device)
    except Exception as exc:  # noqa: BLE001 - a counting failure must not lose the other figures
        progress.note(f"could not count MACs for {request.model}: {exc}", warning=True)


def _time_synthetic(model: Runtime, kind: str, result: RunResult, progress: Progress, m: MeasureOptions) -> None:
    """Model-only speed on random uint8 batches: throughput at the batch size, latency at batch 1.

    ``kind`` is the type of device the model runs on (``cpu``, ``cuda``): it sets the default batch size.
    """
    crop = model.preprocessing.crop_size
    sizes = m.throughput_batch_sizes(kind)
    batch_size = m.batch_size_for(kind)
    started = time.perf_counter()
    # The speed budget: most of it for throughput (shared by the batch sizes), the rest for latency.
    share = m.speed_budget_s * 0.7 / len(sizes)
    progress.start("throughput", f"{model.name}: throughput", total=len(sizes) * m.throughput_repeats)
    for n, size in enumerate(sizes):
        progress.update("throughput", description=f"{model.name}: throughput at batch {size}")
        batch = torch.randint(0, 256, (size, 3, crop, crop), dtype=torch.uint8, device=model.device)

        def shown(done: int, planned: int, seconds: float, size: int = size, n: int = n) -> None:
            progress.update("throughput", completed=n * m.throughput_repeats + done,
                            info=f"round {done}: {size / seconds:,.1f} img/s at batch {size}")

        timing = time_repeated(functools.partial(model, batch), model.device, warmup=m.warmup,
                               repeats=m.throughput_repeats, max_seconds=min(m.max_seconds_per_timing, share),
                               on_round=shown)
        result.throughput_curve[str(size)] = size / timing.median_s
        if size == batch_size:
            result.throughput_batch = size
            result.throughput_timing = timing.to_dict()
            result.throughput_ips = size / timing.median_s
        progress.update("throughput", completed=(n + 1) * m.throughput_repeats,
                        info=f"{size / timing.median_s:,.1f} img/s at batch {size} "
                             f"(median of {timing.repeats}, IQR {timing.iqr_relative:.0%})")
    progress.finish("throughput")
    one = torch.randint(0, 256, (1, 3, crop, crop), dtype=torch.uint8, device=model.device)
    progress.start("latency", f"{model.name}: latency at batch 1", total=m.latency_repeats)

    def latency_shown(done: int, planned: int, seconds: float) -> None:
        progress.update("latency", completed=done, info=f"{seconds * 1e3:,.1f} ms")

    left = max(m.speed_budget_s - (time.perf_counter() - started), m.speed_budget_s * 0.1)
    result.latency_b1 = time_repeated(lambda: model(one), model.device, warmup=m.warmup, repeats=m.latency_repeats,
                                      max_seconds=min(m.max_seconds_per_timing, left),
                                      on_round=latency_shown).to_dict()
    progress.finish("latency")
    result.speed_s = time.perf_counter() - started


def _evaluate(model: Runtime, kind: str, request: RunRequest, result: RunResult, progress: Progress) -> None:
    """The lab's "time": evaluate every file once, data (decode + preprocess) and model time apart.

    Predictions are appended to ``request.predictions_file`` batch by batch, so memory does not
    grow with the number of images.
    """
    m = request.measure
    paths = [Path(p) for p in request.paths]
    k = min(TOPK, model.spec.num_classes)
    result.topk = k
    accepted = accepted_sets(model.spec.source, model.categories, request.class_names, request.imagenet_accepted)
    classes = UserClasses(accepted, model.spec.num_classes)
    data_s = model_s = 0.0
    done = 0
    result.decode = decode_label(use_device_decode(m.runtime.decode, model.device), model.device)
    start = time.perf_counter()
    with open(request.predictions_file, "wb") as out:
        for batch in run_inference(model, paths, batch_size=m.batch_size_for(kind), workers=result.workers,
                                   fast_decode=m.runtime.fast_decode, progress=progress, task="eval",
                                   description=f"{model.name}: evaluation", decode=m.runtime.decode):
            t0 = time.perf_counter()
            result.eval_skipped.extend({"path": s.path, "reason": s.reason, "detail": s.detail}
                                       for s in batch.skipped)
            if batch.indices:
                probs = torch.softmax(batch.logits, dim=1)
                values, idx = probs.topk(k, dim=1)
                pred, mass = classes.predicted(probs, idx[:, 0])
                records = np.zeros(len(batch.indices), dtype=PREDICTION_DTYPE)
                records["row"] = batch.indices
                records["topk"][:] = -1
                records["topk"][:, :k] = idx.numpy()
                records["probs"][:, :k] = values.numpy()
                records["pred_class"] = pred.numpy()
                records["pred_mass"] = mass.clamp(0.0, 1.0).numpy()
                out.write(records.tobytes())
                done += len(batch.indices)
            data_s += batch.data_s
            model_s += batch.model_s + (time.perf_counter() - t0)
    result.eval_total_s = time.perf_counter() - start
    result.eval_data_s = data_s
    result.eval_model_s = model_s
    result.eval_images = done


def main(argv: list[str] | None = None) -> int:
    """``python -m cnnlab.bench.worker REQUEST.json RESULT.json``: progress events on stdout.

    ``--standby PARENT_PID`` instead of the two paths: say so once imported and read them from stdin
    (:mod:`cnnlab.bench.standby`); its end before them ends the worker with status 0.
    Ctrl-C (which reaches the worker too) ends it quietly with status 130: the parent reports the run.
    """
    from cnnlab.runtime.allocator import keep_freed_memory

    keep_freed_memory()  # this process runs one model: its forward passes reuse freed memory (runtime.allocator)
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["--standby"]:
            from cnnlab.bench.standby import request_from_stdin
            from cnnlab.models.registry import all_specs

            with contextlib.suppress(Exception):  # the registry's imports too; a failure is the request's to report
                all_specs()
            given = request_from_stdin(sys.stdin)
            if given is None:
                return 0
            args = given
        request = RunRequest.read(Path(args[0]))
        progress = JsonLinesProgress(sys.stdout) if request.progress else Progress()
        result = run_model(request, progress)
        result.write(Path(args[1]))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # imported: main() handles Ctrl-C
    raise SystemExit(main())
