"""``measure_models``: run every model of a :class:`BenchConfig` on every backend, each in its own process,
and score them.

A row is a model on a backend (:class:`~cnnlab.options.RuntimeChoice`). For ONNX Runtime and
OpenVINO rows the parent prepares the ONNX file first (the cached export; for int8, its version
calibrated on a seeded sample of the evaluated images, the same sample for every model), so the
worker's load time and memory are the runtime's own; the preparation time is in ``prepare_s``.

Accuracy for ImageNet models goes through the label mapping (:mod:`cnnlab.imagedata.labels`): a folder
``cat`` accepts any of the classes WordNet puts under "cat". Models fine-tuned by ``cnnlab train``
are scored on the user's classes directly. A model that fails, crashes or runs past
``model_timeout_s`` becomes a row with its error, and the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.bench import ranks
from cnnlab.bench.config import BenchConfig
from cnnlab.bench.machine import START_SAMPLE_S, LoadSnapshot, busy_warning, machine_state
from cnnlab.bench.protocol import PREDICTION_DTYPE, ProtocolError, RunRequest, RunResult
from cnnlab.bench.result import BenchResult, ModelResult, environment
from cnnlab.bench.scoring import comparisons, score
from cnnlab.bench.standby import StandbyWorker
from cnnlab.bench.zygote import ENV_SWITCH, ForkedWorker, Zygote, ZygoteError, start_zygote
from cnnlab.errors import CnnlabError, DatasetError, UsageError, WeightsNotFoundError
from cnnlab.imagedata.datasets import LabelledImages, scan_dataset
from cnnlab.imagedata.imagenet_val import read_real_labels, real_sets_for, scan_flat_val
from cnnlab.imagedata.labels import LabelMapping, disjoint_mappings, map_classes
from cnnlab.options import RuntimeChoice, WeightsPolicy
from cnnlab.progress import Progress, replay
from cnnlab.runtime.distributed import shard
from cnnlab.runtime.threads import passive_openmp


def _relay(stream: object, progress: Progress, prefix: str) -> None:
    """Replay the worker's progress events; pass anything else it prints through to stderr."""
    for line in stream:  # type: ignore[attr-defined]
        if not replay(line, progress, key_prefix=prefix):
            sys.stderr.write(line)


#: Seconds to wait, once the worker has exited, for the relay to pass on what is left in the pipe. The
#: worker's last lines arrive at once; a process that outlives it (a decoding subprocess of a killed
#: worker) may hold the pipe open for seconds, and is not waited for.
RELAY_GRACE_S = 0.5


def failed_result(request: RunRequest, error: str) -> RunResult:
    """The row of a model whose worker gave no result: named as a finished row would be (the registry
    name with its weights tag; ``@backend`` for rows not run by PyTorch)."""
    from cnnlab.models.files import model_file_kind
    from cnnlab.models.registry import get_spec
    from cnnlab.options import parse_choice

    spec: dict[str, str] = {}
    if model_file_kind(request.model) is None:
        with contextlib.suppress(CnnlabError):
            spec["name"] = get_spec(request.model).name
    choice = parse_choice(RuntimeChoice, request.backend, "backend")
    return RunResult(model=request.model, error=error, spec=spec, backend=choice.backend.value,
                     quantization=choice.quantization.value)


def worker_env() -> MutableMapping[str, str]:
    """The environment of the worker processes: sleeping, not spinning, OpenMP threads (cnnlab.runtime.threads)."""
    return passive_openmp(dict(os.environ))


def start_standby(config: BenchConfig) -> StandbyWorker | None:
    """The first model's worker, importing while the caller checks the data (:mod:`cnnlab.bench.standby`);
    ``None`` where models run in this process or with the zygote on (it forks them); not for torchrun's ranks
    (the caller knows them)."""
    env = worker_env()
    if not config.isolate or env.get(ENV_SWITCH) == "1":
        return None
    return StandbyWorker(env)


def run_isolated(request: RunRequest, workdir: Path, index: int, *, progress: Progress,
                 timeout_s: float | None = None, zygote: Zygote | None = None,
                 standby: StandbyWorker | None = None) -> RunResult:
    """Measure one model in a fresh process: ``standby`` when it is ready and not yet taken
    (:mod:`cnnlab.bench.standby`), forked by ``zygote`` (:mod:`cnnlab.bench.zygote`) when there is one that works,
    else started as ``python -m cnnlab.bench.worker``."""
    req_file = workdir / f"request-{index}.json"
    res_file = workdir / f"result-{index}.json"
    res_file.unlink(missing_ok=True)
    request.write(req_file)
    proc: subprocess.Popen[str] | ForkedWorker | None = None
    imported_s = 0.0  # of the time limit, spent before the process was handed its request
    if standby is not None:
        proc = standby.take(req_file, res_file, worker_env())
        if proc is not None:  # a fresh worker's limit counts its imports too
            imported_s = standby.import_s
    if proc is None and zygote is not None and zygote.alive:
        with contextlib.suppress(ZygoteError):
            proc = zygote.spawn([str(req_file), str(res_file)])
    if proc is None:
        proc = subprocess.Popen([sys.executable, "-m", "cnnlab.bench.worker", str(req_file), str(res_file)],
                                stdout=subprocess.PIPE, text=True, bufsize=1, env=worker_env())
    with _LIVE_LOCK:
        _LIVE_WORKERS.add(proc)
        if _STOPPING.is_set():  # bench was interrupted while this thread started the worker
            proc.kill()
    try:
        return _wait_for(proc, request, res_file, progress, index, timeout_s, imported_s)
    finally:
        with _LIVE_LOCK:
            _LIVE_WORKERS.discard(proc)


#: The workers running now (several at once with a list of devices), stopped by :func:`kill_workers`.
_LIVE_WORKERS: set[subprocess.Popen[str] | ForkedWorker] = set()
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


def kill_workers() -> None:
    """Stop every worker still running, and any another thread starts from now on (bench was interrupted:
    none may run on, orphaned). :func:`measure_models` allows workers again when it starts."""
    with _LIVE_LOCK:
        _STOPPING.set()
        procs = list(_LIVE_WORKERS)
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()
    for proc in procs:
        proc.wait()


def _wait_for(proc: subprocess.Popen[str] | ForkedWorker, request: RunRequest, res_file: Path, progress: Progress, index: int,
              timeout_s: float | None, imported_s: float = 0.0) -> RunResult:
    relay = threading.Thread(target=_relay, args=(proc.stdout, progress, f"{index}:"), daemon=True)
    relay.start()
    try:
        proc.wait(timeout=None if timeout_s is None else max(0.0, timeout_s - imported_s))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        relay.join(timeout=RELAY_GRACE_S)
        started = f" (its worker's start {imported_s:.0f} s before the model's turn included)" if imported_s else ""
        return failed_result(request, f"stopped after the time limit of {timeout_s:g} s per model{started}")
    except BaseException:  # Ctrl-C or a signal sent to bench alone: the worker must not run on, orphaned
        proc.kill()
        proc.wait()
        raise
    relay.join(timeout=RELAY_GRACE_S)
    if res_file.is_file():
        try:
            return RunResult.read(res_file)
        except (ProtocolError, ValueError) as exc:
            return failed_result(request, f"unreadable worker result: {exc}")
    lost = getattr(proc, "lost", None)
    if lost is not None:
        return failed_result(request, f"the worker process was stopped: {lost}")
    code = proc.returncode if proc.returncode is not None else proc.wait()
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    hint = " (killed: out of memory?)" if code in (-9, 137) else ""
    return failed_result(request, f"the worker process died with {how}{hint}")


def _run_in_process(request: RunRequest, progress: Progress) -> RunResult:
    import gc

    import torch

    from cnnlab.bench.worker import run_model

    result = run_model(request, progress)
    gc.collect()  # drop this model's memory so the next one starts clean
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _load_predictions(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    return np.fromfile(path, dtype=PREDICTION_DTYPE)


@dataclass
class Plan:
    """What :func:`preflight` found: the images, the label mapping, the ReaL sets, the weights to use."""

    dataset: LabelledImages
    mappings: dict[str, LabelMapping]
    real_sets: list[tuple[int, ...] | None] | None
    #: Per model: ``"pretrained"``, ``"random"``, ``"checkpoint"`` or ``"onnx"``.
    weights: dict[str, str]
    #: The rows to run, in order: each model on each backend (an ``.onnx`` file runs in onnxruntime
    #: when torch is asked for: see :func:`cnnlab.runtime.loader.effective_choice`).
    rows: list[tuple[str, RuntimeChoice]] = field(default_factory=list)

    def describe(self) -> str:
        ds = self.dataset
        mapped = sum(1 for m in self.mappings.values() if m.mapped)
        text = (f"{len(ds):,} images in {len(ds.classes):,} classes ({mapped:,} mapped onto ImageNet); "
                f"{len(ds.skipped):,} files left out")
        randoms = [n for n, w in self.weights.items() if w == "random"]
        if randoms:
            text += f"; random weights (speed and memory only): {', '.join(randoms)}"
        return text


def preflight(config: BenchConfig, progress: Progress | None = None) -> Plan:
    """Everything that can be checked before a model runs: the data, the label mapping, the model names,
    and the weights (downloaded now if they are missing and can be fetched).

    Raises:
        DatasetError: no images, none of them decodes, or unreadable ground-truth/ReaL files.
        UnknownModelError: a model name the registry does not know.
        WeightsNotFoundError: pretrained weights are missing and cannot be downloaded (one message for all).
        UsageError: a backend whose packages are not installed (the message names the extra).
    """
    from cnnlab.models.files import is_onnx_file
    from cnnlab.runtime.loader import check_installed, effective_choice

    progress = progress or Progress()
    progress.start("preflight", "checking data, labels and weights")
    rows = [(name, choice) for name in config.models  # a model named twice runs twice; its backends once each
            for choice in dict.fromkeys(effective_choice(name, b) for b in config.backends)]
    for choice in dict.fromkeys(c for _, c in rows):
        check_installed(choice, export=any(c is choice and not is_onnx_file(n) for n, c in rows))
    _check_devices(config)
    if config.labels_file is not None:
        dataset = scan_flat_val(config.data, config.labels_file)
    else:
        dataset = scan_dataset(config.data, split=config.split, image_column=config.image_column,
                               label_column=config.label_column)
    if len(dataset) == 0:
        raise DatasetError(f"no images found in {config.data}" + (f" (split {config.split})" if config.split else ""))
    _check_one_decodes(dataset, config)
    mappings = disjoint_mappings(map_classes(dataset.classes, config.mapping_file))
    real_sets = real_sets_for(dataset.paths, read_real_labels(config.real_labels)) if config.real_labels else None
    weights = {name: _weights_for(name, config) for name in config.models}
    progress.finish("preflight")
    return Plan(dataset, mappings, real_sets, weights, rows)


def _check_devices(config: BenchConfig) -> None:
    """Raise :class:`UsageError` for a device this machine does not have (``--device cuda`` without a GPU,
    ``cuda:3`` of two): said now, not once per model after its worker started."""
    from cnnlab.models.load import resolve_device

    for device in dict.fromkeys(config.devices or [config.measure.runtime.device]):
        try:
            resolve_device(device)
        except CnnlabError as exc:
            raise UsageError(str(exc)) from None


def _check_one_decodes(dataset: LabelledImages, config: BenchConfig) -> None:
    """Raise :class:`DatasetError` unless some image of ``dataset`` decodes (tried in order, up to the first
    that does), so that a set of unreadable files fails in a second instead of after every model ran."""
    from cnnlab.errors import ImageDecodeError
    from cnnlab.imagedata.decode import decode_image

    reasons: dict[str, int] = {}
    example = ""
    for path in dataset.paths:
        try:
            decode_image(path)
        except ImageDecodeError as exc:
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
            example = example or f"{path}: {exc}"
            continue
        return
    counts = ", ".join(f"{n:,} {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    raise DatasetError(f"no image could be read in {config.data}: none of its {len(dataset):,} image files decodes "
                       f"({counts}; e.g. {example})")


def _weights_for(name: str, config: BenchConfig) -> str:
    from cnnlab.models.checkpoint import read_checkpoint
    from cnnlab.models.files import model_file_kind
    from cnnlab.models.registry import get_spec
    from cnnlab.models.weights import fetch_weights, locate_weights
    from cnnlab.runtime.artifacts import read_sidecar

    kind = model_file_kind(name)
    if kind == "checkpoint":
        read_checkpoint(Path(name))  # a missing, unsafe or foreign file is reported now, not in a worker
        return "checkpoint"
    if kind == "onnx":
        read_sidecar(Path(name))  # a missing file or sidecar is reported now
        return "onnx"
    spec = get_spec(name)
    m = config.measure
    if m.weights is WeightsPolicy.RANDOM:
        return "random"
    if locate_weights(spec, m.weights_dir).found is not None:
        return "pretrained"
    if m.weights is WeightsPolicy.RANDOM_IF_MISSING:
        return "random"
    try:
        fetch_weights(spec, progress=False)
    except WeightsNotFoundError:
        raise _missing_weights(config, spec.weights_file or name) from None
    return "pretrained"


def _missing_weights(config: BenchConfig, first: str) -> WeightsNotFoundError:
    from cnnlab.models.registry import get_spec
    from cnnlab.models.weights import locate_weights, search_dirs

    missing = []
    for name in config.models:
        try:
            spec = get_spec(name)
        except CnnlabError:
            continue
        if locate_weights(spec, config.measure.weights_dir).found is None:
            missing.append((spec.name, spec.weights_file or spec.name))
    missing = missing or [(first, first)]
    files = ", ".join(f for _, f in missing)
    dirs = ", ".join(str(d) for d in search_dirs(config.measure.weights_dir))
    return WeightsNotFoundError(
        f"pretrained weights missing and not downloadable: {files}\n"
        f"  searched: {dirs}\n"
        f"  either fetch them on a machine with internet: cnnlab weights fetch {' '.join(a for a, _ in missing)}\n"
        "  or measure speed and memory only: --random-weights-if-missing")


def measure_models(config: BenchConfig, *, progress: Progress | None = None, plan: Plan | None = None,
                   standby: StandbyWorker | None = None) -> BenchResult:
    """Run the benchmark described by ``config`` and score it, writing nothing. Never raises for a single
    model's failure.

    Everything that can fail before the first model runs fails first (see :func:`preflight`); a caller
    that ran :func:`preflight` itself (:func:`cnnlab.bench.job.run` does, before it creates its output
    folder) passes its ``plan``, and may pass the first model's worker, started while it checked
    (:func:`start_standby`; the caller closes it).
    """
    progress = progress or Progress()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if standby is not None:  # still importing, it would count as a busy core in the load sample below
        standby.wait_ready(on_slow=lambda: progress.note("waiting for the first model's worker to import torch"))
    load_start = LoadSnapshot.take(sample_s=START_SAMPLE_S)
    _STOPPING.clear()
    ctx = ranks.join()  # torchrun: every rank runs this, rank 0 checks the data and merges (cnnlab.bench.ranks)
    if ctx is not None and len(config.devices) > 1:
        raise UsageError("a list of devices is for one process; under torchrun each rank takes its own device")
    given = plan
    plan = ranks.on_main(ctx, lambda: given or preflight(config, progress))
    progress.note(plan.describe())
    leakage = _leakage(plan, progress)
    dataset, mappings = plan.dataset, plan.mappings
    imagenet_accepted = [list(mappings[c].indices) for c in dataset.classes]
    total = len(plan.rows)
    calibration = _calibration(config, dataset.paths)
    part = shard(len(dataset.paths), ctx)
    progress.start("models", "models", total=total)
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        # started after the load sample above (its imports would count as a busy core), it imports while the
        # first row is prepared; it is closed before the folder goes
        zygote = start_zygote(worker_env()) if config.isolate else None
        if zygote is not None:
            stack.callback(zygote.close)

        def run_row(i: int, device: str | None = None) -> ModelResult | None:
            name, choice = plan.rows[i]
            label = name if choice is RuntimeChoice.TORCH else f"{name} on {choice.value}"
            progress.update("models", description=f"model {i + 1}/{total}: {label}")
            pred_file = workdir / f"pred-{i}.bin"
            t0 = time.perf_counter()
            measure = ranks.measure_for_rank(config.measure, ctx)
            if device is not None:
                measure = dataclasses.replace(measure, runtime=measure.runtime.replace(device=device))
            request = RunRequest(model=name, paths=[str(dataset.paths[j]) for j in part],
                                 predictions_file=str(pred_file), measure=measure, class_names=list(dataset.classes),
                                 imagenet_accepted=imagenet_accepted, progress=True, backend=choice.value)
            with ranks.main_first(ctx):  # an export to the shared cache: rank 0 writes it, the others read it
                run, prepare_s = _prepare(request, choice, plan.weights[name] == "random", calibration, config,
                                          progress)
            if run is None:
                if config.isolate:
                    run = run_isolated(request, workdir, i, progress=progress, timeout_s=config.model_timeout_s,
                                       zygote=zygote, standby=standby)
                else:
                    run = _run_in_process(request, progress)
            run.prepare_s = prepare_s
            gathered = ranks.gather_run(run, _load_predictions(pred_file) if run.error is None else None,
                                        part.start, ctx)
            if gathered is None:  # not rank 0: its share went to rank 0
                return None
            model = ModelResult(gathered[0], predictions=gathered[1], leakage=leakage.get(name))
            if model.ok and not model.run.random_weights and model.predictions is not None:
                model.accuracy = score(model, dataset, mappings, real_sets=plan.real_sets,  # random: never accuracy
                                       gallery_size=config.gallery_size)
            progress.update("models", advance=1)
            progress.finish(f"model-{i}", _one_line(model, time.perf_counter() - t0))
            return model

        try:
            if len(config.devices) > 1:
                rows = ranks.on_devices(run_row, total, config.devices)
            else:
                rows = [run_row(i) for i in range(total)]
        except BaseException:  # Ctrl-C while workers run on other threads (a list of devices): stop them all
            kill_workers()
            raise
    results = [m for m in rows if m is not None]
    progress.finish("models")
    env = environment()
    env["machine"] = machine_state(load_start, LoadSnapshot.take(), cores_in_use=max(
        [m.run.threads + m.run.workers for m in results if m.ok] or [1]))
    warning = busy_warning(env["machine"])
    if warning is not None:
        progress.note(warning, warning=True)
    return BenchResult(
        config=config,
        dataset=dataset,
        mappings=mappings,
        models=results,
        comparisons=comparisons(results),
        environment=env,
        started=started,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _leakage(plan: Plan, progress: Progress) -> dict[str, dict[str, Any]]:
    """For each checkpoint, which evaluated images it was trained or validated on (the files are hashed
    once for all checkpoints); a warning for each checkpoint whose accuracy here would be optimistic."""
    from cnnlab.models.leakage import file_digests, overlap

    checkpoints = [name for name, kind in plan.weights.items() if kind == "checkpoint"]
    if not checkpoints:
        return {}
    paths = plan.dataset.paths
    digests = file_digests(paths, progress)
    found = {}
    for name in checkpoints:
        report = overlap(name, paths, digests=digests)
        message = report.message()
        if message is not None:
            progress.note(message, warning=report.recorded)
        found[name] = report.to_dict()
    return found


def _calibration(config: BenchConfig, paths: list[Path]) -> list[Path]:
    """The images every int8 row calibrates on (none when no row is int8)."""
    from cnnlab.options import Quantization
    from cnnlab.runtime.quantize import calibration_sample

    if all(b.quantization is Quantization.NONE for b in config.backends):
        return []
    return calibration_sample(paths, config.calibration_images)


def _prepare(request: RunRequest, choice: RuntimeChoice, random_weights: bool, calibration: list[Path],
             config: BenchConfig, progress: Progress) -> tuple[RunResult | None, float | None]:
    """Export (and quantise) the model for ``choice`` into ``request.runtime_file``.

    Returns ``(None, seconds)``, or a result carrying the error when preparing failed (the other rows go on).
    """
    if choice is RuntimeChoice.TORCH:
        return None, None
    from cnnlab.runtime.loader import prepare_runtime_file

    t0 = time.perf_counter()
    try:
        source = dataclasses.replace(config.measure.source(request.model),
                                     policy=WeightsPolicy.RANDOM if random_weights else WeightsPolicy.PRETRAINED)
        path = prepare_runtime_file(source, choice, calibration=calibration, progress=progress)
    except Exception as exc:  # noqa: BLE001 - one model's failed export must not stop the run
        error = str(exc) if isinstance(exc, CnnlabError) else f"{type(exc).__name__}: {exc}"
        return failed_result(request, f"{choice.value}: {error}"), time.perf_counter() - t0
    request.runtime_file = str(path)
    return None, time.perf_counter() - t0


def _one_line(model: ModelResult, seconds: float) -> str:
    """The line a finished model leaves on the screen (also in quiet mode)."""
    if not model.ok:
        return f"{model.name}: error after {seconds:.0f} s: {str(model.run.error).splitlines()[0]}"
    f = model.flat()
    parts = [f"top-1 {f['top1']:.3f}" if f["top1"] is not None else
             ("random weights" if model.run.random_weights else "not scored")]
    if f["eval_images_per_s"]:
        parts.append(f"{f['eval_images_per_s']:,.1f} img/s end to end")
    if f["memory_mib"] is not None:
        parts.append(f"{f['memory_mib']:,.0f} MiB")
    return f"{model.name}: " + ", ".join(parts) + f" ({seconds:.0f} s)"
