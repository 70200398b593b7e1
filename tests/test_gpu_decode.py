"""The GPU data path's decode/resize/crop, run on the CPU device: same batch shape, close pixels, same top-1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab.gpu_decode import JpegBytes, decode_batch, is_encoded
from cnnlab.zoo import get_spec
from tests.conftest import make_image


def test_mixed_batch_decodes_like_the_cpu_path(tmp_path: Path, real_photos: dict[str, Path]) -> None:
    spec = get_spec("efficientnet_lite0")
    pp = spec.preprocessing
    jpegs = []
    for name, path in real_photos.items():
        target = tmp_path / f"{name}.jpg"
        Image.open(path).convert("RGB").save(target, quality=92)
        jpegs.append(target)
    png = make_image(tmp_path / "small.png", (300, 200))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpegs[0].read_bytes()[:600])  # a JPEG header, then nothing
    paths = [*jpegs, png, broken]
    transform = JpegBytes(pp)
    items = [transform.load(p) for p in paths]
    assert [is_encoded(i) for i in items] == [True] * len(jpegs) + [False, True]
    batch, failed = decode_batch(items, pp, torch.device("cpu"))
    assert failed == [len(paths) - 1]
    assert batch.shape == (len(paths) - 1, 3, pp.crop_size, pp.crop_size) and batch.dtype == torch.uint8
    reference = torch.stack([pp.load(p, fast_decode=False) for p in paths[:-1]])
    difference = (batch.float() - reference.float()).abs()
    assert difference.mean() < 1.0  # pixel levels (of 255): antialiased float resize vs Pillow's
    assert torch.equal(batch[-1], reference[-1])  # the PNG went through the CPU path unchanged


@pytest.mark.parametrize("size", [(40, 30), (500, 60)])
def test_small_and_thin_images_still_give_a_full_crop(tmp_path: Path, size: tuple[int, int]) -> None:
    pp = get_spec("resnet18").preprocessing
    path = tmp_path / "x.jpg"
    Image.new("RGB", size, (200, 10, 10)).save(path)
    batch, failed = decode_batch([JpegBytes(pp).load(path)], pp, torch.device("cpu"))
    assert failed == [] and batch.shape == (1, 3, pp.crop_size, pp.crop_size)
    assert abs(int(batch[0, 0].float().mean()) - 200) <= 2
