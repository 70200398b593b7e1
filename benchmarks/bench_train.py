"""Time per training epoch of `cnnlab train`, for a small model and for resnet50.

Usage::

    .venv/bin/python benchmarks/bench_train.py [--images 64] [--size 224] [--batch-size 16]
        [--models efficientnet_lite0,resnet50] [--device cpu] [--workers N]

It writes ``--images`` generated photos-like images (smooth colour fields with noise, 4 classes,
``--size`` pixels square) to a temporary folder and runs one head-only epoch and one full
epoch of each model at its own input size (224 px for both defaults), with an 80/20 train/val
split. An epoch's time includes its validation pass. efficientnet_lite0 starts from its real
ImageNet weights; models whose weights are not on disk start from random weights, which has no
effect on speed (the table says which). Accuracy on this synthetic set means nothing and is not
shown: see the tests for accuracies on learnable data.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.errors import WeightsNotFoundError
from cnnlab.finetune import TrainConfig, TrainResult, fine_tune
from cnnlab.weights import locate_weights
from cnnlab.zoo import get_spec


def make_images(root: Path, count: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d"]
    for i in range(count):
        label = classes[i % len(classes)]
        base = rng.uniform(0, 255, (4, 4, 3))
        field = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC))
        noise = rng.normal(0, 12, (size, size, 3))
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8)).save(root / label / f"{i}.jpg", quality=90)
    return root


def run_one(model: str, data: Path, out: Path, args: argparse.Namespace) -> tuple[TrainResult, bool]:
    spec = get_spec(model)
    random_weights = args.random_weights or locate_weights(spec).found is None
    config = TrainConfig(
        data=str(data), out=str(out), model=model, epochs=1, freeze_epochs=1, batch_size=args.batch_size,
        device=args.device, workers=args.workers, random_weights=random_weights, patience=None,
    )
    try:
        return fine_tune(config), random_weights
    except WeightsNotFoundError:
        config.random_weights = True
        return fine_tune(config), True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="generated images in all (80%% train, 20%% val)")
    parser.add_argument("--size", type=int, default=256, help="side of the generated images in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models", default="efficientnet_lite0,resnet50")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: cnnlab.inference.default_workers)")
    parser.add_argument("--random-weights", action="store_true", help="random weights for every model")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-train-") as tmp:
        data = make_images(Path(tmp) / "data", args.images, args.size)
        for i, model in enumerate(m.strip() for m in args.models.split(",") if m.strip()):
            started = time.perf_counter()
            result, random_weights = run_one(model, data, Path(tmp) / f"run{i}", args)
            crop = get_spec(model).preprocessing.crop_size
            head, full = result.seconds_per_epoch("head"), result.seconds_per_epoch("full")
            assert head is not None and full is not None  # one epoch of each phase was run
            rows.append((
                result.arch, "random" if random_weights else "pretrained", f"{result.n_train}+{result.n_val}",
                f"{crop}x{crop}", str(args.batch_size), f"{head:.1f}", f"{full:.1f}",
                f"{result.n_train / full:.1f}", f"{time.perf_counter() - started:.0f}",
            ))
            print(f"  {model}: head epoch {head:.1f} s, full epoch {full:.1f} s", file=sys.stderr)
    header = ("model", "weights", "train+val images", "input", "batch", "head epoch s", "full epoch s",
              "full train img/s", "run s")
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))
    print("An epoch includes its validation pass. 'head': backbone frozen (forward only through it); "
          "'full': whole network trained. Random weights do not change the timing.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
