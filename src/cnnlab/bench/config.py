"""What a benchmark run measures and how: plain-data configs (light to import; the CLI reads its defaults here)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cnnlab.errors import UsageError
from cnnlab.models.registry import LAB_MODELS
from cnnlab.options import (
    DEFAULT_CALIBRATION_IMAGES,
    ModelSource,
    RuntimeChoice,
    RuntimeOptions,
    WeightsPolicy,
    parse_choice,
    parse_device,
)

#: Batch size per device type where one is needed without measuring (``None`` means "auto": each worker
#: measures, :mod:`cnnlab.runtime.autotune`); GPUs want large batches.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 32}
#: Seconds the speed phases (throughput and latency) of one model may take by default: enough for the
#: median of several rounds, bounded so a small image set does not spend most of a run measuring.
DEFAULT_SPEED_BUDGET_S = 20.0


#: The fields of :class:`~cnnlab.options.RuntimeOptions` that a measurement takes (the backend is per row:
#: :attr:`BenchConfig.backends`). :meth:`MeasureOptions.to_dict` flattens them, so results.json keeps its keys.
RUNTIME_FIELDS = ("device", "batch_size", "precision", "channels_last", "compile", "workers", "threads",
                  "fast_decode", "decode", "fold_bn")


@dataclass(kw_only=True, init=False)
class MeasureOptions:
    """How one model is measured: what ``bench`` passes on to each model's worker.

    How the model runs (device, precision, layout, threads, loader workers, batch size, decoding) is one
    :class:`~cnnlab.options.RuntimeOptions`, parsed once; the rest are the measurement's own settings.
    ``MeasureOptions(device="cpu", batch_size=8)`` is accepted as a short form of
    ``MeasureOptions(runtime=RuntimeOptions(device="cpu", batch_size=8))``.
    """

    #: Device, precision, channels_last, compile, threads, workers and batch size (``None``: auto, measured per
    #: model and device: :mod:`cnnlab.runtime.autotune`) and decoding (:class:`~cnnlab.options.RuntimeOptions`).
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    weights: WeightsPolicy = WeightsPolicy.PRETRAINED
    weights_dir: str | None = None
    #: Also measure model-only throughput at these batch sizes (a curve: on a CPU a large batch can be slower).
    batch_sizes: list[int] | None = None
    warmup: int = 3
    latency_repeats: int = 20
    throughput_repeats: int = 10
    #: A timing stops early (after at least 3 repeats) once it has taken this long.
    max_seconds_per_timing: float = 15.0
    #: Seconds the speed phases (throughput at each batch size, latency) of one model may take together.
    speed_budget_s: float = DEFAULT_SPEED_BUDGET_S

    def __init__(self, *, runtime: RuntimeOptions | None = None, weights: WeightsPolicy | str = WeightsPolicy.PRETRAINED,
                 weights_dir: str | Path | None = None, batch_sizes: list[int] | None = None, warmup: int = 3,
                 latency_repeats: int = 20, throughput_repeats: int = 10, max_seconds_per_timing: float = 15.0,
                 speed_budget_s: float = DEFAULT_SPEED_BUDGET_S, **runtime_fields: Any) -> None:
        unknown = sorted(set(runtime_fields) - set(RUNTIME_FIELDS))
        if unknown:
            raise TypeError(f"MeasureOptions got unexpected keyword arguments: {', '.join(unknown)}")
        base = runtime if runtime is not None else RuntimeOptions()
        self.runtime = base.replace(**runtime_fields) if runtime_fields else base
        self.weights = parse_choice(WeightsPolicy, weights, "weights policy")
        self.weights_dir = None if weights_dir is None else str(weights_dir)
        if batch_sizes is not None:
            if any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 65536 for b in batch_sizes):
                raise UsageError(f"batch sizes must be whole numbers from 1 to 65536, got {batch_sizes}")
            batch_sizes = sorted(set(batch_sizes))
        self.batch_sizes = batch_sizes
        self.warmup = warmup
        self.latency_repeats = latency_repeats
        self.throughput_repeats = throughput_repeats
        self.max_seconds_per_timing = max_seconds_per_timing
        if isinstance(speed_budget_s, bool) or not isinstance(speed_budget_s, (int, float)) or not speed_budget_s > 0:
            raise UsageError(f"the speed budget must be a positive number of seconds, got {speed_budget_s!r}")
        self.speed_budget_s = float(speed_budget_s)

    def source(self, name: str) -> ModelSource:
        """Model ``name`` with this run's weights folder and policy."""
        return ModelSource(name=name, weights_dir=Path(self.weights_dir) if self.weights_dir else None, policy=self.weights)

    def batch_size_for(self, device_type: str) -> int:
        """``runtime.batch_size``, or the fixed default for ``device_type`` (``cpu``, ``cuda``); a worker
        measures its own when the batch size is ``None`` (auto) and records it in the options it runs with."""
        return self.runtime.batch_size or DEFAULT_BATCH_SIZE.get(device_type, DEFAULT_BATCH_SIZE["cpu"])

    def throughput_batch_sizes(self, device_type: str) -> list[int]:
        """The batch sizes at which throughput is measured (always including the evaluation's batch size)."""
        return sorted({self.batch_size_for(device_type), *(self.batch_sizes or [])})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (enums as their string values), the runtime's fields flattened in (results.json's keys)."""
        runtime = self.runtime.to_dict()
        data: dict[str, Any] = {name: runtime[name] for name in RUNTIME_FIELDS}
        data.update({"weights": self.weights.value, "weights_dir": self.weights_dir,
                     "batch_sizes": None if self.batch_sizes is None else list(self.batch_sizes),
                     "warmup": self.warmup, "latency_repeats": self.latency_repeats,
                     "throughput_repeats": self.throughput_repeats,
                     "max_seconds_per_timing": self.max_seconds_per_timing,
                     "speed_budget_s": self.speed_budget_s})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasureOptions:
        """The inverse of :meth:`to_dict`; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)} | set(RUNTIME_FIELDS)
        return cls(**{k: v for k, v in data.items() if k in known and k != "runtime"})


@dataclass(kw_only=True)
class BenchConfig:
    """A benchmark run: which models, on which labelled images, measured how."""

    #: A class-folder tree, a CSV/JSONL manifest, a folder with a ``split.csv``, or a dataset stored as records: a
    #: Hugging Face dataset (``hf:NAME[:CONFIG][/SPLIT]``, a ``save_to_disk`` folder), Parquet files or WebDataset
    #: shards (:mod:`cnnlab.imagedata.sources`).
    data: Path
    models: list[str] = field(default_factory=lambda: list(LAB_MODELS))
    #: Use only this split of ``DATA/split.csv`` (or of the dataset's own splits: ``val`` is ``validation``).
    split: str | None = None
    #: The image column of a Hugging Face dataset or Parquet file (``None``: its ``Image`` feature).
    image_column: str | None = None
    #: The label column of a Hugging Face dataset or Parquet file (``None``: its ``ClassLabel`` feature).
    label_column: str | None = None
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
    #: worker process per device, each model whole on one device (empty: ``measure.runtime.device`` only).
    devices: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.devices = [parse_device(d) for d in self.devices]
        if len(self.devices) > 1 and not self.isolate:
            raise UsageError("several devices run models at the same time, each in its own process: "
                             "isolate must be True")
        for name in ("mapping_file", "labels_file", "real_labels"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if not self.models:
            raise UsageError("no models to run: name at least one (e.g. models=[\"resnet50\"])")
        if self.model_timeout_s is not None and not self.model_timeout_s > 0:
            raise UsageError(f"the time limit per model must be positive, got {self.model_timeout_s}")
        if self.model_timeout_s is not None and not self.isolate:
            raise UsageError("a time limit per model stops the model's own process: it cannot be combined with "
                             "running every model in this process (isolate=False)")
        self.backends = list(dict.fromkeys(parse_choice(RuntimeChoice, b, "backend") for b in self.backends))
        if not self.backends:
            raise UsageError("no backend to run: name at least one (e.g. torch)")
        if not isinstance(self.calibration_images, int) or self.calibration_images < 1:
            raise UsageError(f"calibration needs at least one image, got {self.calibration_images}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": str(self.data),
            "models": list(self.models),
            "split": self.split,
            **({"image_column": self.image_column} if self.image_column is not None else {}),
            **({"label_column": self.label_column} if self.label_column is not None else {}),
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
