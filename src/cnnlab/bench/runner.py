"""``bench_models``: run every model of a :class:`BenchConfig`, each in its own process, and score them.

Accuracy for ImageNet models goes through the label mapping (:mod:`cnnlab.labels`): a folder
``cat`` accepts any of the classes WordNet puts under "cat". Models fine-tuned by ``cnnlab train``
are scored on the user's classes directly. A model that fails, crashes or runs past
``model_timeout_s`` becomes a row with its error, and the others go on.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cnnlab.bench.config import BenchConfig
from cnnlab.bench.protocol import ProtocolError, RunRequest, RunResult
from cnnlab.bench.result import BenchResult, ModelResult, environment
from cnnlab.bench.scoring import comparisons, score
from cnnlab.datasets import LabelledImages, scan_dataset
from cnnlab.errors import DatasetError
from cnnlab.labels import map_classes
from cnnlab.progress import Progress, replay


def _relay(stream: object, progress: Progress, prefix: str) -> None:
    """Replay the worker's progress events; pass anything else it prints through to stderr."""
    for line in stream:  # type: ignore[attr-defined]
        if not replay(line, progress, key_prefix=prefix):
            sys.stderr.write(line)


def run_isolated(request: RunRequest, workdir: Path, index: int, *, progress: Progress,
                 timeout_s: float | None = None) -> RunResult:
    """Measure one model in a fresh ``python -m cnnlab.bench.worker`` process."""
    req_file = workdir / f"request-{index}.json"
    res_file = workdir / f"result-{index}.json"
    res_file.unlink(missing_ok=True)
    request.write(req_file)
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.bench.worker", str(req_file), str(res_file)],
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    relay = threading.Thread(target=_relay, args=(proc.stdout, progress, f"{index}:"), daemon=True)
    relay.start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        relay.join(timeout=5)
        return RunResult(model=request.model, error=f"stopped after the time limit of {timeout_s:g} s per model")
    relay.join(timeout=5)
    if res_file.is_file():
        try:
            return RunResult.read(res_file)
        except (ProtocolError, ValueError) as exc:
            return RunResult(model=request.model, error=f"unreadable worker result: {exc}")
    code = proc.returncode
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    hint = " (killed: out of memory?)" if code in (-9, 137) else ""
    return RunResult(model=request.model, error=f"the worker process died with {how}{hint}")


def _run_in_process(request: RunRequest, progress: Progress) -> RunResult:
    import gc

    import torch

    from cnnlab.bench.worker import run_model

    result = run_model(request, progress)
    gc.collect()  # drop this model's memory so the next one starts clean
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _load_predictions(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def bench_models(config: BenchConfig, *, progress: Progress | None = None) -> BenchResult:
    """Run the benchmark described by ``config``. Never raises for a single model's failure."""
    progress = progress or Progress()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    dataset: LabelledImages = scan_dataset(config.data, split=config.split)
    if len(dataset) == 0:
        raise DatasetError(f"no images found in {config.data}" + (f" (split {config.split})" if config.split else ""))
    mappings = map_classes(dataset.classes, config.mapping_file)
    results: list[ModelResult] = []
    total = len(config.models)
    progress.start("models", "models", total=total)
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        workdir = Path(tmp)
        for i, name in enumerate(config.models):
            progress.update("models", description=f"model {i + 1}/{total}: {name}")
            pred_file = workdir / f"pred-{i}.npz"
            request = RunRequest(model=name, paths=[str(p) for p in dataset.paths], predictions_file=str(pred_file),
                                 measure=config.measure, progress=True)
            t0 = time.perf_counter()
            if config.isolate:
                run = run_isolated(request, workdir, i, progress=progress, timeout_s=config.model_timeout_s)
            else:
                run = _run_in_process(request, progress)
            model = ModelResult(run)
            if run.error is None:
                model.predictions = _load_predictions(pred_file)
                if not run.random_weights and model.predictions is not None:  # random weights: never accuracy
                    model.accuracy = score(model, dataset, mappings)
            results.append(model)
            status = "ok" if model.ok else "error"
            progress.update("models", advance=1)
            progress.finish(f"model-{i}", f"{model.name}: {status} ({time.perf_counter() - t0:.0f} s)")
    progress.finish("models")
    return BenchResult(
        config=config,
        dataset=dataset,
        mappings=mappings,
        models=results,
        comparisons=comparisons(results),
        environment=environment(),
        started=started,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
