"""What the registry knows of one pretrained classifier: :class:`ModelSpec`, its metadata and how to build it.

Its own module so that the registry and timm's part of it (:mod:`cnnlab.models.timm_registry`) both use it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import UnknownModelError
from cnnlab.imagedata.preprocess import Preprocessing

if TYPE_CHECKING:  # torch is imported where models are built, so that the registry's names cost nothing
    import torch
    from torch import nn

StateDict = dict[str, "torch.Tensor"]
Builder = Callable[[StateDict | None], "nn.Module"]


@dataclass(frozen=True)
class ModelSpec:
    """Metadata and construction recipe of one pretrained classifier.

    ``gmacs`` are multiply-accumulates (torchvision calls its ``_ops`` figure GFLOPS, but it
    counts MACs). Accuracies are the publisher's ImageNet-1k validation figures, in percent.
    """

    name: str
    arch: str
    weights_tag: str
    is_default: bool
    source: str
    num_params: int
    gmacs: float | None
    acc1: float | None
    acc5: float | None
    weights_url: str | None
    weights_file: str | None
    weights_size_mb: float | None
    categories: tuple[str, ...]
    preprocessing: Preprocessing
    recipe: str = ""
    builder: Builder | None = field(default=None, repr=False, compare=False)
    #: For models whose weights ship inside an installed package: the file's path.
    packaged_weights: Path | None = field(default=None, repr=False, compare=False)
    #: The weights' license where the publisher states one (timm's ``pretrained_cfg``).
    license: str | None = None
    #: Hugging Face hub repository of the weights (``timm/convnext_tiny.fb_in1k``), fetched with huggingface_hub.
    hf_hub_id: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def build(self, state_dict: StateDict | None = None) -> nn.Module:
        """Build the architecture with ``state_dict`` as parameters (random when ``None``)."""
        if self.builder is None:
            raise UnknownModelError(f"{self.name} has no builder")
        return self.builder(state_dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (no callables), for JSON/CSV output."""
        return {
            "name": self.name,
            "arch": self.arch,
            "weights_tag": self.weights_tag,
            "is_default": self.is_default,
            "source": self.source,
            "num_params": self.num_params,
            "gmacs": self.gmacs,
            "acc1": self.acc1,
            "acc5": self.acc5,
            "weights_url": self.weights_url,
            "weights_file": self.weights_file,
            "weights_size_mb": self.weights_size_mb,
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
            "recipe": self.recipe,
            "license": self.license,
            "hf_hub_id": self.hf_hub_id,
        }


class FromSpec:
    """What a model takes from its :class:`ModelSpec` (mixed into LoadedModel and ExportedModel)."""

    spec: ModelSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    @property
    def categories(self) -> tuple[str, ...]:
        return self.spec.categories
