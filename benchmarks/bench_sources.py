"""The same images as a class-folder tree, a saved Hugging Face dataset, Parquet and WebDataset shards: identical
predictions, and the images/s and peak memory of each format, in one run.

Builds ``--images`` JPEGs (500x375, random crops of the photos that ship with scikit-image, in ``--classes``
classes), writes them in the four formats, then scores each format in a fresh process (so that every peak RSS
is its own): :func:`cnnlab.imagedata.datasets.scan_dataset` (for records: reading the labels and indexing the
containers), then :func:`cnnlab.runtime.inference.run_inference` over every image. Prints, per format, the scan
seconds, images/s of the inference pass, peak RSS of the process and of its largest DataLoader worker, and
whether its probabilities are identical to the folder's (the largest difference, and the top-5 agreement).
The model is ``efficientnet_lite0`` with its real ImageNet weights (the offline model) unless ``--random-weights``.

    .venv/bin/python benchmarks/bench_sources.py --images 1000 [--workers 1] [--batch-size 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, resource, sys, time
import numpy as np
import torch
from cnnlab.imagedata.datasets import scan_dataset
from cnnlab.models.registry import OFFLINE_MODEL
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy
from cnnlab.runtime.inference import run_inference
from cnnlab.runtime.loader import load_model

source, out, workers, batch, device, random_weights = sys.argv[1:7]
t0 = time.perf_counter()
data = scan_dataset(source)
scan_s = time.perf_counter() - t0
policy = WeightsPolicy.RANDOM if random_weights == "1" else WeightsPolicy.PRETRAINED
model = load_model(ModelSource(name=OFFLINE_MODEL, policy=policy), RuntimeOptions(device=device))
probs = np.zeros((len(data), model.spec.num_classes), dtype=np.float32)
skipped = 0
t0 = time.perf_counter()
for b in run_inference(model, data.paths, batch_size=int(batch), workers=int(workers)):
    probs[b.indices] = torch.softmax(b.logits.float(), 1).numpy()
    skipped += len(b.skipped)
run_s = time.perf_counter() - t0
np.save(out, probs)
usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"images": len(data), "classes": len(data.classes), "targets": data.targets, "skipped": skipped,
                  "scan_s": scan_s, "images_per_s": len(data) / run_s, "peak_rss_mib": usage.ru_maxrss / 1024,
                  "worker_peak_rss_mib": children.ru_maxrss / 1024, "first": str(data.paths[0])}))
"""

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "brick.png",
          "hubble_deep_field.jpg", "immunohistochemistry.png", "retina.jpg", "color.png"]


def make_images(count: int, classes: int, seed: int = 0) -> list[tuple[int, bytes]]:
    """``count`` (class, JPEG bytes) pairs, class-major (the order a class-folder tree lists them in)."""
    import io

    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    photos = [Image.open(data / name).convert("RGB") for name in PHOTOS if (data / name).exists()]
    rng = random.Random(seed)
    out = []
    for i in range(count):
        img = photos[rng.randrange(len(photos))]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
        buffer = io.BytesIO()
        img.crop((x, y, x + cw, y + ch)).resize((500, 375)).save(buffer, "JPEG", quality=90)
        out.append((i * classes // count, buffer.getvalue()))
    return out


def write_formats(root: Path, images: list[tuple[int, bytes]], classes: int, shard_size: int) -> dict[str, str]:
    import datasets
    import webdataset as wds

    names = [f"class{c:02d}" for c in range(classes)]
    for i, (c, data) in enumerate(images):
        path = root / "folder" / names[c] / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})

    def rows():  # a generator: the dataset is written as it is made, never held whole
        for i, (c, data) in enumerate(images):
            yield {"image": {"bytes": data, "path": f"{i:06d}.jpg"}, "label": c}

    ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(root / "hf-cache"))
    ds.save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    ds.to_parquet(str(root / "parquet" / "set.parquet"))
    (root / "shards").mkdir()
    for start in range(0, len(images), shard_size):
        with wds.TarWriter(str(root / "shards" / f"set-{start // shard_size:06d}.tar")) as sink:
            for i in range(start, min(start + shard_size, len(images))):
                sink.write({"__key__": f"{i:06d}", "jpg": images[i][1], "cls": images[i][0]})
    (root / "shards" / "classes.txt").write_text("\n".join(names) + "\n")
    last = (len(images) - 1) // shard_size
    return {"folder": str(root / "folder"), "hf saved": str(root / "saved"), "parquet": str(root / "parquet"),
            "shards": str(root / "shards" / f"set-{{000000..{last:06d}}}.tar")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="Build the formats here and keep them.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sources-") as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        sources = write_formats(root, make_images(args.images, args.classes), args.classes, args.shard_size)
        print(f"{args.images:,} images (500x375 JPEG) in {args.classes} classes written in 4 formats in "
              f"{time.perf_counter() - t0:.0f} s; model efficientnet_lite0 "
              f"({'random' if args.random_weights else 'ImageNet'} weights), {args.device}, batch {args.batch_size}, "
              f"{args.workers} loader worker(s), {os.cpu_count()} cores")
        results, probs = {}, {}
        for name, source in sources.items():
            out = root / f"probs-{name.replace(' ', '-')}.npy"
            env = {**os.environ, "HF_DATASETS_CACHE": str(root / "hf-cache")}
            done = subprocess.run([sys.executable, "-c", _CHILD, source, str(out), str(args.workers),
                                   str(args.batch_size), args.device, "1" if args.random_weights else "0"],
                                  capture_output=True, text=True, env=env)
            if done.returncode != 0:
                print(f"{name}: failed\n{done.stderr[-3000:]}")
                return 1
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            probs[name] = np.load(out)
        ref, ref_top = probs["folder"], np.argsort(-probs["folder"], 1)[:, :5]
        print(f"{'format':<10} {'images':>7} {'scan s':>7} {'img/s':>7} {'vs folder':>9} {'RSS MiB':>8} "
              f"{'worker MiB':>10} {'max |dp|':>9} {'top-5 same':>10}  first record")
        for name, r in results.items():
            same_labels = r["targets"] == results["folder"]["targets"]
            diff = float(np.abs(probs[name] - ref).max()) if probs[name].shape == ref.shape else float("nan")
            top_same = float((np.argsort(-probs[name], 1)[:, :5] == ref_top).all(1).mean()) if same_labels else 0.0
            print(f"{name:<10} {r['images']:>7,} {r['scan_s']:>7.2f} {r['images_per_s']:>7.1f} "
                  f"{r['images_per_s'] / results['folder']['images_per_s']:>9.2f} {r['peak_rss_mib']:>8.0f} "
                  f"{r['worker_peak_rss_mib']:>10.0f} {diff:>9.2g} {top_same:>10.1%}  {r['first']}"
                  + ("" if same_labels else "  LABELS DIFFER"))
        identical = all(np.array_equal(p, ref) for p in probs.values())
        print(f"probabilities identical in every format: {'yes' if identical else 'NO'}")
        return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
