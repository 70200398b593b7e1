"""How well "none of these" scores separate in-class held-out photos from off-topic photos, for a trained model.

Usage::

    .venv/bin/python benchmarks/bench_unknown.py --photos DIR [--sets animals,things] [--seeds 0,1,2] [--workdir DIR]

``--photos``: a clone of imagenet-sample-images (see ``benchmarks/photo_sets.py``, which builds the sets and
the ``off-topic`` folder: fish, primates, fungi, landscapes, balls, clothing, superclasses in neither set).
Per set, ``fine_tune`` with its defaults (efficientnet_lite0, real ImageNet weights, 224 px) trains on the
set's training photos (a fifth of them held for validation by the run itself); its ``best.pt`` then scores
the validation photos, the set's held-out photos (in-class) and the off-topic photos. Scores (high: in-class):

* ``max_softmax``: the top softmax probability (Hendrycks and Gimpel 2017);
* ``max_logit``: the top logit (Hendrycks et al. 2022);
* ``energy``: logsumexp of the logits (Liu et al. 2020);
* ``class_mean_cos``: cosine similarity of the penultimate features to the nearest class mean of the
  training photos' features (class means as in Lee et al. 2018's Mahalanobis score, without the covariance);
* ``knn_cos``: cosine similarity to the nearest training photo's features (Sun et al. 2022, k=1);
* ``vim``: Virtual-logit Matching (Wang et al. 2022): the features' distance from the training features'
  8-dimensional principal subspace (centred at the head's origin), scaled to the logits and taken as one more
  logit; the score is minus its softmax probability's log-odds against the classes;
* ``energy+knn``: the energy and ``knn_cos``, each standardised on the validation photos, summed.

Printed per score: AUROC (in-class held-out vs off-topic), and with the threshold calibrated as
``cnnlab.train.unknown.calibrate_unknown`` does (the ``floor(0.05 n)``-th lowest validation score) the share of
in-class held-out photos rejected and of off-topic photos accepted; also the off-topic share accepted at the
threshold that keeps exactly 95 % of the held-out photos (FPR@95, a calibration without noise).
The photos come from ImageNet, which the backbone was pretrained on (said with the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_sets import CAVEAT, SETS, build_off_topic, build_set

from cnnlab.options import RuntimeOptions
from cnnlab.train import TrainConfig, fine_tune
from cnnlab.train.probe import Features
from cnnlab.train.refit import cross_fit
from cnnlab.train.unknown import FALSE_REJECTION, SCORES, feature_scorer, score_logits


def _logits_and_features(model: object, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    from cnnlab.runtime.inference import run_inference

    logits, feats = [], []
    for batch in run_inference(model, paths, batch_size=32, workers=0, features=True):  # type: ignore[arg-type]
        logits.append(batch.logits)
        assert batch.features is not None
        feats.append(batch.features)
    return torch.cat(logits), torch.cat(feats)


def _run_rows(run: Path) -> dict[str, list[tuple[Path, str]]]:
    rows: dict[str, list[tuple[Path, str]]] = {}
    with (run / "data_split.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            rows.setdefault(row["split"], []).append(((run / row["path"]).resolve(), row["label"]))
    return rows


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an in-class photo > score of an off-topic one): scikit-learn's ROC AUC, in-class positive."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(inside)), np.zeros(len(outside))], np.r_[inside, outside]))


def _vim(model: object, train: tuple[torch.Tensor, torch.Tensor], dims: int = 8):  # type: ignore[no-untyped-def]
    """ViM's score function fitted on the training photos' logits and features (the head: the last linear layer)."""
    head = [m for m in model.module.modules() if isinstance(m, torch.nn.Linear)][-1]  # type: ignore[attr-defined]
    weight, bias = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    origin = -np.linalg.pinv(weight) @ bias
    x = train[1].flatten(1).double().numpy() - origin
    basis = np.linalg.svd(x, full_matrices=False)[2][:dims].T

    def residual(feats: torch.Tensor) -> np.ndarray:
        centred = feats.flatten(1).double().numpy() - origin
        return np.linalg.norm(centred - centred @ basis @ basis.T, axis=1)

    alpha = train[0].double().max(dim=1).values.mean().item() / residual(train[1]).mean()

    def score(logits: torch.Tensor, feats: torch.Tensor) -> np.ndarray:
        energy = torch.logsumexp(logits.double(), dim=1).numpy()
        virtual = alpha * residual(feats)
        return -(np.logaddexp(energy, virtual) - energy)  # log p(not the virtual class): high for in-class

    return score


def measure(run: Path, off_topic: list[Path], seed: int = 0) -> dict[str, dict[str, float]]:
    """Every score's figures for the run folder ``run`` (``best.pt``, ``data_split.csv``)."""
    from cnnlab.models.load import load_torch

    model = load_torch(run / "best.pt", RuntimeOptions(device="cpu"))
    rows = _run_rows(run)
    classes = sorted({label for _, label in rows["train"]})
    got = {name: _logits_and_features(model, [p for p, _ in rows[name]]) for name in ("train", "val", "test")}
    got["off"] = _logits_and_features(model, off_topic)
    targets = torch.tensor([classes.index(label) for _, label in rows["train"]])
    features = feature_scorer(got["train"][1], targets)
    refit = json.loads((run / "metrics.json").read_text()).get("refit")
    if refit is not None:  # best.pt's head saw the validation photos: their logits out of fold, as the run had them
        val_targets = torch.tensor([classes.index(label) for _, label in rows["val"]])
        oof, _, _ = cross_fit(Features(got["train"][1], targets), Features(got["val"][1], val_targets), len(classes),
                              folds=refit["folds"], seed=seed, balance=False, bias=True)
        got["val"] = (oof, got["val"][1])
        stored = torch.load(run / "best.pt", weights_only=True, map_location="cpu")["unknown"]
        again = np.sort(score_logits(oof, stored["score"]).numpy())[math.floor(FALSE_REJECTION * len(oof))]
        print(f"{run.name}: checkpoint threshold {stored['threshold']:.4f}, out of fold here {again:.4f}",
              file=sys.stderr)
    vim = _vim(model, got["train"])
    out: dict[str, dict[str, float]] = {}
    for score in [*SCORES, "class_mean_cos", "knn_cos", "vim", "energy+knn"]:
        def values(part: str, score: str = score) -> np.ndarray:
            logits, feats = got[part]
            if score == "class_mean_cos":
                return features.class_mean(feats).numpy()
            if score == "knn_cos":
                return features.nearest(feats).numpy()
            if score == "vim":
                return vim(logits, feats)
            if score == "energy+knn":
                def z(part_values: np.ndarray, val_values: np.ndarray) -> np.ndarray:
                    return (part_values - val_values.mean()) / (val_values.std() + 1e-12)

                energy = score_logits(logits, "energy").numpy()
                near = features.nearest(feats).numpy()
                val_logits, val_feats = got["val"]
                return z(energy, score_logits(val_logits, "energy").numpy()) + \
                    z(near, features.nearest(val_feats).numpy())
            return score_logits(logits, score).numpy()

        val, test, off = values("val"), values("test"), values("off")
        threshold = np.sort(val)[math.floor(FALSE_REJECTION * len(val))]
        at95 = np.sort(test)[math.floor(FALSE_REJECTION * len(test))]
        out[score] = {"auroc": auroc(test, off), "rejected_in": float(np.mean(test < threshold)),
                      "accepted_off": float(np.mean(off >= threshold)), "fpr95": float(np.mean(off >= at95)),
                      "n_val": len(val), "n_in": len(test), "n_off": len(off)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True, help="a clone of imagenet-sample-images")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0", help="the runs' seeds, comma-separated (one run per set and seed)")
    parser.add_argument("--workdir", type=Path, help="keep the sets and runs here (a finished run there is reused)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; cnnlab train defaults (efficientnet_lite0, real ImageNet weights, 224 px), "
          f"seeds {args.seeds}; {CAVEAT}")
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-unknown-") as tmp:
        work = args.workdir or Path(tmp)
        off = sorted(build_off_topic(args.photos, work / "off-topic").glob("*.JPEG"))
        print("set | seed | score | AUROC | in-class rejected at the calibrated threshold | off-topic accepted | "
              "off-topic accepted at 95 % in-class kept | val / in-class / off-topic photos")
        for name in [s for s in args.sets.split(",") if s]:
            root = build_set(name, args.photos, work / name / "data")
            for seed in [int(x) for x in args.seeds.split(",")]:
                run = work / name / f"run-seed{seed}"
                if not (run / "best.pt").is_file():
                    started = time.perf_counter()
                    with contextlib.redirect_stdout(io.StringIO()):
                        fine_tune(TrainConfig(data=str(root), out=str(run), seed=seed, overwrite=True))
                    print(f"{name}: trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
                for score, f in measure(run, off, seed).items():
                    print(f"{name} | seed {seed} | {score} | {f['auroc']:.3f} | {f['rejected_in']:.1%} | "
                          f"{f['accepted_off']:.1%} | {f['fpr95']:.1%} | {f['n_val']}/{f['n_in']}/{f['n_off']}",
                          flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}; {CAVEAT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
