"""JPEG decoding, resizing and cropping on the GPU: the data path that keeps a fast GPU busy.

On a GPU, ``bench`` is bound by JPEG decoding on the CPU (a few hundred images per second from 16
cores, against tens of thousands the model could take). With this path the loader's workers only
read file bytes (:class:`JpegBytes`, batched as a list by :func:`collate_encoded`); the main process
decodes a whole batch at once with nvJPEG (``torchvision.io.decode_jpeg(..., device="cuda")``), then
resizes the shorter side and centre-crops each image on the device (:func:`decode_batch`), giving the
same ``uint8`` batch the CPU path gives. Files that are not JPEGs (PNG, WebP, ...) are decoded on the
CPU as usual, in the workers, and so are JPEGs whose header shows what the device path should not
take (CMYK, over the pixel limit, strips past 4:1, a ``squash`` preprocessing). A JPEG the device
decoder refuses is tried with Pillow on the CPU; only what neither reads becomes a skipped file.

:func:`cnnlab.runtime.inference.run_inference` takes it with ``decode="device"``, and with the default
``decode="auto"`` whenever the model runs on CUDA; ``bench`` reports the path in its ``decode``
column (``nvjpeg`` or ``cpu``) and ``--decode cpu`` keeps the CPU path. On a CPU device the same
plumbing decodes with torchvision's CPU decoder (how the tests check it).

The arithmetic differs slightly from Pillow's (antialiased interpolation in float, rounded once, and
no reduced-scale JPEG decoding), so predictions can differ on near-ties.
``benchmarks/gpu_decode_check.py`` (run by ``benchmarks/gpu_check.sh``) times the two paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.errors import ImageDecodeError

if TYPE_CHECKING:
    import torch

    from cnnlab.imagedata.preprocess import Preprocessing
    from cnnlab.runtime.batches import Batch

#: The first bytes of every JPEG file (SOI marker).
JPEG_MAGIC = b"\xff\xd8\xff"


class JpegBytes:
    """A loader transform: JPEG files as their raw bytes (to decode on the device), other files decoded
    and preprocessed on the CPU by ``preprocessing`` as usual."""

    def __init__(self, preprocessing: Preprocessing, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.preprocessing = preprocessing
        self.max_bytes = max_bytes

    def load(self, path: str | Path | bytes, *, fast_decode: bool = True) -> torch.Tensor:
        import torch

        from cnnlab.imagedata.decode import read_regular_file

        # read_regular_file: only regular files, bounded reads (a FIFO or /dev/zero never blocks or floods)
        data = path if isinstance(path, bytes) else read_regular_file(path, self.max_bytes)
        if data[:len(JPEG_MAGIC)] == JPEG_MAGIC and device_decodable(data, self.preprocessing):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return self.preprocessing.load(data, fast_decode=fast_decode)


def device_decodable(data: bytes, preprocessing: Preprocessing) -> bool:
    """Whether a JPEG goes to the device decoder: read from its header (nothing decoded), an RGB or grey
    image within the pixel limit and the 4:1 aspect ratio past which the CPU path cuts the long side,
    for a centre-crop preprocessing. Everything else (CMYK, bombs, strips, ``squash``) takes the CPU
    path with its guards."""
    import io

    from PIL import Image

    from cnnlab.imagedata.preprocess import _MAX_LONG_FACTOR, DEFAULT_MAX_PIXELS

    if preprocessing.crop_mode != "center":
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            mode = img.mode
    except Exception:  # noqa: BLE001 - unreadable headers are the CPU path's to report
        return False
    return (mode in ("RGB", "L") and 0 < width * height <= DEFAULT_MAX_PIXELS
            and max(width, height) <= _MAX_LONG_FACTOR * min(width, height))


def is_encoded(item: torch.Tensor) -> bool:
    """Whether a loader item holds file bytes (1-D) rather than a decoded (3, H, W) image."""
    return item.ndim == 1


def resize_and_crop(image: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """A (3, H, W) ``uint8`` image on any device, resized so its shorter side is ``resize_size`` and
    centre-cropped to ``crop_size`` (the device-side twin of :meth:`Preprocessing.resize_and_crop`)."""
    import torch
    from torch.nn import functional

    _, height, width = image.shape
    size = preprocessing.resize_size
    if width <= height:
        new_w, new_h = size, max(1, int(size * height / width))
    else:
        new_w, new_h = max(1, int(size * width / height)), size
    crop = preprocessing.crop_size
    if (new_h, new_w) != (height, width):
        mode = preprocessing.interpolation if preprocessing.interpolation in ("bilinear", "bicubic") else "bilinear"
        resized = functional.interpolate(image[None].float(), size=(new_h, new_w), mode=mode, antialias=True,
                                         align_corners=False)[0]
        image = resized.round_().clamp_(0, 255).to(torch.uint8)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    if top < 0 or left < 0:  # smaller than the crop: pad like PIL's crop does (black)
        pad = functional.pad(image, (max(0, -left), max(0, crop - new_w - left), max(0, -top),
                                     max(0, crop - new_h - top)))
        return pad[:, max(0, top):max(0, top) + crop, max(0, left):max(0, left) + crop]
    return image[:, top:top + crop, left:left + crop]


def decode_batch(items: list[torch.Tensor], preprocessing: Preprocessing, device: torch.device
                 ) -> tuple[torch.Tensor, list[int]]:
    """Decode the encoded items of a batch on ``device`` (nvJPEG on CUDA) and return the whole batch as
    one ``uint8`` (N, 3, crop, crop) tensor there, with the positions of items that failed to decode.

    Items already decoded on the CPU are moved as they are. A failed item is left out of the tensor.
    """
    batch, errors = _decode_batch(items, preprocessing, device)
    return batch, sorted(errors)


def _decode_batch(items: list[torch.Tensor], preprocessing: Preprocessing, device: torch.device
                  ) -> tuple[torch.Tensor, dict[int, ImageDecodeError]]:
    """:func:`decode_batch`, with Pillow's reason for each item that failed (``truncated``, ...)."""
    import torch

    encoded = [i for i, item in enumerate(items) if is_encoded(item)]
    decoded: dict[int, torch.Tensor] = {}
    failed: dict[int, ImageDecodeError] = {}
    if encoded:
        data = [items[i] for i in encoded]
        try:
            images: list[torch.Tensor | None] = list(_decode_jpeg(data, device))
        except RuntimeError:  # one bad file fails the whole call: decode one by one to find it
            images = []
            for item in data:
                try:
                    images.append(_decode_jpeg([item], device)[0])
                except RuntimeError:
                    images.append(None)
        for i, image in zip(encoded, images):
            if image is None:  # refused by the device decoder: Pillow on the CPU, with its guards, may read it
                try:
                    decoded[i] = preprocessing.load(items[i].cpu().numpy().tobytes()).to(device)
                except ImageDecodeError as exc:
                    failed[i] = exc
            else:
                decoded[i] = resize_and_crop(image, preprocessing)
    out = []
    for i, item in enumerate(items):
        if i in decoded:
            out.append(decoded[i])
        elif not is_encoded(item):
            out.append(item.to(device, non_blocking=True))
    crop = preprocessing.crop_size
    batch = torch.stack(out) if out else torch.zeros(0, 3, crop, crop, dtype=torch.uint8, device=device)
    return batch, failed


def _decode_jpeg(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """``torchvision.io.decode_jpeg`` on a list, in RGB, upright (EXIF orientation applied)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs for TorchCodec; they still work
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    return list(images)


#: ``decode`` values: ``auto`` (on the device when the model runs on CUDA), ``cpu`` (Pillow in the loader),
#: ``device`` (file bytes from the loader, decoded by :func:`decode_batch` on the model's device).
DECODE_CHOICES = ("auto", "cpu", "device")


def use_device_decode(requested: str, device: torch.device) -> bool:
    """Whether a run on ``device`` decodes JPEGs there (``auto``: on CUDA, when torchvision can)."""
    if requested not in DECODE_CHOICES:
        from cnnlab.errors import UsageError

        raise UsageError(f"unknown decode {requested!r}; use {', '.join(DECODE_CHOICES)}")
    if requested == "auto":
        return device.type == "cuda" and _has_device_decoder()
    return requested == "device"


def decode_label(device_decode: bool, device: torch.device) -> str:
    """What a report calls the path: ``nvjpeg`` (decoded on the GPU) or ``cpu``."""
    return "nvjpeg" if device_decode and device.type == "cuda" else "cpu"


def _has_device_decoder() -> bool:
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def collate_encoded(items: list[tuple[int, torch.Tensor | None, str, str]]) -> Batch:
    """DataLoader ``collate_fn`` of the device path: the items as they are (1-D file bytes or decoded
    images of different sizes cannot be stacked), in ``Batch.encoded``; failures apart."""
    from cnnlab.runtime.batches import Batch

    good = [(i, t) for i, t, _, _ in items if t is not None]
    failed = [(i, reason, detail) for i, t, reason, detail in items if t is None]
    return Batch([i for i, _ in good], None, failed, encoded=[t for _, t in good])


def decode_loader_batch(batch: Batch, preprocessing: Preprocessing, device: torch.device) -> Batch:
    """A :func:`collate_encoded` batch decoded on ``device`` into a stacked ``uint8`` batch there
    (files neither the device decoder nor Pillow reads become failures)."""
    from cnnlab.runtime.batches import Batch

    items = batch.encoded or []
    images, bad = _decode_batch(items, preprocessing, device)
    indices = [index for k, index in enumerate(batch.indices) if k not in bad]
    # the reason Pillow gives (``truncated``, ...), as the CPU path reports it
    failed = [*batch.failed, *((batch.indices[k], exc.reason, f"{exc} (refused by the {device.type} JPEG decoder too)")
                               for k, exc in sorted(bad.items()))]
    return Batch(indices, images if indices else None, failed)
