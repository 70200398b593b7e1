"""End-to-end images/s of `cnnlab bench` against the lab's plain loop, on the same JPEGs, in one run.

Builds a folder of JPEGs of two kinds (ImageNet-like 500x375 and camera-sized 1600x1200, cut from
real photos that ship with scikit-image), then for each model evaluates the whole folder twice:

* reference — how the lab did it: torchvision ``ImageFolder`` with the weights' own
  ``transforms()``, a default ``DataLoader`` (no workers) and ``model(x)`` under ``torch.no_grad``;
* cnnlab — ``bench_models`` (in-process, so both pay the same start-up): reduced-size JPEG decoding
  (``Image.draft``), workers matched to cores, uint8 transfer with normalisation on the device,
  ``inference_mode``, pinned memory and non-blocking copies on GPU.

Prints images/s for both and the ratio. Models without weights on this machine run with random
weights (said in the output): the speed figures are unaffected.

    python benchmarks/bench_pipeline.py --small 256 --large 64 --models efficientnet_lite0,mobilenet_v3_small
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from cnnlab.bench import BenchConfig, MeasureOptions, bench_models
from cnnlab.models.load import load_torch
from cnnlab.models.registry import get_spec
from cnnlab.models.weights import locate_weights
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy

SOURCES = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "brick.png"]


def make_jpegs(root: Path, count: int, size: tuple[int, int], label: str, seed: int) -> None:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    photos = [Image.open(data / name).convert("RGB") for name in SOURCES if (data / name).exists()]
    rng = random.Random(seed)
    folder = root / label
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"{label}_{i:04d}.jpg", quality=90)


def reference_loop(root: Path, model_name: str, device: torch.device, batch_size: int, random_weights: bool) -> float:
    """The lab's way; returns images/s over the whole folder (decode + preprocess + model)."""
    from torchvision.datasets import ImageFolder
    from torchvision.models import get_model_weights

    spec = get_spec(model_name)
    policy = WeightsPolicy.RANDOM if random_weights else WeightsPolicy.PRETRAINED
    loaded = load_torch(ModelSource(name=model_name, policy=policy),  # the lab's way: NCHW, batch norms kept
                        RuntimeOptions(device=device, channels_last=False, fold_bn=False))
    model = loaded.module
    if spec.source == "torchvision":
        transform = get_model_weights(spec.arch)[spec.weights_tag].transforms()
    else:  # same preprocessing numbers, torchvision transforms
        from torchvision import transforms as T

        pre = spec.preprocessing
        transform = T.Compose([T.Resize(pre.resize_size, T.InterpolationMode(pre.interpolation)),
                               T.CenterCrop(pre.crop_size), T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    loader = torch.utils.data.DataLoader(ImageFolder(str(root), transform=transform), batch_size=batch_size)
    n = 0
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            out = model(x.to(device))
            out.argmax(1).cpu()
            n += x.shape[0]
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=192, help="number of 500x375 JPEGs")
    parser.add_argument("--large", type=int, default=48, help="number of 1600x1200 JPEGs")
    parser.add_argument("--models", default="efficientnet_lite0,mobilenet_v3_small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for kind, count, size in (("500x375", args.small, (500, 375)), ("1600x1200", args.large, (1600, 1200))):
            if count:
                root = Path(tmp) / kind
                make_jpegs(root, count, size, "photo", seed=0)
                sets[kind] = root
        for name in [m for m in args.models.split(",") if m]:
            random_weights = locate_weights(get_spec(name)).found is None
            for kind, root in sets.items():
                ref = reference_loop(root, name, device, args.batch_size, random_weights)
                measure = MeasureOptions(
                    device=str(device), batch_size=args.batch_size, workers=args.workers, precision=args.precision,
                    channels_last=args.channels_last, weights="random" if random_weights else "pretrained",
                    warmup=1, latency_repeats=3, throughput_repeats=3)
                result = bench_models(BenchConfig(data=root, models=[name], measure=measure, isolate=False))
                run = result.models[0].run
                if run.error:
                    print(f"{name} {kind}: error {run.error}", file=sys.stderr)
                    continue
                ours = run.eval_images / run.eval_total_s
                rows.append((name + (" (random weights)" if random_weights else ""), kind, ref, ours,
                             ours / ref, run.eval_data_s, run.eval_model_s, run.throughput_ips, run.workers))
    header = f"{'model':40} {'images':>9} {'reference img/s':>16} {'cnnlab img/s':>13} {'ratio':>6} " \
             f"{'data s':>7} {'model s':>7} {'model-only img/s':>17} workers"
    print(header)
    for r in rows:
        print(f"{r[0]:40} {r[1]:>9} {r[2]:16.1f} {r[3]:13.1f} {r[4]:6.2f} {r[5]:7.2f} {r[6]:7.2f} {r[7]:17.1f} {r[8]:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
