"""Issue 24: the final head refitted on every labelled image, its validation figures out of fold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cnnlab.options import RuntimeOptions
from cnnlab.train import TrainConfig, fine_tune
from cnnlab.train.probe import Features, fit_logistic
from cnnlab.train.refit import cross_fit, fold_of
from tests.helpers.images import make_colours
from tests.helpers.runs import FAST


def test_folds_deal_every_class_evenly_and_depend_only_on_the_seed() -> None:
    targets = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    fold = fold_of(targets, 5, seed=3)
    assert sorted(fold.tolist()) == sorted([k % 5 for k in range(15)])  # 3 images in each fold
    for label in range(3):
        members = fold[(targets == label).numpy()]
        assert members.max() - members.min() <= 4 and len(set(members.tolist())) == min(5, int((targets == label).sum()))
    assert fold.tolist() == fold_of(targets, 5, seed=3).tolist()


def _cluster(n: int, sign: float) -> torch.Tensor:
    x = torch.zeros(n, 4)
    x[:, 0] = sign * (1.0 + 0.1 * torch.arange(n))
    return x


def test_a_validation_image_is_scored_by_a_head_that_never_saw_it() -> None:
    """The odd validation image (class 1 on the class-0 side, plus a direction no other image has) is learnt by
    the final head, which saw it, but scored as class 0 out of fold."""
    train = Features(torch.cat([_cluster(10, 1.0), _cluster(10, -1.0)]), torch.tensor([0] * 10 + [1] * 10))
    odd = torch.tensor([[0.5, 0.0, 0.0, 40.0]])
    val = Features(torch.cat([_cluster(4, 1.0), _cluster(4, -1.0), odd]), torch.tensor([0] * 4 + [1] * 4 + [1]))
    logits, weight, bias = cross_fit(train, val, 2, folds=3, seed=0, balance=False, bias=True)
    assert logits.shape == (9, 2)
    assert logits[:8].argmax(1).tolist() == [0] * 4 + [1] * 4
    assert int(logits[8].argmax()) == 0  # out of fold: it looks like class 0
    assert bias is not None and int((odd @ weight.T + bias).argmax()) == 1  # the final head fitted it
    w, b = fit_logistic(torch.cat([train.x, val.x]), torch.cat([train.y, val.y]), 2)
    assert torch.allclose(weight, w) and b is not None and torch.allclose(bias, b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    data = make_colours(tmp_path_factory.mktemp("colours"), broken=False)
    root = tmp_path_factory.mktemp("runs")
    return {refit: fine_tune(TrainConfig(data=str(data), out=str(root / str(refit)), refit=refit, **FAST)).out
            for refit in (True, False)}


def _features_of(out: Path, splits: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """best.pt's penultimate features of the run's images in ``splits``, as a user would compute them."""
    from cnnlab.models.load import load_torch
    from cnnlab.runtime.inference import run_inference

    with (out / "data_split.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] in splits]
    model = load_torch(out / "best.pt", RuntimeOptions(device="cpu"))
    classes = json.loads((out / "metrics.json").read_text())["classes"]
    feats = [b.features for b in run_inference(model, [out / r["path"] for r in rows], batch_size=8, workers=0,
                                               features=True)]
    return torch.cat([f for f in feats if f is not None]), torch.tensor([classes.index(r["label"]) for r in rows])


def test_best_pt_head_is_the_regression_on_training_and_validation_features(runs: dict[bool, Path]) -> None:
    out = runs[True]
    metrics = json.loads((out / "metrics.json").read_text())
    refit, n_val = metrics["refit"], metrics["val"]["n"]
    x, y = _features_of(out, ("train", "val"))
    assert refit["images"] == len(y) and refit["folds"] == min(5, n_val)
    best = torch.load(out / "best.pt", weights_only=True)
    head = best["head"]["path"]
    w, b = fit_logistic(x, y, len(metrics["classes"]))
    assert torch.allclose(best["state_dict"][f"{head}.weight"], w, atol=2e-3)
    assert b is not None and torch.allclose(best["state_dict"][f"{head}.bias"], b, atol=2e-3)
    assert best["metrics"]["refit"] == refit and metrics["val"]["top1"] == pytest.approx(refit["val_acc"])
    assert best["unknown"]["calibrated_on"] == "val, out of fold" and best["unknown"]["n"] == n_val


def test_without_refit_the_head_is_the_chosen_mix(runs: dict[bool, Path]) -> None:
    refitted, plain = (json.loads((runs[r] / "metrics.json").read_text()) for r in (True, False))
    assert plain["refit"] is None and plain["unknown"]["calibrated_on"] == "val"
    assert plain["weight_mix"] == refitted["weight_mix"]  # the refit comes after the choice and does not change it
    chosen = next(m for m in plain["mix_scores"] if m["share"] == plain["weight_mix"])
    assert plain["val"]["top1"] == chosen["val_acc"] == refitted["refit"]["val_acc_before"]
    ckpt = torch.load(runs[True] / "best.pt", weights_only=True)
    a, head = ckpt["state_dict"], ckpt["head"]["path"]
    b = torch.load(runs[False] / "best.pt", weights_only=True)["state_dict"]
    backbone = [k for k in a if not k.startswith(f"{head}.") and a[k].is_floating_point()]
    assert backbone and all(torch.equal(a[k], b[k]) for k in backbone)
    assert not torch.equal(a[f"{head}.weight"], b[f"{head}.weight"])


def test_a_finished_run_resumed_keeps_its_refit_figures(runs: dict[bool, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs[True], copy)
    before = json.loads((copy / "metrics.json").read_text())
    head = torch.load(copy / "best.pt", weights_only=True)["head"]["path"]
    fine_tune(TrainConfig(out=str(copy), resume=True))
    after = json.loads((copy / "metrics.json").read_text())
    assert after["refit"] == pytest.approx(before["refit"])  # not "before" scored by a head that saw val
    assert after["val"]["top1"] == pytest.approx(before["val"]["top1"])
    w = [torch.load(d / "best.pt", weights_only=True)["state_dict"][f"{head}.weight"] for d in (runs[True], copy)]
    assert torch.allclose(w[0], w[1], atol=1e-5)


def test_without_a_decodable_validation_image_the_run_finishes_unrefitted(tmp_path: Path) -> None:
    data = make_colours(tmp_path / "data", per_class=6, broken=False)
    rows = ["path,label,split"]
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        for i, image in enumerate(sorted(folder.iterdir())):
            split = "val" if i < 2 else "train"
            if split == "val":
                image.write_bytes(b"not an image")
            rows.append(f"{folder.name}/{image.name},{folder.name},{split}")
    (data / "split.csv").write_text("\n".join(rows) + "\n")
    result = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "run"), **{**FAST, "epochs": 1}))
    metrics = json.loads((result.out / "metrics.json").read_text())
    assert metrics["refit"] is None and result.refit is None
    assert any("refit: skipped" in w for w in result.warnings)
    assert len(result.skipped) == 6 and (result.out / "report.html").is_file()
