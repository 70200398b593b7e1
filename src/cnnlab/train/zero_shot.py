"""What the untouched pretrained model scores on the run's validation images, through the WordNet mapping.

When every class of the run maps onto ImageNet classes (``cat`` onto its five domestic cats,
:func:`cnnlab.imagedata.labels.map_classes`, made disjoint as bench makes them), the pretrained model is already
a classifier over them: an image counts as right when the model's top ImageNet class belongs to its class.
The run reports that figure next to its own, so a user sees whether training helped at all. The
ImageNet classifier is kept aside when the head is replaced (:func:`keep_imagenet_head`) and applied to the
pretrained network's features of the validation images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.errors import DatasetError
from cnnlab.imagedata.datasets import LabelledImages
from cnnlab.imagedata.labels import disjoint_mappings, map_classes
from cnnlab.models.checkpoint import IMAGENET_OUTPUTS, find_head
from cnnlab.models.load import LoadedModel
from cnnlab.progress import Progress
from cnnlab.runtime.features import FeatureStore
from cnnlab.train.probe import frozen_features


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


def zero_shot_accuracy(model: LoadedModel, imagenet_head: nn.Linear, images: LabelledImages, *,
                       batch_size: int, workers: int, progress: Progress,
                       known: FeatureStore | None = None) -> ZeroShot | None:
    """The untouched classifier's accuracy on ``images`` (``None`` when a class does not map or nothing decoded):
    ``imagenet_head`` over ``model``'s features of them (``model`` still has its pretrained weights; ``known``: see
    :func:`cnnlab.train.probe.frozen_features`)."""
    mapped = imagenet_owners(images.classes)
    if mapped is None:
        return None
    owner, synsets = mapped
    try:
        feats = frozen_features(model, images, batch_size=batch_size, workers=workers, progress=progress,
                                description="zero-shot: the pretrained model through the WordNet mapping",
                                task="zero-shot", known=known)
    except DatasetError:  # nothing decoded
        return None
    with torch.no_grad():
        bias = imagenet_head.bias.float().cpu() if imagenet_head.bias is not None else None
        logits = nn.functional.linear(feats.x, imagenet_head.weight.float().cpu(), bias)
    accuracy = float((owner[logits.argmax(1)] == feats.y).float().mean())
    return ZeroShot(accuracy, len(feats.y), synsets)
