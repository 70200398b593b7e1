"""finetune: head replacement, data splits, schedules, learning, reproducibility, resume, checkpoints, CLI.

Data is made on the fly: three classes of noisy solid colours (40x40 PNGs, 12 per class, plus one
empty file that must be skipped), and for the pretrained test, crops and flips of real photos
that ship with scikit-image (chelsea the cat, coffee, the two motorcycles, the rocket). Training
uses the offline model's real ImageNet weights at a reduced input size so each run takes seconds.
"""

from __future__ import annotations

import csv
import itertools
import json
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import (
    CnnlabError,
    DatasetError,
    UnsafeWeightsError,
    UsageError,
    WeightsIntegrityError,
)
from cnnlab.imagedata.splits import make_split
from cnnlab.models.checkpoint import (
    FORMAT,
    find_head,
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
    replace_head,
    save_checkpoint,
)
from cnnlab.models.load import load_torch
from cnnlab.models.registry import get_spec
from cnnlab.options import RuntimeOptions
from cnnlab.progress import Progress
from cnnlab.train import (
    DataSplits,
    TrainConfig,
    TrainResult,
    TrainTransform,
    fine_tune,
    make_optimizer,
    make_scheduler,
    make_train_loader,
    prepare_data,
    read_history,
)
from tests.helpers.images import COLOURS, make_colours
from tests.helpers.runs import FAST

runner = CliRunner()




@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colours(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def colour_run(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return fine_tune(TrainConfig(data=str(colours), out=str(tmp_path_factory.mktemp("run") / "a"), **FAST))


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# --------------------------------------------------------------------------------------------
# the new head
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "head_path"),
    [
        ("resnet18", "fc"),
        ("mobilenet_v3_small", "classifier.3"),
        ("vit_b_16", "heads.head"),
        ("swin_t", "head"),
        ("convnext_tiny", "classifier.2"),
        ("squeezenet1_1", "classifier.1"),  # a 1x1 convolution
        ("inception_v3", "fc"),  # not the auxiliary AuxLogits.fc
        ("efficientnet_lite0", "_fc"),
    ],
)
def test_replace_head_finds_the_final_classifier(arch: str, head_path: str) -> None:
    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        model = get_spec(arch).build(None)
        info = replace_head(model, 7)
    assert info.path == head_path and info.old_outputs == 1000 and info.num_classes == 7
    new = model.get_submodule(head_path)
    assert (new.out_features if isinstance(new, nn.Linear) else new.out_channels) == 7
    assert new.weight.device.type == "meta"
    if arch == "inception_v3":
        assert model.get_submodule("AuxLogits.fc").out_features == 1000


def test_replace_head_runs_and_refuses_models_without_one() -> None:
    model = get_spec("squeezenet1_1").build(None)
    replace_head(model, 4)
    assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 4)
    with pytest.raises(CnnlabError, match="no final nn.Linear"):
        find_head(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(10)))


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def random_field(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A distinct photo-like image: a random 8x8 colour field, smoothly enlarged (far from any other in phash)."""
    return Image.fromarray(rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)


def split_of(splits: DataSplits) -> dict[str, str]:
    """file name (class/file) -> split name."""
    return {f"{p.parent.name}/{p.name}": name for name, part in splits.parts() for p in part.paths}


@pytest.fixture
def features_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The offline model's features of a file computed once per test: every split of the same files (one per
    seed) compares the same features, and loading the model and embedding them again would only repeat the work."""
    from cnnlab.runtime import features

    real = features.image_features
    seen: dict[tuple[Path, ...], tuple[np.ndarray, list[bool]]] = {}

    def once(paths: Any, **kwargs: Any) -> tuple[np.ndarray, list[bool]]:
        key = tuple(Path(p).resolve() for p in paths)  # a manifest is split through fresh links to the same files
        if key not in seen:
            seen[key] = real(paths, **kwargs)
        found, usable = seen[key]
        return found.copy(), list(usable)

    monkeypatch.setattr(features, "image_features", once)


@pytest.mark.usefixtures("features_once")
def test_split_is_deterministic_stratified_and_from_split_py(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, n in (("a", 20), ("b", 10), ("c", 3)):
        (tmp_path / label).mkdir()
        for i in range(n):
            random_field(rng).save(tmp_path / label / f"{i}.png")
    a = prepare_data(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert split_of(a) == split_of(prepare_data(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=3))
    assert split_of(a) != split_of(prepare_data(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=4))
    assert sorted(split_of(a)) == sorted(f"{p.parent.name}/{p.name}" for p in tmp_path.glob("*/*.png"))
    per_split = {name: Counter(a.classes[t] for t in part.targets) for name, part in a.parts()}
    assert per_split["val"] == {"a": 4, "b": 2, "c": 1}  # round(n * 0.2) per class
    assert per_split["test"] == {"a": 2, "b": 1}  # round(n * 0.1); none of 3 images
    assert per_split["train"] == {"a": 14, "b": 7, "c": 2}
    assert "near duplicates together" in a.source
    rows = {(r.path, r.split) for r in make_split(tmp_path, 0.2, 0.1, 3, write=False).rows}
    assert rows == set(split_of(a).items())  # exactly cnnlab.imagedata.splits's assignment
    assert not (tmp_path / "split.csv").exists()  # nothing written into the data


@pytest.mark.parametrize("layout", ["folders", "manifest", "split.csv with train rows only"])
@pytest.mark.usefixtures("features_once")
def test_near_duplicates_never_straddle_splits(tmp_path: Path, layout: str) -> None:
    """An image and its slightly smaller copy always land in one split, whatever the seed and the layout."""
    rng = np.random.default_rng(1)
    root, rows = tmp_path / "data", []
    for label in ("a", "b", "c"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            img = random_field(rng)
            img.save(root / label / f"{i}.png")
            img.resize((56, 56), Image.Resampling.BILINEAR).save(root / label / f"{i}-copy.png")
            rows += [[f"{label}/{i}.png", label, "train"], [f"{label}/{i}-copy.png", label, "train"]]
    data = root
    if layout == "manifest":
        data = root / "images.csv"
        with data.open("w", newline="") as fh:
            csv.writer(fh).writerows([["path", "label"], *[r[:2] for r in rows]])
    elif layout != "folders":
        with (root / "split.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([["path", "label", "split"], *rows])
    test = 0.25 if layout != "split.csv with train rows only" else 0.0

    def pairs_apart(threshold: int) -> tuple[int, Counter[str]]:
        apart, used = 0, Counter()
        for seed in range(4):
            where = split_of(prepare_data(data, val_fraction=0.25, test_fraction=test, seed=seed,
                                          near_dup_threshold=threshold))
            apart += sum(where[f"{label}/{i}.png"] != where[f"{label}/{i}-copy.png"]
                         for label in "abc" for i in range(8))
            used.update(where.values())
        return apart, used

    apart, used = pairs_apart(4)
    assert apart == 0
    assert used["val"] >= 4 * 3 * 4 and (used["test"] >= 4 * 3 * 2 or test == 0)  # pairs did leave train
    assert pairs_apart(-1)[0] > 0  # without grouping some pairs are split: the test can fail


def test_prepare_data_uses_a_split_csv_and_checks_its_classes(colours: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    rows = []
    for name in sorted(COLOURS):
        for j, split in enumerate(["train", "train", "train", "val", "test"]):
            path = root / name / f"{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), COLOURS[name]).save(path)
            rows.append([f"{name}/{j}.png", name, split])
    with (root / "split.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "split"], *rows])
    splits = prepare_data(root)
    assert splits.classes == sorted(COLOURS)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 3)
    assert "split.csv" in splits.source
    assert [splits.classes[t] for t in splits.test.targets] == sorted(COLOURS)

    with (root / "split.csv").open("a", newline="") as fh:  # a class with test images only
        csv.writer(fh).writerow(["red/0.png", "purple", "test"])
    with pytest.raises(DatasetError, match="purple.*no training images"):
        prepare_data(root)


def test_empty_class_folders_are_left_out_and_imbalance_is_sampled_away(tmp_path: Path) -> None:
    root = tmp_path / "imbalanced"
    for name, n in (("many", 12), ("few", 3)):
        for i in range(n):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / name / f"{i}.png")
    (root / "empty").mkdir()
    splits = prepare_data(root, val_fraction=0.0)
    assert splits.classes == ["few", "many"] and splits.dropped_classes == ["empty"]
    assert splits.class_counts() == {"few": 3, "many": 12}

    def sampled_counts(balance: bool) -> Counter[int]:
        loader = make_train_loader(
            splits.train, TrainTransform(get_spec("resnet18").preprocessing),
            batch_size=4, workers=0, balance=balance, generator=torch.Generator().manual_seed(0),
        )
        counts: Counter[int] = Counter()
        for _ in range(40):
            counts.update(splits.train.targets[i] for i in loader.sampler)
        return counts

    plain, balanced = sampled_counts(False), sampled_counts(True)
    assert plain[1] == 4 * plain[0]  # every image once per epoch
    assert 0.8 < balanced[0] / balanced[1] < 1.25  # both classes about equally often


def test_training_augmentation_gives_uint8_crops(colours: Path) -> None:
    pp = get_spec("efficientnet_lite0").preprocessing
    transform = TrainTransform(pp, crop_scale=(0.3, 1.0), hflip=True)
    torch.manual_seed(0)
    a = transform.load(colours / "red" / "00.png")
    b = transform.load(colours / "red" / "00.png")
    assert a.dtype == torch.uint8 and a.shape == (3, pp.crop_size, pp.crop_size)
    assert not torch.equal(a, b)  # random crops differ
    assert a[0].float().mean() > 150 > a[2].float().mean()  # still red


def _phase_lrs(config: TrainConfig, phase: str, steps: int) -> tuple[list[dict[str, float]], list[dict[str, Any]]]:
    """Per optimiser step of a phase on a tiny network: the lr and beta1 of each group, and the groups."""
    head = nn.Linear(8, 3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    optimizer = make_optimizer(model, head, phase, config, config.bn)
    scheduler = make_scheduler(optimizer, config, total_steps=steps)
    seen = []
    for _ in range(steps):
        seen.append({g["part"]: g["lr"] for g in optimizer.param_groups} | {"beta1": optimizer.param_groups[0]["betas"][0]})
        optimizer.step()
        scheduler.step()
    return seen, optimizer.param_groups


def test_onecycle_warms_up_and_decays_within_each_phase() -> None:
    config = TrainConfig(lr=0.01, backbone_lr_ratio=0.1, warmup=0.25, bn="frozen")
    head_steps, groups = _phase_lrs(config, "head", 100)
    assert [g["part"] for g in groups] == ["head", "head"]  # frozen backbone, BN statistics frozen too
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # no decay for the bias
    assert head_steps[0]["head"] == pytest.approx(0.01 / 25) and head_steps[0]["beta1"] == pytest.approx(0.95)
    peak = max(range(100), key=lambda i: head_steps[i]["head"])
    assert peak == 25 and head_steps[peak]["head"] == pytest.approx(0.01) and head_steps[peak]["beta1"] == pytest.approx(0.85)
    change = [b["head"] - a["head"] for a, b in itertools.pairwise(head_steps)]
    assert all(d > 0 for d in change[:peak]) and all(d < 0 for d in change[peak:])  # up, then down
    assert head_steps[-1]["head"] == pytest.approx(0.01 / 25e4) and head_steps[-1]["beta1"] == pytest.approx(0.95)

    full_steps, groups = _phase_lrs(config, "full", 40)  # a new cycle, at half the rate, backbone slower
    assert {g["part"] for g in groups} == {"head", "backbone"}
    assert [g["weight_decay"] for g in groups if g["part"] == "backbone"] == [0.01, 0.0]  # conv weight; bias+BN
    assert full_steps[0]["head"] == pytest.approx(0.005 / 25)
    assert full_steps[10]["head"] == pytest.approx(0.005) and full_steps[10]["backbone"] == pytest.approx(0.0005)
    assert full_steps[-1]["head"] < 1e-7

    for n in range(1, 7):  # phases of a few steps (tiny data sets) start low, peak, and end decayed
        lrs = [step["head"] for step in _phase_lrs(config, "head", n)[0]]
        assert lrs[0] == pytest.approx(0.01 / 25)
        if n >= 3:
            assert max(lrs) == pytest.approx(0.01) and lrs.index(max(lrs)) == max(1, round(n / 4)), n
            assert lrs[-1] == pytest.approx(0.01 / 25e4), n


def test_cosine_schedule_and_bn_train_policy() -> None:
    config = TrainConfig(lr=0.01, schedule="cosine", bn="train")
    steps, groups = _phase_lrs(config, "head", 10)
    assert {g["part"] for g in groups} == {"head", "backbone"}  # BatchNorm trains while the rest is frozen
    assert steps[0]["head"] == pytest.approx(0.01) and steps[5]["head"] == pytest.approx(0.005)
    assert steps[9]["head"] < steps[8]["head"] and all(s["beta1"] == 0.95 for s in steps)


# --------------------------------------------------------------------------------------------
# training runs
# --------------------------------------------------------------------------------------------


def test_a_probe_batch_of_only_broken_files_is_skipped_and_counted(tmp_path: Path) -> None:
    """A batch of the probe's forward pass in which every file fails has no features; the probe goes on."""
    data = make_colours(tmp_path / "colours", per_class=30)
    for i in range(8):  # with broken.jpg, nine broken files in a row: at least one whole batch of 8
        (data / "red" / f"zz_broken{i}.jpg").write_bytes(b"not an image")
    r = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "run"), **{**FAST, "freeze": True}))
    assert [h.phase for h in r.history] == ["probe"] and r.history[0].val_acc >= 0.99
    skipped = [Path(s.path).name for s in r.skipped]
    assert len(skipped) >= 8 and all("broken" in name for name in skipped)  # counted; no good image lost


def test_colours_are_learnt_and_every_output_is_written(colour_run: TrainResult) -> None:
    r = colour_run
    assert r.classes == ["blue", "green", "red"] and not r.random_weights
    assert [(h.epoch, h.phase) for h in r.history] == [(0, "probe"), (1, "head"), (2, "full"), (3, "full")]
    assert r.history[0].val_acc >= 0.99 and r.history[0].lr == 0  # the probe alone already separates colours
    assert r.history[-1].val_acc >= 0.99 and r.evaluation["top1"] >= 0.99
    assert r.history[-1].val_loss < r.history[0].val_loss
    assert r.history[2].backbone_lr > 0 == r.history[1].backbone_lr  # frozen, then unfrozen
    assert r.history[1].lr == pytest.approx(2e-3 / 25e4)  # the head phase's one cycle ends decayed...
    assert r.history[2].lr > 100 * r.history[3].lr  # ...and the full phase has a cycle of its own
    assert r.history[3].lr == pytest.approx(1e-3 / 25e4) and r.history[2].backbone_lr == pytest.approx(r.history[2].lr / 10)
    assert r.bn == "frozen" and r.evaluated_on == "val"
    assert [s.reason for s in r.skipped] == ["empty"] and r.skipped[0].path.endswith("broken.jpg")
    assert sum(h.skipped for h in r.history) >= 1  # counted in the epochs it fell in

    out = r.out
    for name in ("best.pt", "last.pt", "history.csv", "curves.png", "metrics.json", "data_split.csv"):
        assert (out / name).is_file(), name
    assert [h.key() for h in read_history(out / "history.csv")] == [h.key() for h in r.history]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "val" and metrics["val"]["n"] == r.n_val == 7
    matrix = np.array(metrics["val"]["confusion_matrix"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 7 and np.trace(matrix) == 7
    assert [c["name"] for c in metrics["val"]["per_class"]] == r.classes

    best = torch.load(out / "best.pt", weights_only=True)  # plain data and tensors only
    assert best["format"] == FORMAT and best["arch"] == "efficientnet_lite0.IMAGENET1K"
    assert best["classes"] == r.classes and best["preprocessing"]["crop_size"] == 64
    assert best["train_args"]["epochs"] == 2 and best["versions"]["torch"] == torch.__version__
    assert best["data_record"]["splits"]["train"]["count"] == r.n_train  # the leakage record
    assert best["metrics"]["val_top1"] == r.evaluation["top1"] and "resume" not in best
    assert "optimizer" in torch.load(out / "last.pt", weights_only=True)["resume"]


def _val_report_and_best_pt(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json's validation report, and what best.pt, loaded afresh by predict (in the default memory
    layout, so equal to float precision), gives on the validation images of data_split.csv."""
    from cnnlab.prediction import predict

    with (out / "data_split.csv").open(newline="") as fh:
        val = [{**row, "path": str(out / row["path"])}  # paths relative to the CSV's folder
               for row in csv.DictReader(fh) if row["split"] == "val"]
    preds = predict([row["path"] for row in val], model=out / "best.pt", topk=3, runtime=RuntimeOptions(device="cpu", workers=0)).predictions
    truth = {str(Path(row["path"])): row["label"] for row in val}
    probs = [{s.label: s.probability for s in p.top}[truth[str(Path(p.path))]] for p in preds]
    fresh = {"n": len(preds), "top1": float(np.mean([p.top[0].label == truth[str(Path(p.path))] for p in preds])),
             "loss": float(-np.mean(np.log(probs)))}
    return json.loads((out / "metrics.json").read_text())["val"], fresh


def test_the_reported_validation_figures_are_the_refitted_heads_out_of_fold(colour_run: TrainResult) -> None:
    """With the refit (the default) best.pt's head saw the validation images: the report is the out-of-fold
    figures of the same images, not best.pt's own (in-sample) ones."""
    report, fresh = _val_report_and_best_pt(colour_run.out)
    assert colour_run.refit is not None and report["n"] == fresh["n"] == 7
    assert report["top1"] == pytest.approx(colour_run.refit["val_acc"])
    assert report["loss"] == pytest.approx(colour_run.refit["val_loss"], rel=1e-6)


def test_the_validation_report_is_the_best_epochs_when_a_later_epoch_is_last(
    colours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A validation loss that only rises makes the probe (epoch 0) the best epoch: the report is its predictions,
    kept from that epoch (not computed again), not those of the last epoch (without the refit, which would
    replace them by its out-of-fold figures)."""
    from cnnlab.train import loop

    losses = iter(np.arange(1.0, 20.0))
    monkeypatch.setattr(loop.Predictions, "loss", property(lambda self: float(next(losses))))
    r = fine_tune(TrainConfig(data=str(colours), out=str(tmp_path / "r"), refit=False, **FAST))
    monkeypatch.undo()
    assert r.best_epoch == 0 and [h.epoch for h in r.history] == [0, 1, 2, 3]
    report, fresh = _val_report_and_best_pt(r.out)
    assert report["n"] == fresh["n"] == 7 and report["top1"] == fresh["top1"]
    assert report["loss"] == pytest.approx(fresh["loss"], rel=1e-4, abs=1e-6)


def test_checkpoints_of_a_cpu_run_are_in_the_default_layout(colour_run: TrainResult) -> None:
    """The network trains channels-last on the CPU; its checkpoints hold ordinary contiguous tensors."""
    for name in ("best.pt", "last.pt"):
        state = _state(colour_run.out / name)
        assert any(t.ndim == 4 for t in state.values())
        assert all(t.is_contiguous() for t in state.values()), name


def test_same_seed_same_history_and_weights(colour_run: TrainResult, colours: Path, tmp_path: Path) -> None:
    again = fine_tune(TrainConfig(data=str(colours), out=str(tmp_path / "b"), **FAST))
    assert [h.key() for h in again.history] == [h.key() for h in colour_run.history]
    a, b = _state(colour_run.out / "last.pt"), _state(again.out / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = fine_tune(TrainConfig(data=str(colours), out=str(tmp_path / "c"), **{**FAST, "seed": 1, "epochs": 0}))
    assert other.history[0].key() != colour_run.history[0].key()


def test_resume_after_interruption_gives_the_uninterrupted_weights(
    colour_run: TrainResult, colours: Path, tmp_path: Path
) -> None:
    class Interrupt(Exception):
        pass

    class InterruptAfterEpoch2(Progress):
        """A display whose third finished epoch (probe, head, 1st full) raises, as Ctrl-C in the CLI would."""

        def __init__(self) -> None:
            self.epochs = 0

        def finish(self, key: str, message: str | None = None) -> None:
            self.epochs += key == "epoch"
            if self.epochs == 3:
                raise Interrupt

    out = tmp_path / "interrupted"
    with pytest.raises(Interrupt):  # stopped inside the full phase: optimiser, scheduler, EMA states must carry over
        fine_tune(TrainConfig(data=str(colours), out=str(out), **FAST), progress=InterruptAfterEpoch2())
    assert len(read_history(out / "history.csv")) == 3
    stopped = torch.load(out / "last.pt", weights_only=True)
    assert stopped["resume"]["scheduler"]["last_epoch"] == 4  # 29 images in 4 batches: 4 steps done
    assert int(stopped["resume"]["ema"]["n_averaged"]) == 4 + 4  # head phase steps + full phase steps
    assert not torch.equal(stopped["resume"]["model"]["_fc.weight"], stopped["state_dict"]["_fc.weight"])  # raw vs EMA
    with pytest.raises(UsageError, match="already holds the outputs of an earlier train run"):  # no silent restart
        fine_tune(TrainConfig(data=str(colours), out=str(out), **FAST))

    resumed = fine_tune(TrainConfig(out=str(out), resume=True, workers=0))  # settings come from last.pt
    assert resumed.resumed_from_epoch == 2
    assert [h.key() for h in resumed.history] == [h.key() for h in colour_run.history]
    for name in ("last.pt", "best.pt"):
        a, b = _state(colour_run.out / name), _state(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_early_stopping_ends_each_phase(colours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a validation accuracy that stays put and a loss that only rises, each phase stops after `patience`
    epochs without a new best (the full phase compares with the head phase's best)."""
    from cnnlab.train import loop

    losses = iter(np.arange(1.0, 20.0))
    monkeypatch.setattr(loop.Predictions, "loss", property(lambda self: float(next(losses))))
    monkeypatch.setattr(loop.Predictions, "accuracy", property(lambda self: 0.5))
    r = fine_tune(TrainConfig(
        data=str(colours), out=str(tmp_path / "es"), model="squeezenet1_1", random_weights=True,
        image_size=32, batch_size=16, workers=0, freeze_epochs=5, epochs=5, patience=2, probe=False,
    ))
    assert [h.phase for h in r.history] == ["head"] * 3 + ["full"] * 2
    assert r.stopped_early == ["head", "full"] and r.best_epoch == 1
    assert r.bn == "train" and r.random_weights and any("RANDOM" in w for w in r.warnings)
    assert torch.load(r.out / "best.pt", weights_only=True)["metrics"]["epoch"] == 1


def test_fine_tuning_real_photos_reaches_the_frozen_baseline(tmp_path: Path) -> None:
    """Held-out crops of real photos: fine-tuning the offline model reaches >= 90% test accuracy
    and does at least as well as a linear probe on its frozen features with the same epochs."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    sources = {
        "cat": [data / "chelsea.png"],
        "coffee": [data / "coffee.png"],
        "motorcycle": [data / "motorcycle_left.png", data / "motorcycle_right.png"],
        "rocket": [data / "rocket.jpg"],
    }
    rng = np.random.default_rng(0)
    root, rows = tmp_path / "photos", []
    for label, files in sources.items():
        photos = [Image.open(f).convert("RGB") for f in files]
        for n, split in enumerate(["train"] * 6 + ["val"] * 2 + ["test"] * 4):
            img = photos[n % len(photos)]
            frac = rng.uniform(0.45, 0.8)  # a random 45-80% crop, mirrored half of the time
            w, h = int(img.width * frac), int(img.height * frac)
            x, y = rng.integers(0, img.width - w + 1), rng.integers(0, img.height - h + 1)
            crop = img.crop((x, y, x + w, y + h)).resize((96, 96), Image.Resampling.BILINEAR)
            crop = ImageOps.mirror(crop) if rng.random() < 0.5 else crop
            (root / label).mkdir(parents=True, exist_ok=True)
            crop.save(root / label / f"{n}.jpg", quality=90)
            rows.append([f"{label}/{n}.jpg", label, split])
    with (root / "split.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "split"], *rows])

    common = {"data": str(root), "model": "efficientnet_lite0", "batch_size": 8, "image_size": 96, "workers": 0}
    probe = fine_tune(TrainConfig(out=str(tmp_path / "probe"), freeze=True, **common))
    tuned = fine_tune(TrainConfig(out=str(tmp_path / "tuned"), epochs=2, **common))
    assert tuned.evaluated_on == probe.evaluated_on == "test" and tuned.n_test == 16
    assert [h.phase for h in probe.history] == ["probe"] and [h.phase for h in tuned.history] == ["probe", "full", "full"]
    assert tuned.evaluation["top1"] >= 0.9
    assert tuned.evaluation["top1"] >= probe.evaluation["top1"]


# --------------------------------------------------------------------------------------------
# checkpoints as models
# --------------------------------------------------------------------------------------------


def test_checkpoint_loads_as_a_model_over_the_users_classes(colour_run: TrainResult, colours: Path) -> None:
    path = colour_run.best_path
    loaded = load_torch(str(path), RuntimeOptions(device="cpu", channels_last=False))  # the rebuilt model's layout
    spec = loaded.spec
    assert spec.source == "checkpoint" and spec.name == str(path)
    assert spec.categories == ("blue", "green", "red") and spec.acc1 is None and spec.weights_url is None
    assert spec.preprocessing.crop_size == 64 and spec.arch == "efficientnet_lite0"
    assert spec.num_params == sum(p.numel() for p in loaded.module.parameters())
    assert spec.num_params < get_spec("efficientnet_lite0").num_params  # 3 outputs instead of 1000
    rebuilt = spec.build(read_checkpoint(path)["state_dict"])  # the spec's builder rebuilds it
    batch = torch.stack([spec.preprocessing.load(colours / c / "00.png") for c in ("blue", "green", "red")])
    with torch.inference_mode():
        logits = loaded(batch)
        assert torch.equal(logits, rebuilt.eval()(spec.preprocessing.normalize(batch)))
    assert logits.argmax(1).tolist() == [0, 1, 2]


def test_checkpoints_without_metadata_or_with_code_are_refused(
    colour_run: TrainResult, tmp_path: Path
) -> None:
    good = read_checkpoint(colour_run.best_path)

    plain_weights = tmp_path / "plain.pt"
    torch.save(good["state_dict"], plain_weights)
    with pytest.raises(WeightsIntegrityError, match="not a cnnlab training checkpoint.*--weights"):
        load_checkpoint(plain_weights)

    for key in ("classes", "preprocessing", "arch"):
        broken = tmp_path / f"no-{key}.pt"
        torch.save({k: v for k, v in good.items() if k != key}, broken)
        with pytest.raises(WeightsIntegrityError, match=f"lacks '{key}'"):
            load_checkpoint(broken)

    newer = tmp_path / "newer.pt"
    torch.save({**good, "version": 99}, newer)
    with pytest.raises(WeightsIntegrityError, match="version 99"):
        load_checkpoint(newer)

    wrong_head = tmp_path / "wrong-head.pt"
    torch.save({**good, "classes": ["a", "b", "c", "d"]}, wrong_head)
    with pytest.raises(WeightsIntegrityError, match="do not fit .* 4-class head"):
        load_checkpoint(wrong_head)

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):  # unpickling would call Path.touch(marker)
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    torch.save({**good, "metrics": {"x": Payload()}}, evil)
    with pytest.raises(UnsafeWeightsError, match="refused to load"):
        load_checkpoint(evil)
    assert not marker.exists()
    Image.new("RGB", (32, 32)).save(tmp_path / "one.png")  # something to predict: the model is what is refused
    result = runner.invoke(app, ["predict", str(tmp_path / "one.png"), "--model", str(evil), "--workers", "0"])
    assert result.exit_code == 3 and "refused" in result.stderr and not marker.exists()

    with pytest.raises(TypeError, match="only plain data"):  # never written in the first place
        save_checkpoint(
            make_checkpoint(
                arch=good["arch"], head=replace_head(nn.Sequential(nn.Linear(2, 1000)), 2),
                classes=["a", "b"], preprocessing=get_spec("resnet18").preprocessing, state_dict={},
                train_args={"f": pickle.dumps}, metrics={},
            ),
            tmp_path / "never.pt",
        )


# --------------------------------------------------------------------------------------------
# CLI: train -> predict -> bench
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_train_then_predict_then_bench(colours: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "colours"
    args = ["train", str(colours), "--model", "efficientnet_lite0", "--epochs", "2",
            "--image-size", "64", "--batch-size", "8", "--workers", "0", "--out", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "val top-1" in result.stdout and "pretrained weights" in result.stdout
    assert "epoch   0 probe" in result.stderr and "epoch   2 full" in result.stderr
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr
    assert (run / "best.pt").is_file() and (run / "curves.png").is_file()

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already holds the outputs of an earlier train run" in again.stderr

    predicted = runner.invoke(app, ["predict", str(colours / "blue"), str(colours / "green"),
                                    "--model", str(run / "best.pt"), "--json", "--workers", "0", "-q"])
    assert predicted.exit_code == 0, predicted.output
    preds = json.loads(predicted.stdout)["predictions"]
    assert len(preds) == 24
    right = sum(Path(p["path"]).parent.name == p["top"][0]["label"] for p in preds)
    assert right == 24 and {c["label"] for c in preds[0]["top"]} == {"blue", "green", "red"}

    bench_out = tmp_path / "bench"
    # next to a registry model (a small one, with random weights when its file is not on disk)
    benched = runner.invoke(app, ["bench", str(colours), "--models", f"{run / 'best.pt'},squeezenet1_1",
                                  "--random-weights-if-missing", "--in-process", "--repeats", "3", "--no-plots",
                                  "--batch-size", "8", "--workers", "0", "--quiet", "--out", str(bench_out)])
    assert benched.exit_code == 0, benched.output
    rows = {m["model"]: m for m in json.loads((bench_out / "results.json").read_text())["models"]}
    ours = rows[str(run / "best.pt")]
    assert ours["status"] == "ok" and ours["scored_images"] == 36  # scored on the user's classes directly
    assert ours["top1"] >= 0.9
    assert ours["top5"] is None  # 3 classes: "top-5" would be trivially 1.0, so it is not reported


def test_cli_random_weights_says_so_and_json(colours: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(colours), "--model", "squeezenet1_1", "--random-weights",
                                 "--freeze-epochs", "0", "--epochs", "1", "--image-size", "32", "--workers", "0",
                                 "--augment", "randaugment", "--mixup", "0.2", "--cutmix", "1.0",
                                 "--out", str(tmp_path / "r"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["random_weights"] is True and any("RANDOM" in w for w in data["warnings"])
    assert "RANDOM" in result.stderr
    assert data["head"] == "classifier.1: conv1x1 512 -> 3"
    assert [h["phase"] for h in data["history"]] == ["probe", "full"]
    assert data["train_args"]["augment"] == "randaugment" and data["train_args"]["mixup"] == 0.2


def test_cli_module_is_light_and_shows_the_configs_defaults() -> None:
    code = "import sys, cnnlab.cli.train; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "<onecycle|cosine>" in result.stdout and "<auto|frozen|train>" in result.stdout
    assert "trivialaugment" in result.stdout and "--find-lr" in result.stdout and "--tensorboard" in result.stdout
    assert "[default: 0.002;" in result.stdout and f"[default: {TrainConfig().epochs};" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_invalid_settings_are_refused(colours: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="schedule 'linear'; choose from onecycle, cosine"):
        fine_tune(TrainConfig(data=str(colours), out=str(tmp_path / "x"), schedule="linear"))
    with pytest.raises(UsageError, match="warmup must be in"):
        fine_tune(TrainConfig(data=str(colours), out=str(tmp_path / "x"), warmup=1.5))
    with pytest.raises(CnnlabError, match="nothing to resume"):
        fine_tune(TrainConfig(out=str(tmp_path / "none"), resume=True))
    result = runner.invoke(app, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "no such folder" in result.stderr
    for option, value in (("--schedule", "linear"), ("--bn", "frozn"), ("--precision", "fp8"), ("--device", "tpu"),
                          ("--augment", "heavy")):
        result = runner.invoke(app, ["train", str(colours), "--out", str(tmp_path / "z"), option, value])
        assert result.exit_code == 2 and value in result.stderr, (option, result.output)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_precision_on_cuda(colours: Path, tmp_path: Path) -> None:
    r = fine_tune(TrainConfig(data=str(colours), out=str(tmp_path / "gpu"), device="cuda", **FAST))
    assert r.precision in ("bf16", "fp16") and r.device.startswith("cuda")
    assert r.evaluation["top1"] >= 0.99
    loaded = load_torch(str(r.best_path), RuntimeOptions(device="cpu"))  # a GPU-trained checkpoint loads on the CPU
    assert loaded.categories == ("blue", "green", "red")


def test_cli_out_that_is_a_file_is_a_usage_error(colours: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "run"):
        result = runner.invoke(app, ["train", str(colours), "--out", str(out), "--workers", "0"])
        assert result.exit_code == 2, result.output
        assert "is not a folder" in result.stderr or "is a file, not a folder" in result.stderr
        assert "Traceback" not in result.output
    assert afile.read_text() == "mine"


def test_cli_train_reports_the_files_it_left_out(tmp_path: Path) -> None:
    """Like bench and predict: what the data scan left out (a link to nowhere, a FIFO) and what did not
    decode (an empty file) is counted and listed, also with --json."""
    import os

    data = make_colours(tmp_path / "data", per_class=4)
    (data / "green" / "ghost.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(data / "blue" / "pipe.png")
    args = ["train", str(data), "--model", "squeezenet1_1", "--random-weights", "--freeze",
            "--image-size", "32", "--workers", "0", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, "--json", "-q"])
    assert result.exit_code == 0, result.output
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads(result.stdout)["skipped"]}
    assert skipped == {"ghost.png": "missing", "pipe.png": "not-a-file", "broken.jpg": "empty"}
    for name in skipped:
        assert f"{name}: {skipped[name]}" in result.stderr
    assert "3 files skipped" in result.stderr
    shown = runner.invoke(app, [*args, "--overwrite"])
    assert shown.exit_code == 0, shown.output
    assert "2 files of the data left out (1 missing, 1 not-a-file)" in shown.stderr, shown.stderr
    assert "3 files skipped" in shown.stderr
