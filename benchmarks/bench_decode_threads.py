"""Where a CPU model's images are decoded: threads taking turns with the model against loader processes beside it.

For each model and JPEG size, the same model object runs the whole folder through
``cnnlab.runtime.inference.run_inference`` three ways, interleaved round by round (the median is printed):

* ``threads`` -- ``workers=0`` on several cores (the default): each batch is decoded by threads of this process,
  on every core, then the model runs it on every core;
* ``1 process`` -- ``workers=1``: one DataLoader process decodes the next batches while the model runs (what
  ``--workers auto`` chose before when decoding was more than 12 % of the time per image);
* ``serial`` -- decode and model in one thread, taking turns (the loop without either).

And the model alone on decoded batches, for the ceiling. Random weights (speed does not depend on them); JPEGs
made from random noise upscaled (photographs' content does not change decode speed much; the sizes do).

    .venv/bin/python benchmarks/bench_decode_threads.py [--models alexnet,efficientnet_lite0] [--images 96]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cnnlab.runtime.threads import passive_openmp

passive_openmp()  # as the commands run models: set before torch starts its threads

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cnnlab.models.load import load_torch  # noqa: E402
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy  # noqa: E402
from cnnlab.runtime.base import Runtime  # noqa: E402
from cnnlab.runtime.batches import ImageFileDataset, collate  # noqa: E402
from cnnlab.runtime.cores import available_cores  # noqa: E402
from cnnlab.runtime.inference import run_inference  # noqa: E402


def make_jpegs(root: Path, n: int, width: int, height: int) -> list[Path]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        small = (rng.random((height // 16, width // 16, 3)) * 255).astype(np.uint8)
        path = root / f"{i:04d}.jpg"
        Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def images_per_s(run: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    run()
    return n / (time.perf_counter() - t0)


def compare(model: Runtime, paths: list[Path], step: int, rounds: int) -> dict[str, list[float]]:
    """Images/s of each way, ``rounds`` times, interleaved."""
    dataset = ImageFileDataset(paths, model.preprocessing)
    chunks = [range(s, min(s + step, len(paths))) for s in range(0, len(paths), step)]
    decoded = [collate([dataset[i] for i in chunk]).images for chunk in chunks]

    def loop(workers: int) -> Callable[[], None]:
        def run() -> None:
            for _ in run_inference(model, paths, batch_size=step, workers=workers):
                pass
        return run

    def serial() -> None:
        for chunk in chunks:
            batch = collate([dataset[i] for i in chunk])
            with torch.inference_mode():
                model(batch.images)

    def model_only() -> None:
        with torch.inference_mode():
            for batch in decoded:
                model(batch)

    ways = {"threads": loop(0), "1 process": loop(1), "serial": serial, "model only": model_only}
    model_only()  # warm-up: the first call at a shape builds its kernels
    figures: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(rounds):
        for way, run in ways.items():
            figures[way].append(images_per_s(run, len(paths)))
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="alexnet,resnet50,googlenet,mobilenet_v3_large,efficientnet_lite0")
    ap.add_argument("--sizes", default="500x375,1600x1200")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    print(f"{available_cores()} cores, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load at start "
          f"{os.getloadavg()[0]:.1f}, batch {a.batch_size}, random weights", flush=True)
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench-decode-threads-") as tmp:
        for size in a.sizes.split(","):
            width, height = map(int, size.split("x"))
            paths = make_jpegs(Path(tmp) / size, a.images, width, height)
            for name in a.models.split(","):
                model = load_torch(ModelSource(name=name, policy=WeightsPolicy.RANDOM),
                                   RuntimeOptions(device="cpu", fold_bn=True), progress=False)
                figures = compare(model, paths, a.batch_size, a.rounds)
                med = {way: statistics.median(v) for way, v in figures.items()}
                ratios.append(med["threads"] / med["1 process"])
                print(f"{name:20s} {size:10s} " + "  ".join(f"{way} {v:6.1f}" for way, v in med.items())
                      + f"  img/s; threads / 1 process {med['threads'] / med['1 process']:.2f}x,"
                        f" threads / serial {med['threads'] / med['serial']:.2f}x", flush=True)
    print(f"threads / 1 process: median {statistics.median(ratios):.2f}x, smallest {min(ratios):.2f}x; "
          f"load at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
