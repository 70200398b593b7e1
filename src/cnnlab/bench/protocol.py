"""The messages between ``bench`` and a model's worker process: versioned, plain JSON, tolerant.

The parent writes a :class:`RunRequest` as JSON, starts ``python -m cnnlab.bench.worker REQUEST
RESULT``, relays the progress events the worker prints on stdout (:mod:`cnnlab.progress`), and
reads back a :class:`RunResult`. Both carry :data:`PROTOCOL_VERSION`, a single integer: a request
or result of any other version is refused (:class:`ProtocolError`), and within one version unknown
fields are ignored, so that adding an optional field does not need a new version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.bench.config import MeasureOptions
from cnnlab.errors import CnnlabError

PROTOCOL_VERSION = 3

#: Predictions kept per image (top-5 accuracy needs five).
TOPK = 5
#: One prediction record: the image's position, its top-5 outputs and probabilities (padded with -1
#: and 0 for models with fewer classes), the user class the top-1 output belongs to (-1: none, or
#: several) and the probability mass the model puts on that class (on no user class, for -1).
PREDICTION_DTYPE = np.dtype([("row", "<i8"), ("topk", "<i4", (TOPK,)), ("probs", "<f4", (TOPK,)),
                             ("pred_class", "<i4"), ("pred_mass", "<f4")])


class ProtocolError(CnnlabError):
    """A request or result file that this version cannot read."""


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _check_version(data: dict[str, Any], what: str) -> None:
    version = data.get("protocol")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"bench {what} has protocol version {version!r}; this cnnlab speaks {PROTOCOL_VERSION}")


@dataclass(kw_only=True)
class RunRequest:
    """Everything a worker needs to measure one model."""

    model: str
    paths: list[str]
    #: Where the worker appends its predictions, batch by batch (records of :data:`PREDICTION_DTYPE`).
    predictions_file: str
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    #: The user's class names, and for each the ImageNet outputs that count as it (the label mapping).
    class_names: list[str] = field(default_factory=list)
    imagenet_accepted: list[list[int]] = field(default_factory=list)
    #: Report progress events on stdout.
    progress: bool = False
    #: What runs the model (:class:`cnnlab.options.RuntimeChoice`), and for ONNX Runtime and OpenVINO the
    #: ONNX file the parent prepared (exported, quantised) for it.
    backend: str = "torch"
    runtime_file: str | None = None
    protocol: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "measure": self.measure.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRequest:
        _check_version(data, "request")
        known = _known(cls, data)
        known["measure"] = MeasureOptions.from_dict(dict(data.get("measure") or {}))
        return cls(**known)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> RunRequest:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


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
    precision: str = ""
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
    #: Model-only images/s at each measured batch size (keys are batch sizes as strings: JSON).
    throughput_curve: dict[str, float] = field(default_factory=dict)
    #: Predictions per image in the predictions file (min(5, classes)).
    topk: int = 0
    params: int | None = None
    weights_mib: float | None = None
    weights_file_mb: float | None = None
    gmacs_measured: float | None = None
    rss_after_load_mib: float | None = None
    rss_peak_mib: float | None = None
    #: The worker process's own peak resident memory (VmHWM), absolute, in MiB.
    process_peak_rss_mib: float | None = None
    cuda_weights_mib: float | None = None
    cuda_peak_allocated_mib: float | None = None
    cuda_peak_reserved_mib: float | None = None
    #: ``torch``, ``onnxruntime`` or ``openvino``; ``none`` or ``int8``; what executed the graph
    #: (``CPUExecutionProvider``, ``openvino CPU 2026.4.1``, ``torch 2.x cpu``); the ONNX file run.
    backend: str = "torch"
    quantization: str = "none"
    provider: str = ""
    runtime_file: str | None = None
    #: Images the int8 ranges were calibrated on (0: not quantised).
    calibration_images: int = 0
    #: Seconds the parent spent exporting and quantising before the worker started (0 when cached).
    prepare_s: float | None = None
    #: The torch rows' layout: channels-last memory format, batch normalisations folded into their convolutions
    #: (``None`` for the other runtimes, which choose their own layout and fuse batch norms in their graph optimiser).
    channels_last: bool | None = None
    folded_bn: int | None = None
    #: How JPEGs were decoded for the evaluation: ``cpu`` (Pillow, in the loader) or ``nvjpeg`` (on the GPU).
    decode: str = "cpu"
    #: Processes the evaluation was split over (torchrun), and each one's own figures
    #: (:mod:`cnnlab.bench.ranks`; empty for a single process).
    world_size: int = 1
    ranks: list[dict[str, Any]] = field(default_factory=list)
    #: How the batch size and loader workers were chosen, with the evidence (``None``: both given;
    #: :class:`cnnlab.runtime.autotune.AutoChoice`).
    auto: dict[str, Any] | None = None
    #: Seconds the speed phases took, and their bound (``--speed-budget``).
    speed_s: float | None = None
    protocol: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        _check_version(data, "result")
        return cls(**_known(cls, data))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> RunResult:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
