#!/usr/bin/env python3
"""Generate ``src/cnnlab/data/timm_models.json``: timm's ImageNet-1k classifiers for cnnlab's registry.

Run once after upgrading timm or the results tables below; ``--check`` regenerates the data in
memory and exits non-zero if the committed file holds different data::

    python scripts/generate_timm_zoo.py            # write the file (about 3 minutes: parameters are counted)
    python scripts/generate_timm_zoo.py --check    # verify it

Inputs:

* The installed timm package: every pretrained tag (``timm.list_pretrained()``), its
  ``pretrained_cfg`` (input size, crop_pct, crop mode, interpolation, mean, std, license, Hugging
  Face hub id or download URL) and its architecture, built on the ``meta`` device to count the
  parameters exactly (no memory, no weights).
* timm's published ImageNet-1k validation results, ``results/results-imagenet.csv`` of the timm
  repository (top-1 and top-5 per tag), and its inference benchmark
  ``results/benchmark-infer-amp-nchw-pt291-cu128-4090.csv`` (GMACs per architecture at one image
  size, used only where that size is the tag's input size). Copies of both, from timm commit
  ``aa4b5850c1543fa488abf260f18390eda46cf85d`` (Apache-2.0), are in ``scripts/data/timm/``.

Only tags whose classifier predicts the 1000 ImageNet-1k classes are registered (timm's
``infer_imagenet_subset``): cnnlab maps the user's folders onto those classes. The others
(ImageNet-21k/22k/12k heads, feature extractors and CLIP image towers) and the tags without
weights (``untrained``) are counted in ``left_out``. The 1000 class names are those of ``imagenet_hierarchy.json``.

Output (schema 1; JSON with sorted keys, compact, one trailing newline): ``schema``, ``sources``
(timm version, sha256 of the two tables), ``left_out`` (reason -> count), ``columns`` and
``models``: one row per tag, values in the order of ``columns``:

* ``name``: timm's ``arch.tag``; ``default``: the architecture's first ImageNet-1k tag in timm's
  order (timm's own default when that one classifies ImageNet-1k);
* ``hf_hub_id`` (or ``None``) and ``url`` (the download URL of tags without a hub id, else ``None``);
* ``params``; ``gmacs`` (or ``None``); ``acc1``/``acc5`` (percent, or ``None`` when timm publishes none);
* ``input``, ``resize`` (``floor(input / crop_pct)``, as timm's eval transform), ``crop_mode``
  (``center`` or ``squash``), ``interpolation``, ``mean``, ``std``; ``license``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "src" / "cnnlab" / "models" / "timm_models.json"
RESULTS_DIR = ROOT / "scripts" / "data" / "timm"
RESULTS_FILE = "results-imagenet.csv"
BENCHMARK_FILE = "benchmark-infer-amp-nchw-pt291-cu128-4090.csv"
COLUMNS = ("name", "default", "hf_hub_id", "url", "params", "gmacs", "acc1", "acc5", "input", "resize",
           "crop_mode", "interpolation", "mean", "std", "license")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_results(results_dir: Path) -> tuple[dict[str, tuple[float, float]], dict[tuple[str, int], float]]:
    """``{tag name: (top1, top5)}`` and ``{(arch, image size): GMACs}`` from timm's tables."""
    with (results_dir / RESULTS_FILE).open(encoding="utf-8", newline="") as fh:
        accuracy = {row["model"]: (float(row["top1"]), float(row["top5"])) for row in csv.DictReader(fh)}
    with (results_dir / BENCHMARK_FILE).open(encoding="utf-8", newline="") as fh:
        gmacs = {(row["model"], int(row["infer_img_size"])): float(row["infer_gmacs"]) for row in csv.DictReader(fh)
                 if row.get("infer_gmacs")}
    return accuracy, gmacs


def count_params(name: str, cache: dict[tuple[str, int], int], size: int) -> int:
    """Parameters of ``name`` (built on the meta device: shapes only)."""
    import timm
    import torch

    arch = name.split(".", 1)[0]
    key = (arch, size)
    if key not in cache:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
        cache[key] = sum(p.numel() for p in model.parameters())
    return cache[key]


def classifier_tags() -> tuple[list[Any], dict[str, int]]:
    """The pretrained configs of ImageNet-1k classifiers, in timm's order per architecture, and what was left out."""
    from timm.data import infer_imagenet_subset
    from timm.models import get_arch_pretrained_cfgs, list_pretrained

    kept, left_out = [], {"no weights published": 0, "not an ImageNet-1k classifier": 0, "square input only": 0}
    for arch in sorted({name.split(".", 1)[0] for name in list_pretrained()}):
        for cfg in get_arch_pretrained_cfgs(arch).values():
            if not (cfg.hf_hub_id or cfg.url):
                left_out["no weights published"] += 1
            elif cfg.num_classes != 1000 or infer_imagenet_subset(cfg.to_dict()) != "imagenet-1k":
                left_out["not an ImageNet-1k classifier"] += 1
            elif cfg.input_size[1] != cfg.input_size[2]:
                left_out["square input only"] += 1
            else:
                kept.append(cfg)
    return kept, left_out


def build(results_dir: Path = RESULTS_DIR, progress: bool = False) -> dict[str, Any]:
    """Build the whole JSON document in memory."""
    import timm

    accuracy, gmacs_table = read_results(results_dir)
    configs, left_out = classifier_tags()
    rows, seen_archs, params_cache = [], set(), {}
    for i, cfg in enumerate(configs):
        name = f"{cfg.architecture}.{cfg.tag}"
        size = int(cfg.input_size[1])
        if progress and i % 100 == 0:
            print(f"{i}/{len(configs)} {name}", file=sys.stderr)
        acc = accuracy.get(name)
        rows.append([
            name,
            cfg.architecture not in seen_archs,
            cfg.hf_hub_id or None,
            None if cfg.hf_hub_id else cfg.url,
            count_params(name, params_cache, size),
            gmacs_table.get((cfg.architecture, size)),
            acc[0] if acc else None,
            acc[1] if acc else None,
            size,
            math.floor(size / cfg.crop_pct),
            cfg.crop_mode,
            cfg.interpolation,
            [float(v) for v in cfg.mean],
            [float(v) for v in cfg.std],
            cfg.license or "unknown",
        ])
        seen_archs.add(cfg.architecture)
    return {
        "schema": SCHEMA_VERSION,
        "sources": {
            "timm": timm.__version__,
            RESULTS_FILE: sha256(results_dir / RESULTS_FILE),
            BENCHMARK_FILE: sha256(results_dir / BENCHMARK_FILE),
        },
        "left_out": left_out,
        "columns": list(COLUMNS),
        "models": rows,
    }


def render(document: dict[str, Any]) -> str:
    """Deterministic, compact JSON text, one model per line (readable diffs)."""
    head = {k: v for k, v in document.items() if k != "models"}
    text = json.dumps(head, sort_keys=True, separators=(",", ":"))[:-1]
    lines = [json.dumps(row, separators=(",", ":")) for row in document["models"]]
    return text + ',"models":[\n' + ",\n".join(lines) + "\n]}\n"


def check(path: Path = OUTPUT, results_dir: Path = RESULTS_DIR) -> list[str]:
    """Differences between the file at ``path`` and a fresh build; empty if it is up to date."""
    if not path.is_file():
        return [f"{path} does not exist"]
    committed = json.loads(path.read_text(encoding="utf-8"))
    fresh = json.loads(render(build(results_dir)))
    problems = [f"{key!r} differs" for key in sorted(set(committed) | set(fresh))
                if key != "models" and committed.get(key) != fresh.get(key)]
    old = {row[0]: row for row in committed.get("models", [])}
    new = {row[0]: row for row in fresh["models"]}
    problems += [f"model {n} is new" for n in sorted(set(new) - set(old))][:20]
    problems += [f"model {n} is gone" for n in sorted(set(old) - set(new))][:20]
    problems += [f"model {n} differs" for n in sorted(set(old) & set(new)) if old[n] != new[n]][:20]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the committed file, write nothing")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="folder with timm's two CSV tables")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)

    if args.check:
        problems = check(args.output, args.results_dir)
        for problem in problems:
            print(f"out of date: {problem}", file=sys.stderr)
        if not problems:
            print(f"{args.output} is up to date")
        return 1 if problems else 0

    text = render(build(args.results_dir, progress=True))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
