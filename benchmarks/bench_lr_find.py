"""The learning-rate finder's suggestion against the best rate of a 5-point sweep, scored on held-out photos.

Usage::

    .venv/bin/python benchmarks/bench_lr_find.py --photos DIR [--sets animals,things] [--lrs 2e-4,...,2e-2]
        [--seeds 0] [--workdir DIR]

``--photos``: a clone of imagenet-sample-images (``benchmarks/photo_sets.py`` builds the sets from it;
its photos come from ImageNet, whose classes the pretrained backbone was trained on: said with the
figures). Per set: ``cnnlab.train.lr_find.find_lr`` with the defaults of ``cnnlab train`` (its suggestion,
its rule, every fastai rule's rate, its warning), then ``fine_tune`` with the defaults at each rate of the
sweep (log-spaced, ``--lrs``), scored on the set's held-out photos: accuracy, ties broken by the held-out
cross-entropy (32 held-out photos give accuracy steps of 3 %, so several rates often tie).

The sweep scores the fine-tuned network itself (``best.pt`` of the best epoch, not mixed with the probe:
the mix with the probe hides the rate's effect whenever it keeps the probe). The goal (issue 24): the
suggestion within 3x of the sweep's best rate, on every set.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_sets import CAVEAT, SETS, build_set, read_split

from cnnlab.train import TrainConfig, fine_tune
from cnnlab.train import session as train_session
from cnnlab.train.lr_find import LRFinderResult, apply_rules, find_lr
from cnnlab.train.mixing import MixScore, score_mixes

SWEEP = (2e-4, 6.3e-4, 2e-3, 6.3e-3, 2e-2)


def _tuned_only(probe: object, tuned: object, validate: object, grid: Sequence[float] = (1.0,),
                **options: Any) -> list[MixScore]:
    """score_mixes on the fine-tuned end alone: best.pt is the best epoch as it trained."""
    return score_mixes(probe, tuned, validate, grid=(1.0,), **options)  # type: ignore[arg-type]


def sweep_point(root: Path, out: Path, lr: float, seed: int) -> tuple[float, float]:
    """Held-out accuracy and loss of the fine-tuned network at ``lr`` (read back from a finished run in ``out``)."""
    if (out / "metrics.json").is_file():
        test = json.loads((out / "metrics.json").read_text())["test"]
        return float(test["top1"]), float(test["loss"])
    with contextlib.redirect_stdout(io.StringIO()):
        result = fine_tune(TrainConfig(data=str(root), out=str(out), lr=lr, seed=seed, overwrite=True))
    assert result.evaluated_on == "test"
    return float(result.evaluation["top1"]), float(result.evaluation["loss"])


def range_test(root: Path, out: Path, seed: int) -> LRFinderResult:
    """find_lr with the defaults; its points are read back from ``out/lr_find.csv`` when there is one (the rules
    are applied afresh)."""
    csv_file = out / "lr_find.csv"
    if not csv_file.is_file():
        with contextlib.redirect_stdout(io.StringIO()):
            return find_lr(TrainConfig(data=str(root), out=str(out), seed=seed))
    result = LRFinderResult("full")
    with csv_file.open(newline="") as fh:
        for row in csv.DictReader(fh):
            result.lrs.append(float(row["lr"]))
            result.losses.append(float(row["loss"]))
            result.smoothed.append(float(row["smoothed_loss"]))
    parts = read_split(root)
    n_train = len(parts["train"]) - round(len(parts["train"]) * TrainConfig().val_fraction)
    return apply_rules(result, len({label for _, label in parts["train"]}), n_train)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True, help="a clone of imagenet-sample-images")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in SWEEP))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    train_session.score_mixes = _tuned_only  # type: ignore[assignment]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"cnnlab train defaults (efficientnet_lite0, real ImageNet weights, 224 px); {CAVEAT}")
    goals = []
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-lr-") as tmp:
        work = args.workdir or Path(tmp)
        for name in [s for s in args.sets.split(",") if s]:
            root = build_set(name, args.photos, work / name / "data")
            by_lr: dict[float, list[tuple[float, float]]] = {}
            suggestions = []
            for seed in seeds:
                scores = []
                for lr in lrs:
                    started = time.perf_counter()
                    acc, loss = sweep_point(root, work / name / f"lr-{lr:g}-{seed}", lr, seed)
                    scores.append((lr, acc, loss))
                    by_lr.setdefault(lr, []).append((acc, loss))
                    print(f"{name} | seed {seed} | lr {lr:.3g} | held-out acc {acc:.3f} | loss {loss:.4f} | "
                          f"{time.perf_counter() - started:.0f} s", flush=True)
                started = time.perf_counter()
                found = range_test(root, work / name / f"lr-find-{seed}", seed)
                rules = ", ".join(f"{k} {v:.2g}" for k, v in found.rules.items())
                print(f"{name} | seed {seed} | suggestion {found.suggestion:.3g} ({found.rule.split(':')[0]}) | "
                      f"{rules} | warning: {found.warning or '-'} | {time.perf_counter() - started:.0f} s", flush=True)
                best = min(scores, key=lambda s: (-s[1], s[2]))[0]
                assert found.suggestion is not None
                suggestions.append(found.suggestion)
                ratio = max(found.suggestion / best, best / found.suggestion)
                goals.append(f"goal | {name} | seed {seed} | suggestion {found.suggestion:.3g} | sweep best {best:.3g} "
                             f"| {ratio:.1f}x | {'met' if ratio <= 3 else 'NOT met'}")
            if len(seeds) > 1:  # the sweep's best by the mean over seeds: one seed's best is mostly noise
                means = {lr: (sum(a for a, _ in v) / len(v), sum(b for _, b in v) / len(v)) for lr, v in by_lr.items()}
                print(f"{name} | mean of seeds {args.seeds} | " + " | ".join(
                    f"lr {lr:.3g}: acc {a:.3f} loss {b:.4f}" for lr, (a, b) in means.items()), flush=True)
                best = min(means, key=lambda lr: (-means[lr][0], means[lr][1]))
                for seed, suggestion in zip(seeds, suggestions):
                    ratio = max(suggestion / best, best / suggestion)
                    goals.append(f"goal | {name} | seed {seed} vs the sweep's best over seeds | suggestion "
                                 f"{suggestion:.3g} | sweep best {best:.3g} | {ratio:.1f}x | "
                                 f"{'met' if ratio <= 3 else 'NOT met'}")
    print("\n" + "\n".join(goals))
    print(f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
