"""The CUDA path. Skipped on machines without a GPU (CI); run by benchmarks/gpu_check.sh on one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.bench import BenchConfig, MeasureOptions, bench_models
from cnnlab.bench.measure import MemoryMeter, time_repeated
from cnnlab.imagedata.demo import build_demo_set
from cnnlab.models.load import load_torch
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def test_timings_wait_for_the_gpu() -> None:
    """A kernel that spins ~50M cycles takes milliseconds; an unsynchronised clock would read microseconds."""
    timing = time_repeated(lambda: torch.cuda._sleep(50_000_000), CUDA, warmup=1, repeats=3)
    assert timing.median_s > 0.005


def test_cuda_matches_cpu_on_real_photos(real_photos: dict[str, Path]) -> None:
    paths = list(real_photos.values())
    cpu = load_torch("efficientnet_lite0", RuntimeOptions(device="cpu"))
    gpu = load_torch("efficientnet_lite0", RuntimeOptions(device="cuda"))
    bf16 = load_torch("efficientnet_lite0", RuntimeOptions(device="cuda", precision="bf16", channels_last=True))
    batch = torch.stack([cpu.preprocessing.load(p) for p in paths])
    with torch.inference_mode():
        a, b, c = cpu(batch), gpu(batch).cpu(), bf16(batch).cpu()
    pa, pb, pc = a.softmax(1), b.softmax(1), c.softmax(1)
    assert torch.allclose(pa, pb, atol=1e-3)
    # bf16 may swap near-ties (Grace Hopper: mortarboard 25% vs academic gown 25% in fp32), so
    # compare its top-1 only where fp32 has a clear margin, and its probabilities loosely.
    top2 = pa.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1
    assert clear.any()
    assert torch.equal(pa.argmax(1)[clear], pc.argmax(1)[clear])
    assert (pa - pc).abs().max() < 0.05


def test_memory_meter_sees_activations() -> None:
    model = load_torch(ModelSource(name="resnet50", policy=WeightsPolicy.RANDOM), RuntimeOptions(device="cuda"))
    weights_mib = torch.cuda.memory_allocated() / 2**20
    with MemoryMeter(CUDA) as meter, torch.inference_mode():
        model(torch.zeros(64, 3, 224, 224, dtype=torch.uint8, device=CUDA))
    assert meter.cuda_peak_allocated is not None and meter.cuda_peak_allocated > weights_mib + 100
    assert meter.cuda_peak_reserved >= meter.cuda_peak_allocated


def test_bench_on_cuda_in_subprocesses(tmp_path: Path) -> None:
    data = build_demo_set(tmp_path / "demo")
    measure = MeasureOptions(device="cuda", weights="random-if-missing", batch_size=8, latency_repeats=5,
                             throughput_repeats=5)
    result = bench_models(BenchConfig(data=data, models=["efficientnet_lite0", "resnet50"], measure=measure))
    lite, resnet = result.models
    assert lite.ok and resnet.ok, (lite.run.error, resnet.run.error)
    assert lite.accuracy is not None and lite.accuracy.summary.hits[1] == 7  # as on the CPU
    for m in (lite, resnet):
        assert m.run.device.startswith("cuda") and m.run.device_name
        assert m.run.cuda_peak_allocated_mib > m.run.cuda_weights_mib > 0
