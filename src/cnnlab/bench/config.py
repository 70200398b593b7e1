"""What a benchmark run measures and how: plain-data configs (light to import; the CLI reads its defaults here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from cnnlab.errors import UsageError
from cnnlab.models.registry import LAB_MODELS
from cnnlab.options import (
    DEFAULT_CALIBRATION_IMAGES,
    Precision,
    RuntimeChoice,
    WeightsPolicy,
    parse_choice,
    parse_device,
)

#: Default batch size per device type. On this project's 2-core reference CPU, batch 8 measured 2-5x
#: the images/s of batch 32 (caches), with a quarter of the activation memory; GPUs want large batches.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 32}


@dataclass(kw_only=True)
class MeasureOptions:
    """How one model is measured: what ``bench`` passes on to each model's worker."""

    device: str = "auto"
    #: Images per batch (``None``: :data:`DEFAULT_BATCH_SIZE` for the device the model runs on).
    batch_size: int | None = None
    precision: Precision = Precision.FP32
    channels_last: bool = False
    compile: bool = False
    #: Decoding processes (``None``: :func:`cnnlab.runtime.inference.default_workers`).
    workers: int | None = None
    #: torch CPU threads (``None``: the cores not used for decoding).
    threads: int | None = None
    weights: WeightsPolicy = WeightsPolicy.PRETRAINED
    weights_dir: str | None = None
    #: Let JPEGs decode at reduced scale (``Image.draft``) when only a small image is needed.
    fast_decode: bool = True
    #: Where JPEGs are decoded: ``auto`` (nvJPEG on the GPU when the model runs on CUDA, else Pillow on
    #: the CPU), ``cpu`` or ``device`` (:mod:`cnnlab.runtime.gpu_decode`).
    decode: str = "auto"
    #: Also measure model-only throughput at these batch sizes (a curve: on a CPU a large batch can be slower).
    batch_sizes: list[int] | None = None
    warmup: int = 3
    latency_repeats: int = 20
    throughput_repeats: int = 10
    #: A timing stops early (after at least 3 repeats) once it has taken this long.
    max_seconds_per_timing: float = 15.0

    def __post_init__(self) -> None:
        self.device = parse_device(self.device)
        self.precision = parse_choice(Precision, self.precision, "precision")
        self.weights = parse_choice(WeightsPolicy, self.weights, "weights policy")
        if self.decode not in ("auto", "cpu", "device"):
            raise UsageError(f"unknown decode {self.decode!r}; use auto, cpu or device")
        if self.weights_dir is not None:
            self.weights_dir = str(self.weights_dir)
        sizes = [*([self.batch_size] if self.batch_size is not None else []), *(self.batch_sizes or [])]
        if any(not isinstance(b, int) or not 1 <= b <= 65536 for b in sizes):
            raise UsageError(f"batch sizes must be whole numbers from 1 to 65536, got {sizes}")
        if self.batch_sizes is not None:
            self.batch_sizes = sorted(set(self.batch_sizes))

    def batch_size_for(self, device_type: str) -> int:
        """``batch_size``, or the default for ``device_type`` (``cpu``, ``cuda``)."""
        return self.batch_size or DEFAULT_BATCH_SIZE.get(device_type, DEFAULT_BATCH_SIZE["cpu"])

    def throughput_batch_sizes(self, device_type: str) -> list[int]:
        """The batch sizes at which throughput is measured (always including the evaluation's batch size)."""
        return sorted({self.batch_size_for(device_type), *(self.batch_sizes or [])})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (enums as their string values)."""
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasureOptions:
        """The inverse of :meth:`to_dict`; keys this version does not know are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(kw_only=True)
class BenchConfig:
    """A benchmark run: which models, on which labelled images, measured how."""

    #: A class-folder tree, a CSV/JSONL manifest, or a folder with a ``split.csv``.
    data: Path
    models: list[str] = field(default_factory=lambda: list(LAB_MODELS))
    #: Use only this split of ``DATA/split.csv``.
    split: str | None = None
    #: YAML/JSON file: class -> ImageNet names, wnids or indices.
    mapping_file: Path | None = None
    #: Ground truth of a flat ImageNet validation folder (LOC_val_solution.csv, the devkit's file or folder).
    labels_file: Path | None = None
    #: ImageNet-ReaL labels (``real.json``): an extra accuracy on the relabelled validation set.
    real_labels: Path | None = None
    #: Most confident mistakes kept per model for the report's gallery.
    gallery_size: int = 12
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    #: Run each model in its own process (clean memory figures; a crash is that model's row).
    isolate: bool = True
    #: A model still running after this many seconds is stopped and reported as an error (``None``: no limit).
    model_timeout_s: float | None = None
    #: What runs each model: one row per model and backend (``torch``, ``onnxruntime``, ``openvino``,
    #: ``onnxruntime-int8``, ``openvino-int8``). Precision, channels_last and compile apply to torch rows.
    backends: list[RuntimeChoice] = field(default_factory=lambda: [RuntimeChoice.TORCH])
    #: Images the int8 backends calibrate on: a seeded sample of ``data`` (the images then evaluated).
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    #: Several devices (``["cpu", "cpu"]``, ``["cuda:0", "cuda:1"]``): models run at the same time, one
    #: worker process per device, each model whole on one device (empty: ``measure.device`` only).
    devices: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.devices = [parse_device(d) for d in self.devices]
        if len(self.devices) > 1 and not self.isolate:
            raise UsageError("several devices run models at the same time, each in its own process: "
                             "leave out --in-process")
        for name in ("mapping_file", "labels_file", "real_labels"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if not self.models:
            raise UsageError("no models to run: name at least one (e.g. --models resnet50)")
        if self.model_timeout_s is not None and not self.model_timeout_s > 0:
            raise UsageError(f"the time limit per model must be positive, got {self.model_timeout_s}")
        if self.model_timeout_s is not None and not self.isolate:
            raise UsageError("--timeout-per-model stops a model's own process: it cannot be combined with "
                             "--in-process (isolate=False)")
        self.backends = list(dict.fromkeys(parse_choice(RuntimeChoice, b, "backend") for b in self.backends))
        if not self.backends:
            raise UsageError("no backend to run: name at least one (e.g. --backend torch)")
        if not isinstance(self.calibration_images, int) or self.calibration_images < 1:
            raise UsageError(f"calibration needs at least one image, got {self.calibration_images}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": str(self.data),
            "models": list(self.models),
            "split": self.split,
            "mapping_file": str(self.mapping_file) if self.mapping_file else None,
            "labels_file": str(self.labels_file) if self.labels_file else None,
            "real_labels": str(self.real_labels) if self.real_labels else None,
            "gallery_size": self.gallery_size,
            "measure": self.measure.to_dict(),
            "isolate": self.isolate,
            "model_timeout_s": self.model_timeout_s,
            "backends": [b.value for b in self.backends],
            "calibration_images": self.calibration_images,
            "devices": list(self.devices),
        }
