"""The GPU data path's decode/resize/crop, run on the CPU device: same batch shape, close pixels, same top-1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.errors import ImageDecodeError
from cnnlab.models.registry import get_spec
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy
from cnnlab.runtime.gpu_decode import JpegBytes, decode_batch, is_encoded
from tests.helpers.images import make_image


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
    paths = [*jpegs, png]
    transform = JpegBytes(pp)
    with pytest.raises(ImageDecodeError, match="truncated"):  # its header is unreadable: the CPU path says why
        transform.load(broken)
    items = [transform.load(p) for p in paths]
    assert [is_encoded(i) for i in items] == [True] * len(jpegs) + [False]
    items.append(torch.frombuffer(bytearray(broken.read_bytes()), dtype=torch.uint8))  # as if it had passed
    batch, failed = decode_batch(items, pp, torch.device("cpu"))
    assert failed == [len(paths)]  # neither decoder reads it
    assert batch.shape == (len(paths), 3, pp.crop_size, pp.crop_size) and batch.dtype == torch.uint8
    reference = torch.stack([pp.load(p, fast_decode=False) for p in paths])
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


def test_inference_through_the_device_path_on_the_cpu(tmp_path: Path, real_photos: dict[str, Path]) -> None:
    """run_inference(decode="device"): the loader yields file bytes, decode_batch decodes them on the
    model's device (the CPU here: the plumbing nvJPEG uses on CUDA), failures stay failures."""
    from cnnlab.models.load import load_torch
    from cnnlab.runtime.inference import run_inference

    model = load_torch("efficientnet_lite0", RuntimeOptions(device="cpu"))
    paths = []
    for name, path in real_photos.items():
        target = tmp_path / f"{name}.jpg"
        Image.open(path).convert("RGB").save(target, quality=92)
        paths.append(target)
    paths.append(make_image(tmp_path / "small.png", (300, 200)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[0].read_bytes()[:600])
    paths.append(broken)

    def top1(decode: str) -> tuple[dict[int, int], list[tuple[str, str]]]:
        found: dict[int, int] = {}
        skipped = []
        for batch in run_inference(model, paths, batch_size=3, workers=0, decode=decode):
            found.update(zip(batch.indices, batch.logits.argmax(1).tolist()))
            skipped.extend((Path(s.path).name, s.reason) for s in batch.skipped)
        return found, skipped

    cpu, cpu_skipped = top1("cpu")
    device, device_skipped = top1("device")
    assert sorted(device) == sorted(cpu) == list(range(len(paths) - 1))
    assert device == cpu  # the same top-1 class for every image
    assert [n for n, _ in cpu_skipped] == [n for n, _ in device_skipped] == ["broken.jpg"]


def test_bench_reports_its_decode_path(tmp_path: Path) -> None:
    from cnnlab.bench import BenchConfig, MeasureOptions, bench_models
    from cnnlab.imagedata.demo import build_demo_set

    data = build_demo_set(tmp_path / "demo")
    fast = dict(latency_repeats=3, throughput_repeats=3, warmup=1, batch_size=4, workers=0)
    runs = {}
    for decode in ("auto", "device"):
        result = bench_models(BenchConfig(data=data, models=["efficientnet_lite0"], isolate=False,
                                          measure=MeasureOptions(device="cpu", decode=decode, **fast)))
        (runs[decode],) = result.models
    assert runs["auto"].flat()["decode"] == "cpu"  # a CPU run keeps Pillow's path
    assert runs["device"].flat()["decode"] == "cpu"  # the device path on a CPU device decodes on the CPU
    a, b = runs["auto"], runs["device"]
    assert a.run.eval_images == b.run.eval_images == 9
    assert a.predictions is not None and b.predictions is not None
    # Pillow's reduced-scale JPEG decoding (the default) against a full decode and a float resize: a
    # near-tie (Grace Hopper: mortarboard 0.251 / military uniform 0.248) may swap; top-5 keeps both
    same = a.predictions["topk"][:, 0] == b.predictions["topk"][:, 0]
    assert same.sum() >= len(same) - 1
    assert all(x[0] in y for x, y in zip(a.predictions["topk"], b.predictions["topk"]))


def test_jpegs_the_device_path_should_not_take_go_through_the_cpu_guards(tmp_path: Path) -> None:
    """CMYK, strips past 4:1 and squash preprocessing are decoded on the CPU (with its cut and bomb
    checks); a FIFO is refused at once instead of blocking the loader."""
    import dataclasses
    import os

    pp = get_spec("resnet18").preprocessing
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (300, 200), (0, 200, 200, 0)).save(cmyk)
    strip = tmp_path / "strip.jpg"
    Image.new("RGB", (4000, 10), (10, 200, 10)).save(strip)
    ordinary = tmp_path / "ordinary.jpg"
    Image.new("RGB", (300, 200), (10, 10, 200)).save(ordinary)
    transform = JpegBytes(pp)
    assert [is_encoded(transform.load(p)) for p in (cmyk, strip, ordinary)] == [False, False, True]
    strip_item = transform.load(strip)
    assert strip_item.shape == (3, pp.crop_size, pp.crop_size)  # the CPU path's cut, then its crop
    squash = dataclasses.replace(pp, crop_mode="squash")
    assert not is_encoded(JpegBytes(squash).load(ordinary))
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageDecodeError):
        transform.load(fifo)


def test_a_jpeg_the_device_decoder_refuses_is_read_by_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.runtime import gpu_decode

    pp = get_spec("resnet18").preprocessing
    good, odd = tmp_path / "good.jpg", tmp_path / "odd.jpg"
    Image.new("RGB", (300, 200), (200, 10, 10)).save(good)
    Image.new("RGB", (300, 200), (10, 10, 200)).save(odd)
    items = [JpegBytes(pp).load(p) for p in (good, odd)]
    real = gpu_decode._decode_jpeg

    def picky(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        if any(torch.equal(d, items[1]) for d in data):
            raise RuntimeError("nvjpeg: unsupported JPEG")
        return real(data, device)

    monkeypatch.setattr(gpu_decode, "_decode_jpeg", picky)
    batch, failed = decode_batch(items, pp, torch.device("cpu"))
    assert failed == [] and batch.shape[0] == 2
    assert int(batch[1, 2].float().mean()) > 150 and int(batch[1, 0].float().mean()) < 50  # the blue one


def test_device_path_gives_the_cpu_paths_reason_for_a_broken_jpeg(tmp_path: Path) -> None:
    """A JPEG cut in half is skipped as ``truncated`` by both paths (not a vaguer ``undecodable`` on the device)."""
    from cnnlab.models.load import load_torch
    from cnnlab.runtime.inference import run_inference

    model = load_torch(ModelSource(name="mobilenet_v3_small", policy=WeightsPolicy.RANDOM), RuntimeOptions(device="cpu"))
    good = tmp_path / "good.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(good, quality=75)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    def skipped(decode: str) -> list[tuple[str, str]]:
        found = []
        for batch in run_inference(model, [good, cut], batch_size=2, workers=0, decode=decode):
            found.extend((Path(s.path).name, s.reason) for s in batch.skipped)
        return found

    assert skipped("device") == skipped("cpu") == [("cut.jpg", "truncated")]
