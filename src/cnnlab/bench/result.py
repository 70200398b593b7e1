"""What a benchmark run produced: one :class:`ModelResult` per model, gathered in a :class:`BenchResult`."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab import metrics
from cnnlab.bench.config import BenchConfig
from cnnlab.bench.protocol import RunResult
from cnnlab.bench.ranks import rank_totals
from cnnlab.imagedata.datasets import LabelledImages, SkippedFile
from cnnlab.imagedata.labels import LabelMapping
from cnnlab.jsonable import finite_or_none

#: Version of the layout of results.json and results.csv. Columns added at the end (backend,
#: quantization, provider, runtime_file, calibration_images, prepare_s, decode, the rank totals,
#: leaked_images, channels_last, folded_bn) keep the version:
#: readers by name or by position are not affected.
SCHEMA_VERSION = 2
#: Fields of a model's run left out of its ``run`` dict in results.json: the categories (its class
#: names: long, and in the model's metadata), and the skipped files (listed once, in ``dataset.skipped``,
#: and counted per model in ``skipped_images``).
_NOT_IN_RUN = frozenset({"categories", "eval_skipped"})


@dataclass
class RealAccuracy:
    """Accuracy under the ImageNet-ReaL labels: a prediction is right when it is in the image's set."""

    n: int
    #: Images whose ReaL set is empty (no correct class): left out.
    empty_sets: int
    #: Images the ReaL file does not cover (not named ILSVRC2012_val_NNNNNNNN): left out.
    not_covered: int
    hits: dict[int, int]
    ci: dict[int, tuple[float, float]]

    def accuracy(self, k: int) -> float | None:
        return self.hits[k] / self.n if self.n and k in self.hits else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "empty_sets": self.empty_sets, "not_covered": self.not_covered}
        for k in self.hits:
            out[f"top{k}"] = self.accuracy(k)
            out[f"top{k}_hits"] = self.hits[k]
            out[f"top{k}_ci"] = list(self.ci[k])
        return out


@dataclass
class ModelAccuracy:
    """Accuracy of one model on the scored images (those whose class maps onto its outputs).

    Sizes: ``per_class`` is linear in the classes, ``confusion`` holds only non-zero cells, and
    ``hits1``/``rows`` take a few bytes per scored image (for paired tests between models).
    """

    scored: int
    summary: metrics.AccuracySummary
    per_class: list[metrics.ClassMetrics]
    confusion: metrics.SparseConfusion
    unscored_classes: list[str]
    hits1: np.ndarray  # per scored image, aligned with ``rows``
    rows: np.ndarray
    #: The most confident mistakes, surest first: path, true, predicted, confidence, top (index, name, probability).
    mistakes: list[dict[str, Any]] = field(default_factory=list)
    real: RealAccuracy | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scored": self.scored,
            **self.summary.to_dict(),
            "calibration": "confidence = probability mass on the predicted user class; "
                           "right = the predicted user class is the image's class",
            "per_class": [c.to_dict() for c in self.per_class],
            "unscored_classes": self.unscored_classes,
            "most_confident_mistakes": self.mistakes,
            "real": self.real.to_dict() if self.real else None,
        }


@dataclass
class ModelResult:
    """One row of the benchmark: the measured figures of one model, or its error."""

    run: RunResult
    accuracy: ModelAccuracy | None = None
    #: The worker's prediction records (:data:`cnnlab.bench.protocol.PREDICTION_DTYPE`), one per evaluated image.
    predictions: np.ndarray | None = None
    #: For a checkpoint: which evaluated images it was trained or validated on
    #: (:meth:`cnnlab.models.leakage.OverlapReport.to_dict`); ``None`` for other models.
    leakage: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The model's name, with ``@backend`` for rows not run by PyTorch (``resnet50.IMAGENET1K_V2@openvino-int8``)."""
        base = str(self.run.spec.get("name") or self.run.model)
        return base if self.runtime == "torch" else f"{base}@{self.runtime}"

    @property
    def runtime(self) -> str:
        """``torch``, ``onnxruntime``, ``openvino-int8``...: the backend, with ``-int8`` when quantised."""
        return self.run.backend + ("" if self.run.quantization == "none" else f"-{self.run.quantization}")

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
            "top1": finite_or_none(s.top1) if s else None,
            "top1_ci_low": ci1[0] if ci1 else None,
            "top1_ci_high": ci1[1] if ci1 else None,
            "top5": finite_or_none(s.top5) if s and 5 in s.accuracy else None,
            "top5_ci_low": ci5[0] if ci5 else None,
            "top5_ci_high": ci5[1] if ci5 else None,
            "real_top1": self.accuracy.real.accuracy(1) if self.accuracy and self.accuracy.real else None,
            "real_top5": self.accuracy.real.accuracy(5) if self.accuracy and self.accuracy.real else None,
            "mean_confidence": finite_or_none(s.mean_confidence) if s else None,
            "ece": finite_or_none(s.ece) if s else None,
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
            "process_peak_rss_mib": r.process_peak_rss_mib,
            "rss_after_load_mib": r.rss_after_load_mib,
            "rss_peak_mib": r.rss_peak_mib,
            "cuda_weights_mib": r.cuda_weights_mib,
            "cuda_peak_allocated_mib": r.cuda_peak_allocated_mib,
            "cuda_peak_reserved_mib": r.cuda_peak_reserved_mib,
            "device": r.device,
            "device_name": r.device_name,
            "precision": r.precision,
            "threads": r.threads,
            "workers": r.workers,
            "backend": r.backend,
            "quantization": r.quantization,
            "provider": r.provider,
            "runtime_file": r.runtime_file,
            "calibration_images": r.calibration_images,
            "prepare_s": r.prepare_s,
            "decode": r.decode,
            **rank_totals(r),
            "leaked_images": self.leakage["overlapping"] if self.leakage and self.leakage["recorded"] else None,
            "channels_last": r.channels_last,
            "folded_bn": r.folded_bn,
        }


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
    #: The files written, by kind (see :func:`cnnlab.bench.outputs.write_bench_outputs`); empty when the run
    #: wrote nothing (no output folder, or a torchrun rank other than 0).
    files: dict[str, Path] = field(default_factory=dict)

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
                {**m.flat(), "run": {k: v for k, v in m.run.to_dict().items() if k not in _NOT_IN_RUN},
                 "accuracy": m.accuracy.to_dict() if m.accuracy else None, "leakage": m.leakage}
                for m in self.models
            ],
            "comparisons": [c.to_dict() for c in self.comparisons],
        }


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded with every result (runtimes and timm where installed)."""
    import importlib.metadata

    import torch
    import torchvision

    from cnnlab import __version__

    optional = {}
    for package in ("onnxruntime", "openvino", "timm"):
        try:
            optional[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    env: dict[str, Any] = {
        "cnnlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        **optional,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
