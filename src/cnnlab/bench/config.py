"""What a benchmark run measures and how: plain-data configs (light to import; the CLI reads its defaults here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from cnnlab.options import Precision, WeightsPolicy, parse_choice, parse_device
from cnnlab.zoo import LAB_MODELS


@dataclass(kw_only=True)
class MeasureOptions:
    """How one model is measured: what ``bench`` passes on to each model's worker."""

    device: str = "auto"
    batch_size: int = 32
    precision: Precision = Precision.FP32
    channels_last: bool = False
    compile: bool = False
    #: Decoding processes (``None``: :func:`cnnlab.inference.default_workers`).
    workers: int | None = None
    #: torch CPU threads (``None``: the cores not used for decoding).
    threads: int | None = None
    weights: WeightsPolicy = WeightsPolicy.PRETRAINED
    weights_dir: str | None = None
    #: Let JPEGs decode at reduced scale (``Image.draft``) when only a small image is needed.
    fast_decode: bool = True
    warmup: int = 3
    latency_repeats: int = 20
    throughput_repeats: int = 10
    #: A timing stops early (after at least 3 repeats) once it has taken this long.
    max_seconds_per_timing: float = 15.0

    def __post_init__(self) -> None:
        self.device = parse_device(self.device)
        self.precision = parse_choice(Precision, self.precision, "precision")
        self.weights = parse_choice(WeightsPolicy, self.weights, "weights policy")
        if self.weights_dir is not None:
            self.weights_dir = str(self.weights_dir)

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
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    #: Run each model in its own process (clean memory figures; a crash is that model's row).
    isolate: bool = True
    #: A model still running after this many seconds is stopped and reported as an error (``None``: no limit).
    model_timeout_s: float | None = None

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        if self.mapping_file is not None:
            self.mapping_file = Path(self.mapping_file)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": str(self.data),
            "models": list(self.models),
            "split": self.split,
            "mapping_file": str(self.mapping_file) if self.mapping_file else None,
            "measure": self.measure.to_dict(),
            "isolate": self.isolate,
            "model_timeout_s": self.model_timeout_s,
        }
