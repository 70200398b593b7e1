"""The vocabularies that cnnlab's options take, one type each, shared by the library and the CLI
(plus the few shared defaults that belong to no config class).

Each is a :class:`~enum.StrEnum`: the CLI offers exactly its values (a typo is a usage error,
exit 2, before any work starts), the library accepts the enum or its string value, and configs
store the plain string. Nothing here imports torch, so the CLI can build its help from it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TypeVar

from cnnlab.errors import UsageError

E = TypeVar("E", bound=StrEnum)

#: Largest accepted absolute difference between exported and PyTorch fp32 logits (typical: 1e-6 to 1e-5).
DEFAULT_EXPORT_TOLERANCE = 1e-3


class Precision(StrEnum):
    """Numeric precision of a model's arithmetic.

    ``auto`` resolves per device (see :func:`cnnlab.models.resolve_precision`); ``tf32`` keeps fp32
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
    """What BatchNorm layers do while fine-tuning (see :mod:`cnnlab.finetune`)."""

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
    """Augmentation preset of training images (see :mod:`cnnlab.finetune.augment`).

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
