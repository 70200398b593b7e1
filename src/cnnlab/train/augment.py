"""Training augmentation: per-image presets (:class:`TrainTransform`) and per-batch MixUp/CutMix (:func:`make_batch_mix`).

Built from torchvision's ``transforms.v2``:

* ``light``: ``RandomResizedCrop`` (area ``crop_scale``) and ``RandomHorizontalFlip`` (and
  ``ColorJitter`` when ``color_jitter`` > 0);
* ``trivialaugment``: ``light`` then ``TrivialAugmentWide``;
* ``randaugment``: ``light`` then ``RandAugment`` (2 operations, magnitude 9);
* ``none``: the evaluation preprocessing itself (resize, centre crop).

MixUp and CutMix (``v2.MixUp``/``v2.CutMix``, one of them at random per batch when both are on)
mix whole batches and turn the labels into class probabilities, which
:class:`torch.nn.CrossEntropyLoss` accepts. They work on float pixel values in [0, 255]:
normalisation is affine, so mixing before or after it is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cnnlab.imagedata.decode import decode_image
from cnnlab.imagedata.preprocess import Preprocessing
from cnnlab.options import Augment

#: ``(uint8 images, class ids) -> (float images, class probabilities)``.
BatchMix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TrainTransform:
    """Decode + training augmentation, giving a ``uint8`` (3, crop, crop) tensor.

    Has the ``load(path, fast_decode=...)`` method of :class:`Preprocessing`, so that the loaders
    of :mod:`cnnlab.runtime.inference` (with their skip-and-count handling of bad files) serve training
    images too. Images are first shrunk so that their shorter side is at most ``resize_size`` (the
    evaluation resize), then augmented as ``preset`` says, the random resized crop giving
    ``crop_size`` px (default: the evaluation crop); normalisation happens later, on the
    device, with the weights' numbers (:class:`cnnlab.models.load.LoadedModel`).
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        *,
        preset: Augment | str = Augment.LIGHT,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        hflip: bool = True,
        color_jitter: float = 0.0,
        crop_size: int | None = None,
    ) -> None:
        from torchvision.transforms import v2

        self.preprocessing = preprocessing
        self.preset = Augment(preset)
        if self.preset is Augment.NONE:
            raise ValueError("preset 'none' trains on the evaluation preprocessing: use the Preprocessing itself")
        steps: list[Any] = [
            v2.RandomResizedCrop(
                crop_size or preprocessing.crop_size,
                scale=tuple(crop_scale),
                interpolation=v2.InterpolationMode(preprocessing.interpolation),
                antialias=True,
            )
        ]
        if hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        if color_jitter > 0:
            steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        if self.preset is Augment.TRIVIALAUGMENT:
            steps.append(v2.TrivialAugmentWide())
        elif self.preset is Augment.RANDAUGMENT:
            steps.append(v2.RandAugment())
        self.transform = v2.Compose(steps)

    def load(self, path: str | Path | bytes, *, fast_decode: bool = True) -> torch.Tensor:
        """Decode ``path`` and return one random augmented crop."""
        pp = self.preprocessing
        img = decode_image(path, draft_to=pp.resize_size if fast_decode else None)
        short = min(img.size)
        if short > pp.resize_size:
            scale = pp.resize_size / short
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.Resampling[pp.interpolation.upper()])
        tensor = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        crop: torch.Tensor = self.transform(tensor)
        return crop.contiguous()


def make_transform(
    preprocessing: Preprocessing,
    preset: Augment,
    *,
    crop_scale: tuple[float, float],
    hflip: bool,
    color_jitter: float,
    crop_size: int | None = None,
) -> TrainTransform | Preprocessing:
    """The per-image transform of training images for ``preset`` (``none``: ``preprocessing`` itself)."""
    if preset is Augment.NONE:
        return preprocessing
    return TrainTransform(preprocessing, preset=preset, crop_scale=crop_scale, hflip=hflip,
                          color_jitter=color_jitter, crop_size=crop_size)


def make_batch_mix(num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0) -> BatchMix | None:
    """MixUp and/or CutMix of training batches (alpha of each; 0 is off), ``None`` when both are off.

    The mixing draws from torch's global generator, which the run re-seeds every epoch.
    """
    from torchvision.transforms import v2

    mixes: list[Any] = []
    if mixup > 0:
        mixes.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        mixes.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not mixes:
        return None
    chosen = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def mix(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed, probabilities = chosen(images.float(), targets)
        return mixed, probabilities

    return mix
