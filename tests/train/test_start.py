"""Continued training from a checkpoint, the learning-rate finder and TensorBoard logs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.models.checkpoint import read_checkpoint
from cnnlab.models.leakage import overlap
from cnnlab.models.load import load_torch
from cnnlab.options import RuntimeOptions
from cnnlab.progress import Progress
from cnnlab.train import TrainConfig, TrainResult, fine_tune
from tests.helpers.images import make_colours

runner = CliRunner()
#: efficientnet_lite0's real weights at 32 px: seconds per run.
SMALL = {"model": "efficientnet_lite0", "image_size": 32, "workers": 0}


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colours(tmp_path_factory.mktemp("continue") / "colours")


@pytest.fixture(scope="module")
def parent(colours: Path) -> TrainResult:
    return fine_tune(TrainConfig(data=str(colours), out=str(colours.parent / "parent"), epochs=1, **SMALL))


def test_same_classes_continue_with_the_trained_head(parent: TrainResult, colours: Path, tmp_path: Path) -> None:
    child = fine_tune(TrainConfig(data=str(colours), out=str(tmp_path / "child"), epochs=1,
                                  **{**SMALL, "model": str(parent.best_path)}))
    assert [h.phase for h in child.history] == ["full"]  # no probe: the head is kept
    assert child.head.endswith("(kept)") and child.arch == parent.arch
    ckpt = read_checkpoint(child.best_path)
    assert ckpt["train_args"]["continued_from"] == str(parent.best_path)
    assert ckpt["preprocessing"]["crop_size"] == 32  # the parent's preprocessing
    assert ckpt["data_record"]["inherited"]["from"] == str(parent.best_path)
    assert load_torch(str(child.best_path), RuntimeOptions(device="cpu")).categories == ("blue", "green", "red")


def test_new_classes_get_a_new_head_and_inherit_the_record(parent: TrainResult, tmp_path: Path) -> None:
    data = tmp_path / "two"
    make_colours(data, per_class=8, seed=5)
    shutil.rmtree(data / "green")
    (data / "blue").rename(data / "navy")
    child = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "child"), epochs=1,
                                  **{**SMALL, "model": str(parent.best_path)}))
    assert child.classes == ["navy", "red"] and [h.phase for h in child.history] == ["probe", "full"]
    assert child.head == "_fc: linear 1280 -> 2"
    parent_train = [parent.out / p for p, _, split in (line.split(",") for line in  # relative to the CSV
                    (parent.out / "data_split.csv").read_text().splitlines()[1:]) if split == "train"]
    report = overlap(child.best_path, parent_train[:3])  # the parent's training images count as seen
    assert report.counts["parent train"] == 3 and report.overlapping == 3


def test_continuing_refuses_weights_options(parent: TrainResult, colours: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(colours), "--model", str(parent.best_path),
                                 "--random-weights", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "checkpoint with its own weights" in result.stderr
    assert not (tmp_path / "x" / "best.pt").exists()


def test_find_lr_writes_a_plot_and_suggests_a_value(colours: Path, tmp_path: Path) -> None:
    from cnnlab.runtime import allocator

    out = tmp_path / "lr"
    checks = allocator.checks
    result = runner.invoke(app, ["train", "--find-lr", str(colours), "--model", "squeezenet1_1",
                                 "--random-weights", "--image-size", "32", "--workers", "0", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "suggested --lr" in result.stdout and "fastai's valley" in result.stdout
    assert "fastai's rules: valley" in result.stdout and "minimum" in result.stdout and "slide" in result.stdout
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "lr,loss,smoothed_loss" and 10 < len(rows) <= 101
    assert allocator.checks - checks >= len(rows) - 1  # every step may give free heap pages back
    lrs = [float(r.split(",")[0]) for r in rows[1:]]
    assert lrs[0] == pytest.approx(1e-7) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert not (out / "best.pt").exists() and not (out / "data_split.csv").exists()  # nothing trained for good


def test_the_suggestion_rule_on_both_kinds_of_curve() -> None:
    from cnnlab.train.lr_find import MIN_FALL, suggest, valley_fall

    lrs = [10 ** (-7 + i / 10) for i in range(80)]
    falling = [2.0 - 1.8 * min(i, 50) / 50 + (0.2 * (i - 60) if i > 60 else 0) for i in range(80)]  # random head
    flat = [0.01 + (0.05 * (i - 55) if i > 55 else 0) for i in range(80)]  # after the probe: flat, then rising
    assert lrs[8] < (suggest(lrs, falling, 3) or 0) < lrs[50]  # fastai's valley: inside the fall
    assert valley_fall(lrs, falling) > 1.0
    assert valley_fall(lrs, flat) < MIN_FALL * math.log(3)  # no fall to suggest from: find_lr warns
    assert suggest([], [], 3) is None


def test_tensorboard_event_files_next_to_history(colours: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = fine_tune(TrainConfig(data=str(colours), out=str(tmp_path / "tb"), epochs=1, tensorboard=True, **SMALL))
    events = EventAccumulator(str(r.out / "tensorboard"))
    events.Reload()
    assert {"loss/train", "loss/val", "accuracy/val", "lr/head", "lr/backbone"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/val")] == [0, 1]  # the probe, then epoch 1
    assert events.Scalars("accuracy/val")[-1].value == pytest.approx(r.history[-1].val_acc)


def test_tensorboard_missing_is_a_usage_error_before_any_work(colours: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.train import tblog

    real = tblog.importlib.util.find_spec
    monkeypatch.setattr(tblog.importlib.util, "find_spec", lambda name: None if name == "tensorboard" else real(name))
    result = runner.invoke(app, ["train", str(colours), "--tensorboard", "--out", str(tmp_path / "t")])
    assert result.exit_code == 2 and "pip install 'cnnlab[tensorboard]'" in result.stderr
    assert not (tmp_path / "t").exists()


def test_ema_checkpoint_holds_the_averaged_weights(colours: Path, tmp_path: Path) -> None:
    r = fine_tune(TrainConfig(data=str(colours), out=str(tmp_path / "ema"), epochs=1, ema=True, **SMALL))
    last = torch.load(r.last_path, weights_only=True)
    averaged = last["resume"]["ema"]
    assert int(averaged["n_averaged"]) > 1
    assert torch.equal(averaged["module._fc.weight"], last["state_dict"]["_fc.weight"])
    assert not torch.equal(last["resume"]["model"]["_fc.weight"], last["state_dict"]["_fc.weight"])


def test_a_run_whose_checkpoints_have_the_previous_format_resumes(parent: TrainResult, tmp_path: Path) -> None:
    """Runs of the previous release stored their resolved settings as ``*_resolved`` keys of ``train_args``, not
    under ``resolved``: resume reads them, and their last.pt and best.pt still load."""
    run = tmp_path / "old"
    shutil.copytree(parent.out, run)
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        resolved = ckpt.pop("resolved")
        assert resolved["bn"] == "frozen" and resolved["frozen_stride"] == 4  # pretrained weights
        # values that differ from what the run would resolve now, to tell that they are read back
        ckpt["train_args"].update(bn_resolved="train", frozen_stride_resolved=1, probe_resolved=True,
                                  train_size_resolved=resolved["train_size"], precision_resolved="fp32")
        torch.save(ckpt, run / name)
    resumed = fine_tune(TrainConfig(out=str(run), resume=True, workers=0))
    assert resumed.resumed_from_epoch == 1 and resumed.bn == "train"
    assert resumed.resolved is not None and (resumed.resolved.bn, resumed.resolved.frozen_stride) == ("train", 1)
    metrics = json.loads((run / "metrics.json").read_text())  # reported in the new format
    assert metrics["resolved"]["bn"] == "train" and "bn_resolved" not in metrics["train_args"]
    assert load_torch(str(run / "last.pt"), RuntimeOptions(device="cpu")).categories == ("blue", "green", "red")


class _Passes(Progress):
    """The passes a run makes over its images: (task, description, images) of every task started."""

    def __init__(self) -> None:
        self.passes: list[tuple[str, str, float | None]] = []

    def start(self, key: str, description: str, *, total: float | None = None, completed: float = 0) -> None:
        self.passes.append((key, description, total))

    def tasks(self) -> set[str]:
        """The tasks that ran a network over images (not the refit's own regressions)."""
        return {key for key, description, _ in self.passes if not description.startswith("refit: the head")}


def _cats_and_dogs(root: Path) -> Path:
    data = make_colours(root, per_class=6, broken=False, classes=("blue", "red"))
    (data / "blue").rename(data / "cat")
    (data / "red").rename(data / "dog")
    return data


def _head(out: Path) -> torch.Tensor:
    best = read_checkpoint(out / "best.pt")
    return best["state_dict"][f"{best['head']['path']}.weight"]


def test_the_splits_features_serve_the_probe_zero_shot_and_refit(tmp_path: Path) -> None:
    """The split runs the offline model over the training images to find crops of one photo; a run that fine-tunes
    that model from its pretrained weights at its own size takes the probe's, the zero-shot figure's and (the
    network unchanged) the refit's features from that pass instead of running the model over them again."""
    data = _cats_and_dogs(tmp_path / "data")
    common = {"data": str(data), "freeze": True, "model": "efficientnet_lite0", "batch_size": 8, "workers": 0,
              "val_fraction": 0.5}
    shared, own = _Passes(), _Passes()
    reused = fine_tune(TrainConfig(out=str(tmp_path / "reused"), **common), progress=shared)
    plain = fine_tune(TrainConfig(out=str(tmp_path / "plain"), crops=False, **common), progress=own)
    assert "features" in shared.tasks() and not shared.tasks() & {"probe", "zero-shot", "refit"}
    assert "features" not in own.tasks() and {"probe", "zero-shot", "refit"} <= own.tasks()
    # the same figures as from the run's own passes (the split's model runs with folded batch norms)
    assert reused.zero_shot == plain.zero_shot and reused.zero_shot is not None
    assert torch.allclose(_head(reused.out), _head(plain.out), atol=1e-4)
    assert reused.evaluation["top1"] == plain.evaluation["top1"]


@pytest.mark.parametrize("other", ["image_size", "random_weights", "weights"])
def test_a_run_from_another_network_computes_its_own_features(other: str, tmp_path: Path) -> None:
    """Another preprocessing, random weights or a weights file: the split's features are not this network's."""
    data = _cats_and_dogs(tmp_path / "data")
    settings: dict[str, object] = {"image_size": {"image_size": 64}, "random_weights": {"random_weights": True}}.get(
        other, {})
    if other == "weights":  # the very same weights, given as a file: the run cannot know, so it computes its own
        weights = tmp_path / "lite0.pt"
        torch.save(load_torch("efficientnet_lite0", RuntimeOptions(device="cpu", fold_bn=False)).module.state_dict(),
                   weights)
        settings = {"weights": str(weights)}
    passes = _Passes()
    fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "run"), freeze=True, model="efficientnet_lite0",
                          batch_size=8, workers=0, val_fraction=0.5, **settings), progress=passes)
    assert {"features", "probe"} <= passes.tasks()


def test_a_resumed_run_ends_as_the_uninterrupted_one_when_its_refit_reuses_the_splits_features(tmp_path: Path) -> None:
    """At a rate this high no epoch beats the probe: best.pt is the probe's network, whose refit takes the split's
    features; the resumed process must take them too, or its head differs in the sixth decimal."""
    data = _cats_and_dogs(tmp_path / "data")

    class Interrupt(Exception):
        pass

    class StopAfterTheProbe(Progress):
        def finish(self, key: str, message: str | None = None) -> None:
            if key == "epoch":
                raise Interrupt

    common = {"data": str(data), "model": "efficientnet_lite0", "epochs": 1, "lr": 1.0, "batch_size": 8,
              "workers": 0, "val_fraction": 0.5}
    whole = fine_tune(TrainConfig(out=str(tmp_path / "whole"), **common))
    with pytest.raises(Interrupt):
        fine_tune(TrainConfig(out=str(tmp_path / "parts"), **common), progress=StopAfterTheProbe())
    passes = _Passes()
    resumed = fine_tune(TrainConfig(out=str(tmp_path / "parts"), resume=True, workers=0), progress=passes)
    assert whole.refit is not None and (whole.best_epoch == 0 or whole.weight_mix == 0.0)
    assert "features" in passes.tasks() and "refit" not in passes.tasks()
    a, b = read_checkpoint(whole.out / "best.pt")["state_dict"], read_checkpoint(resumed.out / "best.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_mix_validates_only_the_points_between_the_probe_and_the_best_epoch(tmp_path: Path) -> None:
    """Shares 0 and 1 are the probe and the best epoch, validated when they were trained."""
    data = make_colours(tmp_path / "data", broken=False)
    passes = _Passes()
    result = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=2, batch_size=8, **SMALL),
                       progress=passes)
    mixing = [p for p in passes.passes if p[1] == "mixing with the probe"]
    assert len(mixing) == 3 and result.best_epoch
    scores = {s.share: (s.accuracy, s.loss) for s in result.mix_scores}
    history = {r.epoch: (r.val_acc, r.val_loss) for r in result.history}
    assert scores[0.0] == history[0] and scores[1.0] == history[result.best_epoch]
