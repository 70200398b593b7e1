"""Held-out accuracy at every point of the line from the probe to the fine-tuned network, and the point that
each rule for choosing it on validation picks.

Usage::

    .venv/bin/python benchmarks/bench_mix_rule.py --photos DIR [--sets animals,things,mixed,objects,pair]
        [--seeds 0,1,2] [--workdir DIR]

Per set and seed, ``fine_tune`` runs with its defaults; while it scores the shares of the fine-tuned weights on
validation (:mod:`cnnlab.train.mixing`), the probe's and the best epoch's weights are kept. Afterwards each share's
network gets its head refitted on the training and validation photos, as the run's refit does
(:mod:`cnnlab.train.refit`), and is scored on the held-out photos. Share 0 is then the linear probe fitted on
every training photo. The rules, each reading only the run's validation figures:

* ``loss``: the highest validation accuracy, ties to the lower validation loss (cnnlab's rule:
  :data:`cnnlab.train.mixing.MIX_RULE`);
* ``probe``: the probe unless a share is more accurate on validation, then as ``loss``;
* ``middle``: the highest validation accuracy, ties to the share nearer 0.5.

``--photos`` (a clone of imagenet-sample-images) builds the distinct-photo sets of ``photo_sets.py``; ``objects``,
``textures``, ``science`` and ``pair`` are bench_train.py's sets of crops of packaged photos (held-out crops from
a part of each photo no training crop comes from; validation crops from the training part).
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
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train
import photo_sets

from cnnlab.options import RuntimeOptions
from cnnlab.train import TrainConfig, fine_tune
from cnnlab.train import session as train_session
from cnnlab.train.mixing import MIX_GRID, MixScore, interpolate, rank_key
from cnnlab.train.probe import Features, fit_features

RULES = ("loss", "probe", "middle")


def choose(rule: str, scores: list[MixScore]) -> float:
    """The share ``rule`` picks from the validation figures."""
    if rule == "middle":
        return min(scores, key=lambda s: (rank_key(s.accuracy, s.loss)[0], abs(s.share - 0.5))).share
    best = min(scores, key=lambda s: rank_key(s.accuracy, s.loss, s.share))
    if rule == "probe":
        probe = next(s for s in scores if s.share == 0)
        return 0.0 if best.accuracy <= probe.accuracy else best.share
    return best.share


def features(model: Any, rows: list[dict[str, str]], out: Path, classes: list[str]) -> Features:
    from cnnlab.runtime.inference import run_inference

    batches = run_inference(model, [out / r["path"] for r in rows], batch_size=32, workers=0, features=True)
    x = torch.cat([b.features for b in batches if b.features is not None])
    return Features(x, torch.tensor([classes.index(r["label"]) for r in rows]))


def held_out_by_share(out: Path, kept: dict[str, Any]) -> dict[float, float]:
    """Held-out accuracy of each share's network with its head refitted on the training and validation photos."""
    from cnnlab.models.load import load_torch

    with (out / "data_split.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = json.loads((out / "metrics.json").read_text())["classes"]
    model = load_torch(out / "best.pt", RuntimeOptions(device="cpu"))
    accuracies: dict[float, float] = {}
    shares = MIX_GRID if kept else (0.0,)
    for share in shares:
        if kept:
            model.module.load_state_dict(interpolate(kept["probe"], kept["tuned"], share))
        fit = features(model, [r for r in rows if r["split"] in ("train", "val")], out, classes)
        test = features(model, [r for r in rows if r["split"] == "test"], out, classes)
        w, b = fit_features(fit, len(classes), balance=False, bias=True)
        accuracies[share] = float(((test.x @ w.T + b).argmax(1) == test.y).float().mean())
    return accuracies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="a clone of imagenet-sample-images")
    parser.add_argument("--sets", default="animals,things,mixed,objects,pair")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    kept: dict[str, Any] = {}
    original = train_session.score_mixes

    def keeping(probe: Any, tuned: Any, validate: Any, *rest: Any, **options: Any) -> list[MixScore]:
        kept.update(probe=dict(probe), tuned=dict(tuned))
        return original(probe, tuned, validate, *rest, **options)

    train_session.score_mixes = keeping  # type: ignore[assignment]
    print(f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; cnnlab train defaults "
          f"(efficientnet_lite0, real weights); {photo_sets.CAVEAT} (animals, things, mixed)")
    print("set | seed | held-out acc at shares " + " / ".join(f"{s:g}" for s in MIX_GRID) + " | val acc (loss) | "
          + " | ".join(f"rule {r}" for r in RULES))
    summary: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-mix-") as tmp:
        work = args.workdir or Path(tmp)
        for name in [s for s in args.sets.split(",") if s]:
            if name in photo_sets.SETS:
                if args.photos is None:
                    parser.error(f"set {name} needs --photos")
                root = photo_sets.build_set(name, args.photos, work / name / "data")
            else:
                root = bench_train.make_set(name, work / name / "data")
            for seed in [int(x) for x in args.seeds.split(",")]:
                kept.clear()
                out = work / name / f"run-{seed}"
                with contextlib.redirect_stdout(io.StringIO()):
                    fine_tune(TrainConfig(data=str(root), out=str(out), seed=seed, overwrite=True))
                metrics = json.loads((out / "metrics.json").read_text())
                scores = [MixScore(m["share"], m["val_acc"], m["val_loss"]) for m in metrics["mix_scores"]]
                accuracies = held_out_by_share(out, kept)
                picks = {rule: (choose(rule, scores) if scores else 0.0) for rule in RULES}
                row = summary.setdefault(name, {r: [] for r in ("share 0", *RULES)})
                row["share 0"].append(accuracies[0.0])
                for rule, share in picks.items():
                    row[rule].append(accuracies[share])
                print(f"{name} | {seed} | " + " / ".join(f"{accuracies.get(s, float('nan')):.3f}" for s in MIX_GRID)
                      + " | " + (" ".join(f"{s.accuracy:.2f} ({s.loss:.3f})" for s in scores) or "probe was best")
                      + " | " + " | ".join(f"{picks[r]:g}: {accuracies[picks[r]]:.3f}" for r in RULES), flush=True)
    print("\nset | mean held-out acc: share 0 (the probe) | " + " | ".join(f"rule {r}" for r in RULES)
          + " | seeds where the rule is below share 0")
    for name, row in summary.items():
        below = {r: sum(a < p for a, p in zip(row[r], row["share 0"])) for r in RULES}
        print(f"{name} | {np.mean(row['share 0']):.3f} | " + " | ".join(f"{np.mean(row[r]):.3f}" for r in RULES)
              + " | " + ", ".join(f"{r} {below[r]}" for r in RULES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
