"""The CUDA path. Skipped on machines without a GPU (CI); run by benchmarks/gpu_check.sh on one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.bench import BenchConfig, bench_models
from cnnlab.demo import build_demo_set
from cnnlab.measure import MemoryMeter, time_repeated
from cnnlab.models import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def test_timings_wait_for_the_gpu() -> None:
    """A kernel that spins ~50M cycles takes milliseconds; an unsynchronised clock would read microseconds."""
    timing = time_repeated(lambda: torch.cuda._sleep(50_000_000), CUDA, warmup=1, repeats=3)
    assert timing.median_s > 0.005


def test_cuda_matches_cpu_on_real_photos(real_photos: dict[str, Path]) -> None:
    paths = list(real_photos.values())
    cpu = load_model("efficientnet_lite0", device="cpu")
    gpu = load_model("efficientnet_lite0", device="cuda")
    bf16 = load_model("efficientnet_lite0", device="cuda", precision="bf16", channels_last=True)
    batch = torch.stack([cpu.preprocessing.load(p) for p in paths])
    with torch.inference_mode():
        a, b, c = cpu(batch), gpu(batch).cpu(), bf16(batch).cpu()
    assert torch.allclose(a.softmax(1), b.softmax(1), atol=1e-3)
    assert torch.equal(a.argmax(1), c.argmax(1))


def test_memory_meter_sees_activations() -> None:
    model = load_model("resnet50", random_weights=True, device="cuda")
    weights_mib = torch.cuda.memory_allocated() / 2**20
    with MemoryMeter(CUDA) as meter, torch.inference_mode():
        model(torch.zeros(64, 3, 224, 224, dtype=torch.uint8, device=CUDA))
    assert meter.cuda_peak_allocated is not None and meter.cuda_peak_allocated > weights_mib + 100
    assert meter.cuda_peak_reserved >= meter.cuda_peak_allocated


def test_bench_on_cuda_in_subprocesses(tmp_path: Path) -> None:
    data = build_demo_set(tmp_path / "demo")
    result = bench_models(BenchConfig(data=data, models=["efficientnet_lite0", "resnet50"], device="cuda",
                                      random_weights="missing", batch_size=8, progress=False,
                                      latency_repeats=5, throughput_repeats=5))
    lite, resnet = result.models
    assert lite.ok and resnet.ok, (lite.run.error, resnet.run.error)
    assert lite.accuracy is not None and lite.accuracy.summary.hits[1] == 7  # as on the CPU
    for m in (lite, resnet):
        assert m.run.device.startswith("cuda") and m.run.device_name
        assert m.run.cuda_peak_allocated_mib > m.run.cuda_weights_mib > 0
