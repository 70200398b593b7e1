"""``bench``: compare classifiers on a labelled folder — accuracy, speed and memory, one row per model.

Accuracy for ImageNet models goes through the label mapping (:mod:`cnnlab.labels`): a folder
``cat`` accepts any of the classes WordNet puts under "cat". Models fine-tuned by ``cnnlab train``
are scored on the user's classes directly. Each model is measured in its own process by default
(:mod:`cnnlab.bench_run`); a model that fails becomes a row with its error and the others go on.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import metrics
from cnnlab.bench_run import MeasureOptions, RunRequest, RunResult, run_model
from cnnlab.datasets import LabelledImages, SkippedFile, scan_dataset
from cnnlab.errors import DatasetError
from cnnlab.labels import LabelMapping, map_classes
from cnnlab.zoo import LAB_MODELS

SCHEMA_VERSION = 1


@dataclass(kw_only=True)
class BenchConfig(MeasureOptions):
    """Options of a benchmark run (the CLI's options, one to one): what to measure, and how."""

    data: Path
    models: list[str] = field(default_factory=lambda: list(LAB_MODELS))
    split: str | None = None
    mapping_file: Path | None = None
    #: Run each model in its own process (recommended: clean memory figures and failures).
    isolate: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


@dataclass
class ModelAccuracy:
    """Accuracy of one model on the scored images (those whose class maps onto its outputs)."""

    scored: int
    summary: metrics.AccuracySummary
    per_class: list[metrics.ClassMetrics]
    confusion: np.ndarray
    unscored_classes: list[str]
    hits1: np.ndarray  # per scored image, aligned with BenchResult.scored_rows[model]
    rows: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "scored": self.scored,
            **self.summary.to_dict(),
            "per_class": [c.to_dict() for c in self.per_class],
            "confusion": self.confusion.tolist(),
            "unscored_classes": self.unscored_classes,
        }


@dataclass
class ModelResult:
    """One row of the benchmark: the measured figures of one model, or its error."""

    run: RunResult
    accuracy: ModelAccuracy | None = None
    predictions: dict[str, np.ndarray] | None = None

    @property
    def name(self) -> str:
        return str(self.run.spec.get("name") or self.run.model)

    @property
    def ok(self) -> bool:
        return self.run.error is None

    @property
    def memory_mib(self) -> float | None:
        """The lab's memory column: peak GPU memory allocated on CUDA, else peak process RSS increase."""
        if self.run.cuda_peak_allocated_mib is not None:
            return self.run.cuda_peak_allocated_mib
        return self.run.rss_peak_mib

    def flat(self) -> dict[str, Any]:
        """One flat row with stable columns (results.csv)."""
        r = self.run
        s = self.accuracy.summary if self.accuracy else None
        ci1 = s.ci.get(1) if s else None
        ci5 = s.ci.get(5) if s else None
        lat = r.latency_b1 or {}
        spec = r.spec
        return {
            "model": self.name,
            "status": "ok" if self.ok else "error",
            "error": r.error or "",
            "random_weights": r.random_weights,
            "scored_images": self.accuracy.scored if self.accuracy else 0,
            "top1": _nan_none(s.top1) if s else None,
            "top1_ci_low": ci1[0] if ci1 else None,
            "top1_ci_high": ci1[1] if ci1 else None,
            "top5": _nan_none(s.top5) if s and 5 in s.accuracy else None,
            "top5_ci_low": ci5[0] if ci5 else None,
            "top5_ci_high": ci5[1] if ci5 else None,
            "mean_confidence": _nan_none(s.mean_confidence) if s else None,
            "ece": _nan_none(s.ece) if s else None,
            "eval_images": r.eval_images,
            "skipped_images": len(r.eval_skipped),
            "eval_total_s": r.eval_total_s,
            "eval_data_s": r.eval_data_s,
            "eval_model_s": r.eval_model_s,
            "eval_images_per_s": (r.eval_images / r.eval_total_s) if r.eval_total_s else None,
            "latency_b1_median_ms": lat.get("median_s", 0) * 1e3 if lat else None,
            "latency_b1_p90_ms": lat.get("p90_s", 0) * 1e3 if lat else None,
            "throughput_batch": r.throughput_batch,
            "throughput_images_per_s": r.throughput_ips,
            "load_s": r.load_s,
            "params": r.params,
            "weights_mib": r.weights_mib,
            "weights_file_mb": r.weights_file_mb,
            "gmacs_measured": r.gmacs_measured,
            "gmacs_published": spec.get("gmacs"),
            "published_acc1": spec.get("acc1"),
            "published_acc5": spec.get("acc5"),
            "memory_mib": self.memory_mib,
            "rss_after_load_mib": r.rss_after_load_mib,
            "rss_peak_mib": r.rss_peak_mib,
            "cuda_weights_mib": r.cuda_weights_mib,
            "cuda_peak_allocated_mib": r.cuda_peak_allocated_mib,
            "cuda_peak_reserved_mib": r.cuda_peak_reserved_mib,
            "device": r.device,
            "device_name": r.device_name,
            "threads": r.threads,
            "workers": r.workers,
        }


def _nan_none(value: float | None) -> float | None:
    return None if value is None or value != value else float(value)


@dataclass
class BenchResult:
    """Everything a benchmark run produced."""

    config: BenchConfig
    dataset: LabelledImages
    mappings: dict[str, LabelMapping]
    models: list[ModelResult]
    comparisons: list[metrics.PairwiseComparison]
    environment: dict[str, Any]
    started: str
    finished: str

    @property
    def failed(self) -> list[ModelResult]:
        return [m for m in self.models if not m.ok]

    @property
    def skipped(self) -> list[SkippedFile]:
        """Files left out: missing from the manifest, or undecodable (from the first model that ran)."""
        seen: dict[str, SkippedFile] = {s.path: s for s in self.dataset.skipped}
        labels = {str(p): self.dataset.classes[t] for p, t in zip(self.dataset.paths, self.dataset.targets)}
        for m in self.models:
            for s in m.run.eval_skipped:
                seen.setdefault(s["path"], SkippedFile(s["path"], s["reason"], s["detail"], labels.get(s["path"])))
        return list(seen.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "started": self.started,
            "finished": self.finished,
            "environment": self.environment,
            "config": self.config.to_dict(),
            "dataset": {
                "root": str(self.dataset.root),
                "images": len(self.dataset),
                "classes": self.dataset.class_counts(),
                "empty_classes": self.dataset.empty_classes,
                "skipped": [s.to_dict() for s in self.skipped],
            },
            "label_mapping": {k: v.to_dict() for k, v in self.mappings.items()},
            "models": [
                {**m.flat(), "run": {k: v for k, v in m.run.to_dict().items() if k != "categories"}, "accuracy": m.accuracy.to_dict() if m.accuracy else None}
                for m in self.models
            ],
            "comparisons": [c.to_dict() for c in self.comparisons],
        }


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded with every result."""
    import torchvision

    from cnnlab import __version__

    env: dict[str, Any] = {
        "cnnlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _run_isolated(request: RunRequest, workdir: Path, index: int) -> RunResult:
    req_file = workdir / f"request-{index}.json"
    res_file = workdir / f"result-{index}.json"
    res_file.unlink(missing_ok=True)
    req_file.write_text(json.dumps(request.to_dict()))
    proc = subprocess.run([sys.executable, "-m", "cnnlab.bench_run", str(req_file), str(res_file)], check=False)
    if res_file.is_file():
        return RunResult(**json.loads(res_file.read_text()))
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    hint = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
    return RunResult(model=request.model, error=f"the worker process died with {how}{hint}")


def _accepted_sets(model: ModelResult, classes: list[str], mappings: dict[str, LabelMapping]) -> list[set[int]]:
    if model.run.spec.get("source") == "checkpoint":
        categories = model.run.categories
        index = {name: i for i, name in enumerate(categories)}
        return [{index[c]} if c in index else set() for c in classes]
    return [set(mappings[c].indices) for c in classes]


def _score(model: ModelResult, dataset: LabelledImages, mappings: dict[str, LabelMapping]) -> ModelAccuracy | None:
    pred = model.predictions
    if pred is None or len(pred["rows"]) == 0:
        return None
    rows = pred["rows"]
    y_all = np.asarray(dataset.targets, dtype=np.int64)[rows]
    accepted = _accepted_sets(model, dataset.classes, mappings)
    keep = metrics.mapped_mask(y_all, accepted)
    unscored = [c for c, a in zip(dataset.classes, accepted) if not a]
    if not keep.any():
        return None
    topk, probs, y = pred["topk"][keep], pred["probs"][keep], y_all[keep]
    # top-5 only means something when the model has more than 5 classes to choose from
    num_classes = len(model.run.categories) or topk.shape[1]
    ks = (1, 5) if topk.shape[1] >= 5 and num_classes > 5 else (1,)
    summary = metrics.summarize(topk, probs, y, accepted, ks=ks)
    y_pred = metrics.predicted_user_class(topk[:, 0], accepted)
    return ModelAccuracy(
        scored=int(keep.sum()),
        summary=summary,
        per_class=metrics.per_class_report(y, y_pred, dataset.classes),
        confusion=metrics.confusion_matrix(y, y_pred, len(dataset.classes)),
        unscored_classes=unscored,
        hits1=metrics.topk_hits(topk, y, accepted, 1),
        rows=rows[keep],
    )


def _comparisons(models: list[ModelResult]) -> list[metrics.PairwiseComparison]:
    """McNemar for each pair of scored models, on the images both of them scored."""
    scored = [m for m in models if m.accuracy is not None and not m.run.random_weights]
    names = unique_names(scored)
    comparisons = []
    for i, a in enumerate(scored):
        for j in range(i + 1, len(scored)):
            b = scored[j]
            acc_a, acc_b = a.accuracy, b.accuracy
            assert acc_a is not None and acc_b is not None
            common = np.intersect1d(acc_a.rows, acc_b.rows)
            if len(common) == 0:
                continue  # e.g. a fine-tuned model and an ImageNet model that score different classes
            hits_a = acc_a.hits1[np.searchsorted(acc_a.rows, common)]
            hits_b = acc_b.hits1[np.searchsorted(acc_b.rows, common)]
            comparisons.extend(metrics.compare_models({names[i]: hits_a, names[j]: hits_b}))
    return comparisons


def unique_names(models: list[ModelResult]) -> list[str]:
    """Model names, with ``#2``, ``#3`` appended to repeats (the same model listed twice)."""
    seen: dict[str, int] = {}
    names = []
    for m in models:
        seen[m.name] = seen.get(m.name, 0) + 1
        names.append(m.name if seen[m.name] == 1 else f"{m.name} #{seen[m.name]}")
    return names


def _release_memory() -> None:
    """Between in-process models: drop the last model's memory so the next one starts clean."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _request_for(config: BenchConfig, model: str, dataset: LabelledImages, predictions_file: Path) -> RunRequest:
    """A worker's request: ``config``'s measuring options, the model and the files."""
    return RunRequest(model=model, paths=[str(p) for p in dataset.paths],
                      predictions_file=str(predictions_file), **config.measure_options())


def bench_models(config: BenchConfig, *, on_model_start: Any = None) -> BenchResult:
    """Run the benchmark described by ``config``. Never raises for a single model's failure."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    dataset = scan_dataset(config.data, split=config.split)
    if len(dataset) == 0:
        raise DatasetError(f"no images found in {config.data}" + (f" (split {config.split})" if config.split else ""))
    mappings = map_classes(dataset.classes, config.mapping_file)
    results: list[ModelResult] = []
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        workdir = Path(tmp)
        for i, name in enumerate(config.models):
            if on_model_start is not None:
                on_model_start(i, name)
            request = _request_for(config, name, dataset, workdir / f"pred-{i}.npz")
            if config.isolate:
                run = _run_isolated(request, workdir, i)
            else:
                run = run_model(request)
                _release_memory()
            model = ModelResult(run)
            pred_file = Path(request.predictions_file)
            if run.error is None and pred_file.is_file():
                with np.load(pred_file) as npz:
                    model.predictions = {k: npz[k] for k in npz.files}
                if not run.random_weights:  # random weights: speed and memory only, never accuracy
                    model.accuracy = _score(model, dataset, mappings)
            results.append(model)
    return BenchResult(
        config=config,
        dataset=dataset,
        mappings=mappings,
        models=results,
        comparisons=_comparisons(results),
        environment=environment(),
        started=started,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
