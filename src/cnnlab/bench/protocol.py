"""The messages between ``bench`` and a model's worker process: versioned, plain JSON, tolerant.

The parent writes a :class:`RunRequest` as JSON, starts ``python -m cnnlab.bench.worker REQUEST
RESULT``, relays the progress events the worker prints on stdout (:mod:`cnnlab.progress`), and
reads back a :class:`RunResult`. Both carry :data:`PROTOCOL_VERSION`; unknown fields are ignored
(a newer sender may add some), and a request of another major version is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cnnlab.bench.config import MeasureOptions
from cnnlab.errors import CnnlabError

PROTOCOL_VERSION = 2


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
    #: Where the worker writes its predictions (``.npz``: rows, topk, probs).
    predictions_file: str
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    #: Report progress events on stdout.
    progress: bool = False
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
    params: int | None = None
    weights_mib: float | None = None
    weights_file_mb: float | None = None
    gmacs_measured: float | None = None
    rss_after_load_mib: float | None = None
    rss_peak_mib: float | None = None
    cuda_weights_mib: float | None = None
    cuda_peak_allocated_mib: float | None = None
    cuda_peak_reserved_mib: float | None = None
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
