"""train: head replacement, data splits, learning, reproducibility, resume, checkpoints, CLI end to end.

Data is made on the fly: three classes of noisy solid colours (40x40 PNGs, 12 per class, plus one
empty file that must be skipped), and for the pretrained test, crops and flips of real photos
that ship with scikit-image (chelsea the cat, coffee, the two motorcycles, the rocket). Training
uses the offline model's real ImageNet weights at a reduced input size so each run takes seconds.
"""

from __future__ import annotations

import csv
import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn
from typer.testing import CliRunner

from cnnlab.checkpoint import (
    FORMAT,
    find_head,
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
    replace_head,
    save_checkpoint,
)
from cnnlab.cli import app
from cnnlab.errors import CnnlabError, DatasetError, UnsafeWeightsError, WeightsIntegrityError
from cnnlab.models import load_model
from cnnlab.train import (
    TrainCallbacks,
    TrainConfig,
    TrainResult,
    TrainTransform,
    make_train_loader,
    prepare_data,
    read_history,
    schedule_factors,
    stratified_split,
    train,
)
from cnnlab.zoo import get_spec

runner = CliRunner()
COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}
#: Settings of the small, fast runs: the offline model's real weights at 64 px, 1 head + 2 full epochs.
FAST = {"model": "efficientnet_lite0", "epochs": 2, "freeze_epochs": 1, "batch_size": 8, "image_size": 64, "workers": 0}


def make_colours(root: Path, per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 30, (size, size, 3))
            array = np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(array).save(root / name / f"{i:02d}.png")
    (root / "red" / "broken.jpg").write_bytes(b"")  # must be skipped and counted, not crash
    return root


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colours(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def colour_run(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(TrainConfig(data=str(colours), out=str(tmp_path_factory.mktemp("run") / "a"), **FAST))


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


def test_stratified_split_is_deterministic_and_stratified() -> None:
    targets = [0] * 20 + [1] * 10 + [2] * 3
    a = stratified_split(targets, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert a == stratified_split(targets, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert a != stratified_split(targets, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(len(targets)))
    per_split = {k: Counter(targets[i] for i in v) for k, v in a.items()}
    assert per_split["val"] == {0: 4, 1: 2, 2: 1}  # round(n * 0.2), at least one per class
    assert per_split["test"] == {0: 2, 1: 1, 2: 1}
    assert all(per_split["train"][c] >= 1 for c in range(3))


def test_prepare_data_uses_a_split_csv_and_checks_its_classes(colours: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    rows = []
    for i, name in enumerate(sorted(COLOURS)):
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


def test_schedules() -> None:
    first, beta = schedule_factors("onecycle", 0.0, 0.25)
    assert first == pytest.approx(1 / 25) and beta == pytest.approx(0.95)
    peak, beta = schedule_factors("onecycle", 0.25, 0.25)
    assert peak == pytest.approx(1.0) and beta == pytest.approx(0.85)
    assert schedule_factors("onecycle", 0.999, 0.25)[0] < 1e-3
    assert schedule_factors("cosine", 0.0)[0] == 1.0 and schedule_factors("cosine", 0.5)[0] == pytest.approx(0.5)
    assert schedule_factors("cosine", 0.3)[1] is None


# --------------------------------------------------------------------------------------------
# training runs
# --------------------------------------------------------------------------------------------


def test_colours_are_learnt_and_every_output_is_written(colour_run: TrainResult) -> None:
    r = colour_run
    assert r.classes == ["blue", "green", "red"] and not r.random_weights
    assert [h.phase for h in r.history] == ["head", "full", "full"]
    assert r.history[-1].val_acc >= 0.99 and r.evaluation["top1"] >= 0.99
    assert r.history[-1].val_loss < r.history[0].val_loss
    assert r.history[1].backbone_lr > 0 == r.history[0].backbone_lr  # frozen, then unfrozen
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
    assert best["metrics"]["val_top1"] == r.evaluation["top1"] and "resume" not in best
    assert "optimizer" in torch.load(out / "last.pt", weights_only=True)["resume"]


def test_same_seed_same_history_and_weights(colour_run: TrainResult, colours: Path, tmp_path: Path) -> None:
    again = train(TrainConfig(data=str(colours), out=str(tmp_path / "b"), **FAST))
    assert [h.key() for h in again.history] == [h.key() for h in colour_run.history]
    a, b = _state(colour_run.out / "last.pt"), _state(again.out / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train(TrainConfig(data=str(colours), out=str(tmp_path / "c"), **{**FAST, "seed": 1, "epochs": 0}))
    assert other.history[0].key() != colour_run.history[0].key()


def test_resume_after_interruption_gives_the_uninterrupted_weights(
    colour_run: TrainResult, colours: Path, tmp_path: Path
) -> None:
    class Interrupt(Exception):
        pass

    def interrupt_after_epoch_2(record, is_best) -> None:
        if record.epoch == 2:
            raise Interrupt

    out = tmp_path / "interrupted"
    with pytest.raises(Interrupt):  # stopped inside the full phase: optimiser state must carry over
        train(TrainConfig(data=str(colours), out=str(out), **FAST), TrainCallbacks(on_epoch_end=interrupt_after_epoch_2))
    assert len(read_history(out / "history.csv")) == 2
    with pytest.raises(CnnlabError, match="--resume"):  # no silent restart over an existing run
        train(TrainConfig(data=str(colours), out=str(out), **FAST))

    resumed = train(TrainConfig(out=str(out), resume=True, workers=0))  # settings come from last.pt
    assert resumed.resumed_from_epoch == 2
    assert [h.key() for h in resumed.history] == [h.key() for h in colour_run.history]
    for name in ("last.pt", "best.pt"):
        a, b = _state(colour_run.out / name), _state(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_early_stopping_ends_each_phase(colours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a validation loss that only rises, each phase stops after `patience` epochs without a
    new best (the full phase compares with the head phase's best)."""
    from cnnlab import train as train_module

    losses = iter(np.arange(1.0, 20.0))
    monkeypatch.setattr(train_module._Predictions, "loss", property(lambda self: float(next(losses))))
    r = train(TrainConfig(
        data=str(colours), out=str(tmp_path / "es"), model="squeezenet1_1", random_weights=True,
        image_size=32, batch_size=16, workers=0, freeze_epochs=5, epochs=5, patience=2,
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
    probe = train(TrainConfig(out=str(tmp_path / "probe"), freeze=True, epochs=3, **common))
    tuned = train(TrainConfig(out=str(tmp_path / "tuned"), freeze_epochs=1, epochs=2, **common))
    assert tuned.evaluated_on == probe.evaluated_on == "test" and tuned.n_test == 16
    assert [h.phase for h in probe.history] == ["head"] * 3
    assert tuned.evaluation["top1"] >= 0.9
    assert tuned.evaluation["top1"] >= probe.evaluation["top1"]


# --------------------------------------------------------------------------------------------
# checkpoints as models
# --------------------------------------------------------------------------------------------


def test_checkpoint_loads_as_a_model_over_the_users_classes(colour_run: TrainResult, colours: Path) -> None:
    path = colour_run.best_path
    loaded = load_model(str(path), device="cpu")
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
    result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(evil), "--workers", "0"])
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


def test_cli_train_then_predict_then_bench(colours: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "colours"
    args = ["train", "--data", str(colours), "--model", "efficientnet_lite0", "--epochs", "2",
            "--image-size", "64", "--batch-size", "8", "--workers", "0", "--out", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "val top-1" in result.stdout and "pretrained weights" in result.stdout
    assert "epoch   1 head" in result.stderr and "epoch   3 full" in result.stderr
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr
    assert (run / "best.pt").is_file() and (run / "curves.png").is_file()

    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already holds a run" in again.stderr

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
    result = runner.invoke(app, ["train", "--data", str(colours), "--model", "squeezenet1_1", "--random-weights",
                                 "--freeze-epochs", "0", "--epochs", "1", "--image-size", "32", "--workers", "0",
                                 "--out", str(tmp_path / "r"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["random_weights"] is True and any("RANDOM" in w for w in data["warnings"])
    assert "RANDOM" in result.stderr
    assert data["head"] == "classifier.1: conv1x1 512 -> 3"
    assert [h["phase"] for h in data["history"]] == ["full"]


def test_invalid_settings_are_refused(colours: Path, tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="schedule"):
        train(TrainConfig(data=str(colours), out=str(tmp_path / "x"), schedule="linear"))
    with pytest.raises(CnnlabError, match="nothing to resume"):
        train(TrainConfig(out=str(tmp_path / "none"), resume=True))
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "no such folder" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_precision_on_cuda(colours: Path, tmp_path: Path) -> None:
    r = train(TrainConfig(data=str(colours), out=str(tmp_path / "gpu"), device="cuda", **FAST))
    assert r.precision in ("bf16", "fp16") and r.device.startswith("cuda")
    assert r.evaluation["top1"] >= 0.99
    loaded = load_model(str(r.best_path), device="cpu")  # a GPU-trained checkpoint loads on the CPU
    assert loaded.categories == ("blue", "green", "red")
