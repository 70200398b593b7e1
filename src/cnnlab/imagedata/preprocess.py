"""Preprocessing that travels with the weights, split into a CPU half and a device half.

The CPU half (:meth:`Preprocessing.to_uint8`) decodes, resizes the shorter side and centre-crops,
giving a ``uint8`` tensor: small to move between processes and to the GPU. The device half
(:meth:`Preprocessing.normalize`) turns a uint8 batch into normalised floats where the model runs.
Together they compute what torchvision's ``ImageClassification`` preset computes on a PIL image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.imagedata.limits import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:  # imported where pixels are touched: the registry imports this module for its names
    import numpy as np
    import torch
    from PIL import Image


#: Largest resize and crop size accepted (the largest published preset is 600; a hand-edited
#: checkpoint asking for 100000 would need 30 GB per image).
MAX_INPUT_SIZE = 2048

#: Resampling filters (Pillow's names, as torchvision's ``InterpolationMode`` values).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")

#: How the image reaches ``resize_size`` before the centre crop (timm's ``crop_mode``): ``center``
#: resizes the shorter side (aspect ratio kept), ``squash`` resizes both sides (aspect ratio lost).
CROP_MODES = ("center", "squash")

#: Before resizing, the long side is cut to at most this many times the larger of resize and crop
#: size (after scaling): only the centre crop is kept, and without the cut a 20000x1 strip would
#: become a 5-gigapixel intermediate. Ordinary photos (aspect ratio up to 4:1) are not cut.
_MAX_LONG_FACTOR = 4


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing: resize shorter side (or both: ``crop_mode="squash"``), centre crop,
    scale to [0, 1], normalise."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        """Refuse numbers no model was trained with (a hand-edited checkpoint): ``ValueError``."""
        for name in ("resize_size", "crop_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_INPUT_SIZE:
                raise ValueError(f"{name} must be a whole number from 1 to {MAX_INPUT_SIZE}, got {value!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be 3 finite numbers (one per RGB channel), got {values!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")

    @classmethod
    def from_torchvision(cls, preset: Any) -> Preprocessing:
        """Read the numbers off a torchvision ``ImageClassification`` preset (``weights.transforms()``)."""
        resize = preset.resize_size
        crop = preset.crop_size
        return cls(
            resize_size=int(resize[0] if isinstance(resize, (list, tuple)) else resize),
            crop_size=int(crop[0] if isinstance(crop, (list, tuple)) else crop),
            mean=tuple(float(v) for v in preset.mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in preset.std),  # type: ignore[arg-type]
            interpolation=str(preset.interpolation.value),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resize_and_crop(self, img: Image.Image) -> Image.Image:
        """Resize so the shorter side is ``resize_size`` (as torchvision does), then centre-crop.

        The working size is bounded: for an extreme aspect ratio, the part of the long side that the
        centre crop cannot reach is cut off before resizing (see ``_MAX_LONG_FACTOR``). With
        ``crop_mode="squash"`` both sides become ``resize_size`` (timm's eval transform for such weights).
        """
        from PIL import Image

        crop = self.crop_size
        if self.crop_mode == "squash":
            img = img.resize((self.resize_size, self.resize_size), Image.Resampling[self.interpolation.upper()])
            left = top = int(round((self.resize_size - crop) / 2.0))
            return img.crop((left, top, left + crop, top + crop))
        width, height = img.size
        short, long = (width, height) if width <= height else (height, width)
        limit = _MAX_LONG_FACTOR * max(self.resize_size, self.crop_size)
        if self.resize_size * long / short > limit:
            keep = min(long, math.ceil(limit * short / self.resize_size))
            start = (long - keep) // 2
            box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
            img = img.crop(box)
            width, height = img.size
            short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        new_size = (new_short, new_long) if width <= height else (new_long, new_short)
        if new_size != img.size:
            img = img.resize(new_size, Image.Resampling[self.interpolation.upper()])
        left = int(round((img.width - crop) / 2.0))
        top = int(round((img.height - crop) / 2.0))
        return img.crop((left, top, left + crop, top + crop))

    def to_array(self, img: Image.Image) -> np.ndarray:
        """CPU half without torch: RGB PIL image -> ``uint8`` array of shape (3, crop, crop) (what runtimes that
        take host arrays, ONNX Runtime and OpenVINO, are given)."""
        import numpy as np

        array = np.asarray(self.resize_and_crop(img.convert("RGB")), dtype=np.uint8)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def to_uint8(self, img: Image.Image) -> torch.Tensor:
        """CPU half: RGB PIL image -> ``uint8`` tensor of shape (3, crop, crop)."""
        import torch

        return torch.from_numpy(self.to_array(img))

    def load_array(
        self, path: str | Path | bytes, *, fast_decode: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> np.ndarray:
        """Decode a file and run the CPU half, without torch. ``fast_decode`` lets JPEGs decode at reduced scale.

        Raises :class:`cnnlab.errors.ImageDecodeError` for files that cannot be used.
        """
        from cnnlab.imagedata.decode import decode_image

        img = decode_image(path, max_pixels=max_pixels, draft_to=self.resize_size if fast_decode else None)
        return self.to_array(img)

    def load(
        self, path: str | Path | bytes, *, fast_decode: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> torch.Tensor:
        """:meth:`load_array` as a tensor (the loaders of PyTorch models)."""
        import torch

        return torch.from_numpy(self.load_array(path, fast_decode=fast_decode, max_pixels=max_pixels))

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Device half: ``uint8`` (N, 3, H, W) on any device -> normalised ``dtype`` tensor."""
        import torch

        device = batch.device
        std = torch.tensor(self.std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(self.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        scale = 1.0 / (255.0 * std)
        shift = -mean / std
        return torch.addcmul(shift, batch.float(), scale).to(dtype or torch.float32)
