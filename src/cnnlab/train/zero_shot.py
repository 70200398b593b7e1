"""What the untouched pretrained model scores on the run's validation images, through the WordNet mapping.

When every class of the run maps onto ImageNet classes (``cat`` onto its five domestic cats,
:func:`cnnlab.imagedata.labels.map_classes`, made disjoint as bench makes them), the pretrained model is already
a classifier over them: an image counts as right when the model's top ImageNet class belongs to its class.
The run reports that figure next to its own, so a user sees whether training helped at all. The
ImageNet classifier is kept aside when the head is replaced (:func:`keep_imagenet_head`) and put back in the
network for one pass over the validation images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.imagedata.datasets import LabelledImages
from cnnlab.imagedata.labels import disjoint_mappings, map_classes
from cnnlab.models.checkpoint import IMAGENET_OUTPUTS, find_head
from cnnlab.models.load import LoadedModel
from cnnlab.progress import Progress
from cnnlab.train.loop import evaluate


@dataclass
class ZeroShot:
    """The pretrained model's accuracy on the validation images through the mapping."""

    accuracy: float
    images: int
    #: The WordNet synset each class was mapped through.
    synsets: dict[str, str | None]

    def to_dict(self) -> dict[str, Any]:
        return {"val_acc": self.accuracy, "n": self.images, "synsets": self.synsets}


def keep_imagenet_head(module: nn.Module) -> nn.Linear | None:
    """A copy of ``module``'s ImageNet classifier when it is a plain linear layer over the 1,000 classes, else
    ``None`` (call before the head is replaced)."""
    try:
        _, head = find_head(module, IMAGENET_OUTPUTS)
    except Exception:  # noqa: BLE001 - no recognisable ImageNet classifier: no zero-shot figure
        return None
    return copy.deepcopy(head) if isinstance(head, nn.Linear) else None


def imagenet_owners(classes: list[str]) -> tuple[torch.Tensor, dict[str, str | None]] | None:
    """For each ImageNet class, the run's class it belongs to (-1: none); ``None`` unless every class maps."""
    mappings = disjoint_mappings(map_classes(classes))
    if not all(mappings[c].mapped for c in classes):
        return None
    owner = torch.full((IMAGENET_OUTPUTS,), -1, dtype=torch.long)
    for target, name in enumerate(classes):
        owner[list(mappings[name].indices)] = target
    return owner, {c: mappings[c].synset for c in classes}


def zero_shot_accuracy(model: LoadedModel, head_path: str, imagenet_head: nn.Linear, images: LabelledImages, *,
                       batch_size: int, workers: int, progress: Progress) -> ZeroShot | None:
    """The untouched classifier's accuracy on ``images`` (``None`` when a class does not map or nothing decoded).

    The run's head at ``head_path`` is swapped for ``imagenet_head`` for the pass, then put back."""
    mapped = imagenet_owners(images.classes)
    if mapped is None:
        return None
    owner, synsets = mapped
    parent_path, _, attr = head_path.rpartition(".")
    parent = model.module.get_submodule(parent_path)
    own = getattr(parent, attr)
    dtype = next(own.parameters()).dtype
    setattr(parent, attr, imagenet_head.to(device=model.device, dtype=dtype))
    try:
        preds = evaluate(model, images, batch_size=batch_size, workers=workers, progress=progress,
                         description="zero-shot: the pretrained model through the WordNet mapping")
    finally:
        setattr(parent, attr, own)
    if not len(preds.targets):
        return None
    accuracy = float((owner[preds.logits.argmax(1)] == preds.targets).float().mean())
    return ZeroShot(accuracy, len(preds.targets), synsets)
