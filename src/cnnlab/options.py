"""The vocabularies that cnnlab's options take, one type each, shared by the library and the CLI
(plus the few shared defaults that belong to no config class).

Each is a :class:`~enum.StrEnum`: the CLI offers exactly its values (a typo is a usage error,
exit 2, before any work starts), the library accepts the enum or its string value, and configs
store the plain string. Nothing here imports torch, so the CLI can build its help from it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TypeVar

from cnnlab.errors import UsageError

E = TypeVar("E", bound=StrEnum)

#: Largest accepted absolute difference between exported and PyTorch fp32 logits (typical: 1e-6 to 1e-5).
DEFAULT_EXPORT_TOLERANCE = 1e-3


class Precision(StrEnum):
    """Numeric precision of a model's arithmetic.

    ``auto`` resolves per device (see :func:`cnnlab.models.load.resolve_precision`); ``tf32`` keeps fp32
    storage with TF32 matrix units on CUDA; ``bf16``/``fp16`` run under autocast.
    """

    AUTO = "auto"
    FP32 = "fp32"
    TF32 = "tf32"
    BF16 = "bf16"
    FP16 = "fp16"


class DeviceKind(StrEnum):
    """Where models run. A device string is a kind, optionally with an index: ``cuda:1``."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class WeightsPolicy(StrEnum):
    """Which weights ``bench`` uses: the pretrained ones, random ones, or random where missing."""

    PRETRAINED = "pretrained"
    RANDOM = "random"
    RANDOM_IF_MISSING = "random-if-missing"


class Schedule(StrEnum):
    """Learning-rate schedule of each training phase."""

    ONECYCLE = "onecycle"
    COSINE = "cosine"


class BNPolicy(StrEnum):
    """What BatchNorm layers do while fine-tuning (see :mod:`cnnlab.train`)."""

    AUTO = "auto"
    FROZEN = "frozen"
    TRAIN = "train"


class ExportFormat(StrEnum):
    """File formats of ``cnnlab export``."""

    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


class EngineName(StrEnum):
    """Where ``cnnlab collect`` finds images."""

    BING = "bing"
    BAIDU = "baidu"
    FLICKR = "flickr"
    GOOGLE = "google"
    DDG = "ddg"
    URLS = "urls"
    FOLDER = "folder"


class ReviewIssue(StrEnum):
    """Kinds of problems ``cnnlab review`` finds in a labelled image set (see :mod:`cnnlab.review`)."""

    MISLABEL = "mislabel"
    OFFTOPIC = "offtopic"
    DUPLICATE = "duplicate"
    UNREADABLE = "unreadable"
    TOO_SMALL = "too-small"


class Augment(StrEnum):
    """Augmentation preset of training images (see :mod:`cnnlab.train.augment`).

    ``none``: the evaluation preprocessing; ``light``: random resized crop and flip;
    ``trivialaugment``/``randaugment``: ``light`` plus torchvision's TrivialAugmentWide/RandAugment.
    """

    NONE = "none"
    LIGHT = "light"
    TRIVIALAUGMENT = "trivialaugment"
    RANDAUGMENT = "randaugment"


def parse_choice(kind: type[E], value: str | E, what: str | None = None) -> E:
    """``value`` as a member of ``kind``; a :class:`CnnlabError` (exit 2) naming the choices otherwise."""
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise UsageError(f"unknown {what or kind.__name__.lower()} {value!r}; choose from {choices}") from None


_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def parse_device(value: str) -> str:
    """Check a device string (``auto``, ``cpu``, ``cuda``, ``cuda:N``) without importing torch."""
    text = str(value).strip().lower()
    match = _DEVICE.match(text)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UsageError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
    return text


class Backend(StrEnum):
    """The runtime that executes a model: PyTorch eager, or its ONNX export in ONNX Runtime or OpenVINO."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Quantization(StrEnum):
    """Weights and activations as exported (``none``), or int8 after static calibration on the user's images."""

    NONE = "none"
    INT8 = "int8"


class RuntimeChoice(StrEnum):
    """A ``--backend`` value: a :class:`Backend`, optionally with a :class:`Quantization` suffix."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    ONNXRUNTIME_INT8 = "onnxruntime-int8"
    OPENVINO_INT8 = "openvino-int8"

    @property
    def backend(self) -> Backend:
        return Backend(self.value.split("-", 1)[0])

    @property
    def quantization(self) -> Quantization:
        return Quantization.INT8 if self.value.endswith("-int8") else Quantization.NONE

    @classmethod
    def of(cls, backend: str | Backend, quantization: str | Quantization = Quantization.NONE) -> RuntimeChoice:
        """The choice for ``backend`` and ``quantization`` (torch has no int8 variant: a :class:`UsageError`)."""
        b = parse_choice(Backend, backend, "backend")
        q = parse_choice(Quantization, quantization, "quantization")
        return parse_choice(cls, b.value if q is Quantization.NONE else f"{b.value}-{q.value}", "backend")


#: Images an int8 backend calibrates on by default (a seeded sample of the user's images).
DEFAULT_CALIBRATION_IMAGES = 64


class DecodeWhere(StrEnum):
    """Where JPEGs are decoded: ``auto`` (nvJPEG on the GPU when the model runs on CUDA), ``cpu`` or ``device``."""

    AUTO = "auto"
    CPU = "cpu"
    DEVICE = "device"


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None or str(value) == "" else Path(value)


def _optional_count(value: int | None, what: str, low: int = 0, high: int = 65536) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Which model, parsed once: a registry name, a checkpoint or ``.onnx`` file, and where its weights come from.

    Every job's config embeds one (bench: one per model name); internals read the typed fields, never strings.
    """

    #: ``resnet50``, ``resnet50.IMAGENET1K_V1``, ``timm/convnext_tiny``, or a path to a checkpoint or ``.onnx`` file.
    name: str
    #: An explicit weights file (highest priority).
    weights: Path | None = None
    #: A folder searched before the shared caches.
    weights_dir: Path | None = None
    #: Pretrained weights, random ones, or random where missing.
    policy: WeightsPolicy = WeightsPolicy.PRETRAINED
    #: Whether missing weights may be downloaded.
    download: bool = True

    def __post_init__(self) -> None:
        name = str(self.name).strip()
        if not name:
            raise UsageError("a model name or file is required")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "weights", _optional_path(self.weights))
        object.__setattr__(self, "weights_dir", _optional_path(self.weights_dir))
        object.__setattr__(self, "policy", parse_choice(WeightsPolicy, self.policy, "weights policy"))

    @property
    def random_weights(self) -> bool:
        """Whether the model runs without its weights (speed and memory only)."""
        return self.policy is WeightsPolicy.RANDOM


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """How a model runs, parsed once: device, precision, backend, layout, threads, loader workers, batch, decoding.

    ``None`` means "choose for the device" (see each job); every other value is checked here, so a typo
    fails when the options are made, before any work.
    """

    device: str = "auto"
    precision: Precision = Precision.FP32
    backend: RuntimeChoice = RuntimeChoice.TORCH
    #: NHWC layout for torch; ``None``: on for the CPU, where oneDNN's convolutions run 1.2-2.2x faster in it
    #: (``benchmarks/bench_layout.py``), off elsewhere.
    channels_last: bool | None = None
    #: Fold eval-mode batch normalisation into the convolutions before it (torch; inference only:
    #: :func:`cnnlab.models.fold.fold_batchnorm`): same predictions, one pass less over each activation map.
    #: ``None``: folded where a model is loaded to run (``load_model``, bench, predict, serve, review), not by
    #: ``load_torch``, whose module a caller may train.
    fold_bn: bool | None = None
    compile: bool = False
    #: torch (or ONNX Runtime) CPU threads; ``None``: the cores not used for decoding.
    threads: int | None = None
    #: Decoding processes; ``None``: chosen for the machine.
    workers: int | None = None
    #: Images per batch; ``None``: the default for the device.
    batch_size: int | None = None
    decode: DecodeWhere = DecodeWhere.AUTO
    #: Let JPEGs decode at reduced scale (``Image.draft``) when only a small image is needed.
    fast_decode: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", parse_device(self.device))
        object.__setattr__(self, "precision", parse_choice(Precision, self.precision, "precision"))
        object.__setattr__(self, "backend", parse_choice(RuntimeChoice, self.backend, "backend"))
        object.__setattr__(self, "decode", parse_choice(DecodeWhere, self.decode, "decode"))
        for name in ("channels_last", "fold_bn"):
            if getattr(self, name) not in (None, True, False):
                raise UsageError(f"{name} must be true, false or None (chosen for the device), got {getattr(self, name)!r}")
        object.__setattr__(self, "threads", _optional_count(self.threads, "threads", 1, 1024))
        object.__setattr__(self, "workers", _optional_count(self.workers, "workers", 0, 256))
        object.__setattr__(self, "batch_size", _optional_count(self.batch_size, "batch size", 1, 65536))

    def to_run(self) -> RuntimeOptions:
        """These options for a model loaded to run (not to train): batch norms folded unless said otherwise."""
        return self if self.fold_bn is not None else self.replace(fold_bn=True)

    def replace(self, **changes: Any) -> RuntimeOptions:
        """A copy with ``changes`` (checked like the original)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (enums as their string values)."""
        return {f.name: (v.value if isinstance(v := getattr(self, f.name), Enum) else v)
                for f in dataclasses.fields(self)}
