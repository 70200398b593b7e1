"""ResNet-50 end to end from JPEG folders: JPEGs decoded on the CPU (Pillow, in loader workers) vs on the
GPU (nvJPEG: the loader only reads bytes; :mod:`cnnlab.runtime.gpu_decode`) vs the model alone.

Random weights (speed only: nothing here is an accuracy). Two folders are generated: 500x375 and
1600x1200 photo-like JPEGs. Prints images/s of each path and the ratios, and writes them as JSON.
Sized to finish in a few minutes on one H200 (``--small``/``--large`` set the image counts).

    python benchmarks/gpu_decode_check.py [--device cuda] [--small 2000] [--large 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import make_jpegs

from cnnlab.models.load import load_torch
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy
from cnnlab.runtime.cores import default_workers
from cnnlab.runtime.inference import run_inference


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def end_to_end(model, paths: list[Path], decode: str, batch_size: int, workers: int) -> float:  # type: ignore[no-untyped-def]
    """Images/s over ``paths`` (after one warm-up batch's worth of files)."""
    for _ in run_inference(model, paths[:batch_size], batch_size=batch_size, workers=0, decode=decode):
        pass
    _sync(model.device)
    t0 = time.perf_counter()
    done = 0
    for batch in run_inference(model, paths, batch_size=batch_size, workers=workers, decode=decode):
        done += len(batch.indices)
    _sync(model.device)
    return done / (time.perf_counter() - t0)


def model_only(model, batch_size: int, repeats: int = 20) -> float:  # type: ignore[no-untyped-def]
    crop = model.preprocessing.crop_size
    batch = torch.randint(0, 256, (batch_size, 3, crop, crop), dtype=torch.uint8, device=model.device)
    with torch.inference_mode():
        for _ in range(3):
            model(batch)
        _sync(model.device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(batch)
        _sync(model.device)
    return batch_size * repeats / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", type=int, default=2000, help="500x375 JPEGs")
    parser.add_argument("--large", type=int, default=500, help="1600x1200 JPEGs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--folder", default="/tmp/cnnlab-decode-check")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    workers = default_workers(device.type) if args.workers is None else args.workers
    print(f"resnet50 with RANDOM weights (speed only), {args.precision}, channels_last, batch {args.batch_size}, "
          f"{workers} loader workers, on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""), flush=True)
    model = load_torch(ModelSource(name="resnet50", policy=WeightsPolicy.RANDOM),
                       RuntimeOptions(device=str(device), precision=args.precision, channels_last=True))
    folders = {"500x375": (Path(args.folder) / "small", args.small, (500, 375)),
               "1600x1200": (Path(args.folder) / "large", args.large, (1600, 1200))}
    rows = {}
    alone = model_only(model, args.batch_size)
    print(f"model only: {alone:,.0f} img/s", flush=True)
    for name, (folder, count, size) in folders.items():
        if count <= 0:
            continue
        if len(list(folder.glob("*/*.jpg"))) < count:
            make_jpegs(folder, count, size, "photo", seed=0)
        paths = sorted(folder.glob("*/*.jpg"))[:count]
        cpu = end_to_end(model, paths, "cpu", args.batch_size, workers)
        gpu = end_to_end(model, paths, "device", args.batch_size, workers)
        rows[name] = {"images": len(paths), "cpu_decode_ips": cpu, "device_decode_ips": gpu, "model_only_ips": alone,
                      "device_over_cpu": gpu / cpu, "cpu_over_model": cpu / alone, "device_over_model": gpu / alone}
        print(f"{name}: {len(paths)} images; CPU decode {cpu:,.0f} img/s, "
              f"{'nvJPEG' if device.type == 'cuda' else 'device'} decode {gpu:,.0f} img/s "
              f"({gpu / cpu:.2f}x), model only {alone:,.0f} img/s "
              f"(end to end reaches {cpu / alone:.0%} / {gpu / alone:.0%} of it)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"random_weights": True, "device": str(device), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
