"""Checkpoints written by ``cnnlab train``: a fine-tuned model that carries its own metadata.

A checkpoint is a plain ``dict`` saved with :func:`torch.save` that holds only plain data and
tensors, so it loads with ``torch.load(weights_only=True)`` and no code runs while reading it::

    {
        "format": "cnnlab-checkpoint", "version": 1,
        "arch": "efficientnet_lite0.IMAGENET1K",      # registry name of the base model
        "head": {"path": "_fc", "kind": "linear", "in_features": 1280, "num_classes": 3},
        "classes": ["cat", "dog", "fox"],
        "preprocessing": {...},                        # Preprocessing.to_dict()
        "state_dict": {...},                           # the fine-tuned network
        "train_args": {...}, "metrics": {...},
        "resolved": {...},                             # optional: the run's resolved automatic settings
        "versions": {"torch": ..., "torchvision": ..., "cnnlab": ..., "python": ...},
        "created": "2025-01-01T12:00:00+00:00",
        "resume": {...},                               # last.pt only: optimizer, epoch, history
        "data_record": {...},                          # optional: what it was trained and validated
    }                                                  # on (cnnlab.models.leakage)

The fine-tuned architecture is the base model with its 1000-way ImageNet classifier replaced by a
layer with one output per class (:func:`replace_head`), so everything that can build a registry
model can rebuild a checkpoint without the training data.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError, UnknownModelError, WeightsIntegrityError
from cnnlab.imagedata.preprocess import Preprocessing
from cnnlab.models.metadata import check_checkpoint_record, check_preprocessing
from cnnlab.models.registry import get_spec
from cnnlab.models.spec import ModelSpec, StateDict
from cnnlab.models.timm_heads import outputs_of, replace_timm_head, timm_classifier
from cnnlab.models.weights import describe_mismatch, torch_load_plain
from cnnlab.outputs import atomic_open

FORMAT = "cnnlab-checkpoint"
VERSION = 1
#: Keys every checkpoint must have for it to be usable without the training data.
REQUIRED_KEYS: tuple[str, ...] = ("format", "version", "arch", "classes", "preprocessing", "state_dict")
#: Output count of the classifiers being replaced (ImageNet-1k).
IMAGENET_OUTPUTS = 1000
# --------------------------------------------------------------------------------------------
# the new head
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadInfo:
    """Which layer was the classifier and what replaced it."""

    path: str
    kind: str  # "linear" or "conv1x1" (SqueezeNet)
    in_features: int
    old_outputs: int
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def find_head(module: nn.Module, num_outputs: int = IMAGENET_OUTPUTS) -> tuple[str, nn.Module]:
    """The model's final classifier: the last-registered ``nn.Linear`` with ``num_outputs`` outputs.

    Works for every torchvision family (``fc``, ``classifier[-1]``, ``heads.head``, ``head``) and
    EfficientNet-Lite (``_fc``); Inception's auxiliary ``AuxLogits.fc`` is registered before ``fc``
    and is left alone. SqueezeNet classifies with a 1x1 convolution, which counts too. A timm model
    names its classifier itself (``get_classifier``: ``head.fc``, LeViT's ``NormLinear``...); of a
    distilled model's two heads the first is returned.
    """
    timm_head = timm_classifier(module)
    if timm_head is not None and outputs_of(timm_head[1]) == num_outputs:
        return timm_head
    found: tuple[str, nn.Module] | None = None
    for name, layer in module.named_modules():
        linear = isinstance(layer, nn.Linear) and layer.out_features == num_outputs
        conv1x1 = (
            isinstance(layer, nn.Conv2d)
            and layer.out_channels == num_outputs
            and layer.kernel_size == (1, 1)
            and layer.groups == 1
        )
        if linear or conv1x1:
            found = (name, layer)
    if found is None or not found[0]:
        raise CnnlabError(
            f"{type(module).__name__} has no final nn.Linear (or 1x1 convolution) with {num_outputs} outputs "
            "to replace with a new head"
        )
    return found


def replace_head(module: nn.Module, num_classes: int, *, num_outputs: int = IMAGENET_OUTPUTS) -> HeadInfo:
    """Replace the final ``num_outputs``-way classifier of ``module`` (in place) by a ``num_classes``-way one.

    The new layer has the old one's input size, bias setting, device and dtype, and the default
    PyTorch initialisation (seed the global RNG first for a reproducible head). A timm model gets
    its new head from its own ``reset_classifier``; a distilled one (DeiT, LeViT: a head for the
    class token and one for the distillation token, averaged) gets one new head shared by both
    tokens, so that training the head trains all of it.
    """
    if num_classes < 1:
        raise CnnlabError(f"a head needs at least one class, got {num_classes}")
    path, old = find_head(module, num_outputs)
    if timm_classifier(module) is not None:
        return HeadInfo(*replace_timm_head(module, num_classes, old), num_outputs, num_classes)
    device, dtype = old.weight.device, old.weight.dtype
    new: nn.Module
    if isinstance(old, nn.Linear):
        kind, in_features = "linear", old.in_features
        new = nn.Linear(in_features, num_classes, bias=old.bias is not None, device=device, dtype=dtype)
    else:
        assert isinstance(old, nn.Conv2d)
        kind, in_features = "conv1x1", old.in_channels
        new = nn.Conv2d(
            in_features, num_classes, kernel_size=1, bias=old.bias is not None, device=device, dtype=dtype
        )
    parent_path, _, attr = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, attr, new)
    return HeadInfo(path, kind, in_features, num_outputs, num_classes)


def build_finetuned(base: ModelSpec, num_classes: int, state_dict: StateDict | None = None) -> nn.Module:
    """Build ``base``'s architecture with a ``num_classes``-way head and load ``state_dict`` (strictly)."""
    module = base.build(None)
    replace_head(module, num_classes)
    if state_dict is not None:
        module.load_state_dict(state_dict, strict=True)
    return module


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Versions of what produced a checkpoint."""
    import torchvision

    import cnnlab

    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "cnnlab": str(cnnlab.__version__),
        "python": platform.python_version(),
    }


def plain(obj: Any) -> Any:
    """``obj`` as data that ``torch.load(weights_only=True)`` accepts: numpy and paths converted.

    Raises :class:`TypeError` for anything else (a callable, a custom object), so a checkpoint can
    never contain something that would need code to load.
    """
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    for kind in (bool, int, float, str):  # subclasses (numpy's float64, torch's TorchVersion) need code
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint: only plain data and tensors")


def make_checkpoint(
    *,
    arch: str,
    head: HeadInfo,
    classes: list[str],
    preprocessing: Preprocessing,
    state_dict: Mapping[str, torch.Tensor],
    train_args: Mapping[str, Any],
    metrics: Mapping[str, Any],
    resume: Mapping[str, Any] | None = None,
    data_record: Mapping[str, Any] | None = None,
    resolved: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict (tensors are detached copies on the CPU). The weights (``state_dict``) are in
    PyTorch's default contiguous layout whatever the layout of the training model; ``resume``, the training
    state for ``--resume``, is stored as it is (on the CPU, channels-last like the model that trains).

    ``data_record``: the images it was trained and validated on (:mod:`cnnlab.models.leakage`).
    ``resolved``: what the run resolved its automatic settings to (:class:`cnnlab.train.config.ResolvedSettings`).
    """
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "head": head.to_dict(),
        "classes": list(classes),
        "preprocessing": plain(preprocessing.to_dict()),
        "state_dict": {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
                       for k, v in state_dict.items()},
        "train_args": plain(dict(train_args)),
        "metrics": plain(dict(metrics)),
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if resume is not None:
        ckpt["resume"] = plain(dict(resume))
    if data_record is not None:
        ckpt["data_record"] = plain(dict(data_record))
    if resolved is not None:
        ckpt["resolved"] = plain(dict(resolved))
    return ckpt


def save_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``ckpt`` atomically and durably (:func:`cnnlab.outputs.atomic_open`): an interrupted
    save (even ``kill -9`` or a power cut) never leaves a half-written checkpoint behind, and the
    temporary file of a killed save is removed by the next one.

    Raises:
        OutputError: the file cannot be written (a full disk: torch itself only says "unexpected
            pos"; no permission). An earlier ``path`` is intact.
    """
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        writer = _WriteRecorder(fh)
        try:
            torch.save(dict(ckpt), writer)  # type: ignore[arg-type]
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None
    return path


class _WriteRecorder:
    """A file for :func:`torch.save` that remembers the ``OSError`` of a failed write: torch turns it
    into a ``RuntimeError`` that says only "unexpected pos"."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self._fh.write(data))
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as exc:
            self.error = exc
            raise


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint dict with ``weights_only=True``.

    Raises:
        UnsafeWeightsError: the file is a pickle that would run code.
        WeightsIntegrityError: unreadable, not a cnnlab checkpoint, or missing metadata.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if os.path.lexists(path) else "does not exist"
        raise WeightsIntegrityError(f"checkpoint {path} {what}")
    obj = torch_load_plain(path)
    if not isinstance(obj, dict):
        raise WeightsIntegrityError(f"{path} is not a cnnlab training checkpoint (it holds a {type(obj).__name__})")
    if obj.get("format") != FORMAT:
        hint = (
            " It looks like a plain state dict: use it with --weights FILE and a registry model name."
            if obj and all(isinstance(v, torch.Tensor) for v in obj.values())
            else ""
        )
        raise WeightsIntegrityError(
            f"{path} is not a cnnlab training checkpoint (no 'format': '{FORMAT}' entry).{hint}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise WeightsIntegrityError(
            f"checkpoint {path} lacks {', '.join(repr(k) for k in missing)}: without them the model cannot be "
            "rebuilt or used (it was not written by `cnnlab train`, or was edited)"
        )
    version = obj["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version > VERSION:
        raise WeightsIntegrityError(
            f"checkpoint {path} has format version {version!r}; this cnnlab reads version {VERSION} or older "
            "(upgrade cnnlab)"
        )
    state = obj["state_dict"]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise WeightsIntegrityError(f"checkpoint {path}: 'state_dict' must be a non-empty dict of named tensors")
    if not isinstance(obj["arch"], str):
        raise WeightsIntegrityError(f"checkpoint {path}: 'arch' must be a registry model name")
    check_checkpoint_record(obj, f"checkpoint {path}")  # classes, preprocessing, mappings, nesting, data record
    return obj


def checkpoint_preprocessing(ckpt: Mapping[str, Any], path: str | Path = "checkpoint") -> Preprocessing:
    """The :class:`Preprocessing` stored in a checkpoint dict, checked (:mod:`cnnlab.models.metadata`)."""
    return check_preprocessing(ckpt.get("preprocessing"), f"checkpoint {path}")


def base_spec(ckpt: Mapping[str, Any], path: str | Path = "checkpoint") -> ModelSpec:
    """The registry entry a checkpoint was trained from."""
    try:
        return get_spec(ckpt["arch"])
    except UnknownModelError as exc:
        raise WeightsIntegrityError(
            f"checkpoint {path} was trained from {ckpt['arch']!r}, which this installation does not know: {exc}"
        ) from None


def checkpoint_spec(ckpt: Mapping[str, Any], path: str | Path, module: nn.Module | None = None) -> ModelSpec:
    """A :class:`ModelSpec` for a checkpoint: the base entry with the checkpoint's classes and preprocessing."""
    base = base_spec(ckpt, path)
    path = Path(path)
    classes = tuple(ckpt["classes"])
    num_params = (
        sum(p.numel() for p in module.parameters())
        if module is not None
        else sum(int(v.numel()) for k, v in ckpt["state_dict"].items() if not _is_buffer_key(k))
    )
    head = ckpt.get("head") or {}
    preprocessing = checkpoint_preprocessing(ckpt, path)
    gmacs = base.gmacs  # the base model's figure less the smaller head; unknown at another input size
    if preprocessing.crop_size != base.preprocessing.crop_size or not isinstance(head.get("in_features"), int):
        gmacs = None
    elif gmacs is not None:
        gmacs = max(0.0, gmacs - head["in_features"] * (IMAGENET_OUTPUTS - len(classes)) / 1e9)
    args = ckpt.get("train_args") or {}
    start = "random weights" if args.get("random_weights") else f"{base.name} weights"
    recipe = f"cnnlab train: {base.name} fine-tuned on {len(classes)} classes, starting from {start}"
    size = path.stat().st_size / 1e6 if path.is_file() else None
    return dataclasses.replace(
        base,
        name=str(path),
        weights_tag=path.stem,
        is_default=False,
        source="checkpoint",
        num_params=int(num_params),
        gmacs=round(gmacs, 4) if gmacs is not None and math.isfinite(gmacs) else None,
        acc1=None,
        acc5=None,
        weights_url=None,
        weights_file=path.name,
        weights_size_mb=round(size, 3) if size is not None else None,
        categories=classes,
        preprocessing=preprocessing,
        recipe=recipe,
        builder=functools.partial(build_finetuned, base, len(classes)),
        packaged_weights=None,
    )


def _is_buffer_key(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def load_checkpoint(path: Path) -> tuple[ModelSpec, nn.Module, Path]:
    """Read a ``cnnlab train`` checkpoint: ``(spec, module in eval mode, path)``.

    ``spec.source == "checkpoint"``, ``spec.categories`` are the trained class names and
    ``spec.preprocessing`` is the evaluation preprocessing stored with it.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    base = base_spec(ckpt, path)
    num_classes = len(ckpt["classes"])
    checkpoint_preprocessing(ckpt, path)  # refuse a hand-edited entry before building anything
    try:
        module = build_finetuned(base, num_classes, ckpt["state_dict"])
    except CnnlabError as exc:
        raise WeightsIntegrityError(
            f"the weights in {path} do not fit {base.name} with a {num_classes}-class head: {exc}"
        ) from None
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError):
        expected = build_finetuned(base, num_classes, None).state_dict()
        raise WeightsIntegrityError(
            f"the weights in {path} do not fit {base.name} with a {num_classes}-class head: "
            f"{describe_mismatch(expected, ckpt['state_dict'])}"
        ) from None
    module.eval()
    return checkpoint_spec(ckpt, path, module), module, path
