"""Models: the registry, weights, the checkpoint format, heads, loading and export.

* :mod:`~cnnlab.models.registry`: every torchvision ImageNet classifier, the offline model and timm's
  (:mod:`~cnnlab.models.timm_registry`), listable with wildcards;
* :mod:`~cnnlab.models.weights` and :mod:`~cnnlab.models.hub`: where weights come from, loaded safely;
* :mod:`~cnnlab.models.checkpoint`: ``cnnlab train``'s checkpoints (with the data record of
  :mod:`~cnnlab.models.leakage`), and new heads (:mod:`~cnnlab.models.timm_heads` for timm);
* :mod:`~cnnlab.models.load`: :func:`load_torch`, a classifier in PyTorch (the public
  :func:`cnnlab.load_model`, in :mod:`cnnlab.runtime.loader`, also opens ``.onnx`` files and other runtimes);
* :mod:`~cnnlab.models.export`: TorchScript and ONNX files, checked against PyTorch.

Names are imported on first use, so the CLI can list the registry without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "load": ["LoadedModel", "load_torch"],
        "registry": ["LAB_MODELS", "ModelSpec", "get_spec", "list_models"],
    },
)

if TYPE_CHECKING:
    from cnnlab.models.load import LoadedModel, load_torch
    from cnnlab.models.registry import LAB_MODELS, ModelSpec, get_spec, list_models
