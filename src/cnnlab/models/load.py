"""Loading a classifier in PyTorch: registry entry + weights + device + preprocessing (:func:`load_torch`).

The public :func:`cnnlab.load_model` (:func:`cnnlab.runtime.loader.load_model`) also opens ``.onnx`` files
and the other runtimes; this is its PyTorch path, for callers that need the module itself (training, export).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError, UsageError, WeightsIntegrityError, WeightsNotFoundError
from cnnlab.models.fold import fold_batchnorm
from cnnlab.models.registry import get_spec
from cnnlab.models.spec import FromSpec, ModelSpec
from cnnlab.models.weights import describe_mismatch, load_state_dict, resolve_weights
from cnnlab.options import (
    Backend,
    ModelSource,
    Precision,
    Quantization,
    RuntimeOptions,
    WeightsPolicy,
    parse_choice,
    parse_device,
)

if TYPE_CHECKING:
    pass

_DTYPES = {
    Precision.FP32: torch.float32,
    Precision.TF32: torch.float32,
    Precision.BF16: torch.bfloat16,
    Precision.FP16: torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU. Asking for CUDA without one is an error.

    cnnlab runs models on ``cpu`` and ``cuda`` only: other torch device types (``mps``, ``meta``,
    ``xpu``...) are refused with a :class:`UsageError`, as strings or as ``torch.device`` objects
    (``meta`` would "run" without computing anything).
    """
    if isinstance(device, torch.device):
        if device.type not in ("cpu", "cuda"):
            raise UsageError(f"device type {device.type!r} is not supported; use cpu or cuda (or auto)")
        text = str(device)
    else:
        text = parse_device(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CnnlabError(f"device {text} was asked for, but torch sees no CUDA device here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CnnlabError(f"device {text}: there are only {torch.cuda.device_count()} CUDA devices")
    return dev


def resolve_precision(precision: str | Precision, device: torch.device) -> Precision:
    """A concrete precision for ``device``: ``auto`` is bf16 (or fp16) autocast on CUDA and fp32 elsewhere.

    fp16 needs CUDA; on other devices it is a usage error.
    """
    chosen = parse_choice(Precision, precision, "precision")
    if chosen is Precision.AUTO:
        if device.type != "cuda":
            return Precision.FP32
        return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16
    if chosen is Precision.FP16 and device.type != "cuda":
        raise UsageError("fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return chosen


def precision_dtype(precision: str | Precision) -> torch.dtype:
    """The compute dtype of a concrete precision (``fp32``, ``tf32``, ``bf16``, ``fp16``)."""
    chosen = parse_choice(Precision, precision, "precision")
    if chosen is Precision.AUTO:
        raise UsageError("precision 'auto' must be resolved for a device first (resolve_precision)")
    return _DTYPES[chosen]


@dataclass
class LoadedModel(FromSpec):
    """A classifier ready for inference. Call it on a ``uint8`` batch (N, 3, H, W) to get logits."""

    spec: ModelSpec
    module: nn.Module
    device: torch.device
    dtype: torch.dtype = torch.float32
    precision: Precision = Precision.FP32
    channels_last: bool = False
    #: Batch normalisations folded into their convolutions (:func:`cnnlab.models.fold.fold_batchnorm`): the
    #: module is for inference then, not for training.
    folded_bn: int = 0
    #: Parameters of the model as built (before any folding: what its publishers count).
    params: int = 0
    random_weights: bool = False
    weights_path: Path | None = None
    compiled: bool = False
    _forward: nn.Module | None = field(default=None, repr=False)

    @property
    def backend(self) -> Backend:
        return Backend.TORCH

    @property
    def quantization(self) -> Quantization:
        return Quantization.NONE

    @property
    def precision_label(self) -> str:
        return self.precision.value

    def runtime_info(self) -> dict[str, Any]:
        """What runs the model: for results and reports (:class:`cnnlab.runtime.Runtime`)."""
        return {"backend": "torch", "quantization": "none", "precision": self.precision.value,
                "provider": f"torch {torch.__version__} {self.device}" + (" channels_last" if self.channels_last else "")
                + (f" bn-folded({self.folded_bn})" if self.folded_bn else "")
                + (" compiled" if self.compiled else ""), "threads": torch.get_num_threads(), "device": str(self.device),
                "channels_last": self.channels_last, "folded_bn": self.folded_bn}

    def __call__(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """Normalise on the model's device and run the network; returns float32 logits."""
        x = batch_uint8.to(self.device, non_blocking=True)
        x = self.preprocessing.normalize(x, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        forward = self._forward or self.module
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = forward(x)
        if not isinstance(out, torch.Tensor):  # e.g. GoogLeNetOutputs in training mode
            out = out[0]
        return out.float()


def set_tf32(precision: Precision, device: torch.device) -> None:
    """Let CUDA's matrix units use TF32 exactly when ``precision`` is ``tf32``: torch's flags are global, so
    every path that puts a model on a GPU (loading, training) sets them here, and only here."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision is Precision.TF32
        torch.backends.cudnn.allow_tf32 = precision is Precision.TF32


def _random_weights(source: ModelSource, spec: ModelSpec) -> bool:
    """Whether ``source`` runs without weights: asked for, or (random-if-missing) none are on disk."""
    if source.policy is WeightsPolicy.RANDOM_IF_MISSING:
        from cnnlab.models.weights import locate_weights

        return source.weights is None and locate_weights(spec, source.weights_dir).found is None
    return source.policy is WeightsPolicy.RANDOM


def load_torch(source: str | Path | ModelSource, runtime: RuntimeOptions | None = None, *,
               progress: bool = True) -> LoadedModel:
    """A registered model or a ``cnnlab train`` checkpoint in PyTorch, with its weights, in eval mode.

    ``source`` says which model and weights (a name or path: its pretrained weights); ``runtime`` the device, precision (see
    :func:`resolve_precision`), channels-last layout (default: on the CPU), batch-norm folding (only when
    ``fold_bn=True``: :func:`cnnlab.load_model` and the commands ask for it, since a folded module cannot be
    trained), ``torch.compile`` and CPU threads (its backend,
    batch size and decoding are for the caller). Random weights are seeded (0): the same in every
    process and in the ONNX exports of random-weight models. ``progress``: show download progress.
    """
    if not isinstance(source, ModelSource):
        source = ModelSource(name=str(source))
    runtime = runtime or RuntimeOptions()
    name = source.name
    dev = resolve_device(runtime.device)
    chosen = resolve_precision(runtime.precision, dev)
    dtype = precision_dtype(chosen)
    set_tf32(chosen, dev)
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)
    from cnnlab.models.files import model_file_kind

    kind = model_file_kind(name)
    if kind == "onnx":
        raise UsageError(f"{name} is an ONNX file: PyTorch does not run it (load it with load_model, which opens "
                         "it in ONNX Runtime)")
    random_weights = False
    if kind == "checkpoint":
        if not Path(name).exists():
            raise WeightsNotFoundError(f"checkpoint file {name} does not exist")
        if not Path(name).is_file():
            raise WeightsIntegrityError(f"checkpoint {name} is not a regular file")
        if source.weights is not None or source.policy is WeightsPolicy.RANDOM:
            raise CnnlabError(f"{name} is a checkpoint with its own weights: other weights and random weights "
                              "do not apply")
        from cnnlab.models.checkpoint import load_checkpoint

        spec, module, weights_path = load_checkpoint(Path(name))
    else:
        spec = get_spec(name)
        random_weights = _random_weights(source, spec)
        weights_path = None
        state_dict = None
        if not random_weights:
            weights_path = resolve_weights(spec, weights=source.weights, weights_dir=source.weights_dir,
                                           download=source.download, progress=progress)
            state_dict = load_state_dict(weights_path)
        try:
            if state_dict is None:  # random weights: seeded, the same ones as the cached ONNX exports use
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    module = spec.build(None)
            else:
                module = spec.build(state_dict)
        except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError):  # keys or shapes
            assert state_dict is not None  # random weights always build
            detail = describe_mismatch(spec.build(None).state_dict(), state_dict)
            raise WeightsIntegrityError(f"weights {weights_path} do not fit {spec.name}: {detail}") from None
    module.eval().to(dev)
    params = sum(p.numel() for p in module.parameters())  # the model's own count, folded or not
    folded = fold_batchnorm(module) if runtime.fold_bn else 0
    channels_last = dev.type == "cpu" if runtime.channels_last is None else runtime.channels_last
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    loaded = LoadedModel(spec=spec, module=module, device=dev, dtype=dtype, precision=chosen,
                         channels_last=channels_last, folded_bn=folded, params=params, random_weights=random_weights,
                         weights_path=weights_path)
    if runtime.compile:
        loaded._forward = torch.compile(module)  # type: ignore[assignment]
        loaded.compiled = True
    return loaded
