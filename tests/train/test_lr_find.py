"""Review of `cnnlab train` (issue 10): edge cases found by trying the command as a user and as an attacker."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.train import TrainConfig
from cnnlab.train.lr_find import (
    FLAT_DIVISOR,
    FLAT_RULE,
    LRFinderResult,
    apply_rules,
    find_lr,
    rise_onset,
    suggest_rules,
    valley_fall,
    y_axis,
)
from tests.helpers.images import make_two_colours
from tests.helpers.runs import SMALL_TRAIN_ARGS as SMALL

runner = CliRunner()




def test_class_of_only_unreadable_files_is_refused(tmp_path: Path) -> None:
    """A class folder whose files all fail to decode would be a class the head can never learn."""
    data = make_two_colours(tmp_path / "data")
    (data / "broken").mkdir()
    for i in range(5):
        (data / "broken" / f"{i}.jpg").write_bytes(b"not an image")
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--freeze", *SMALL])
    assert result.exit_code == 2, result.output
    assert "broken" in result.stderr and "could be decoded" in result.stderr
    assert not (tmp_path / "run" / "best.pt").exists()
    # found by review: the failed run left data_split.csv, so the next run into the folder was refused
    assert not (tmp_path / "run" / "data_split.csv").exists()
    shutil.rmtree(data / "broken")
    again = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--freeze", *SMALL])
    assert again.exit_code == 0, again.output
    resume = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "other"), "--resume", *SMALL])
    assert resume.exit_code == 2 and "nothing to resume" in resume.stderr


def test_find_lr_skips_a_one_image_batch_while_batchnorm_trains(tmp_path: Path) -> None:
    """Undecodable files can leave a batch of one image; the range test crashed in BatchNorm on it."""
    data = make_two_colours(tmp_path / "data", per_class=2)
    for name in ("blue", "red"):
        for i in range(2):
            (data / name / f"bad{i}.png").write_bytes(b"not an image")
    config = TrainConfig(data=str(data), out=str(tmp_path / "lr"), probe=False, val_fraction=0.0, bn="train",
                         model="efficientnet_lite0", image_size=32, workers=0, batch_size=2)
    result = find_lr(config, steps=12)
    assert len(result.lrs) == 12 and result.suggestion is not None
    assert (tmp_path / "lr" / "lr_find.csv").is_file()


def test_out_inside_the_data_folder_is_refused(tmp_path: Path) -> None:
    """A run folder inside the class folders became a class (curves.png its image) of the next run."""
    data = make_two_colours(tmp_path / "data")
    for out in (data / "run", data / "red", data):
        result = runner.invoke(app, ["train", str(data), "--out", str(out), "--freeze", *SMALL])
        assert result.exit_code == 2, result.output
        assert "the data folder" in result.stderr and "would read its files as images" in result.stderr
    assert sorted(p.name for p in data.iterdir()) == ["blue", "red"]
    assert list(data.rglob("*.png")) and not list(data.rglob("curves.png"))
    hidden = data / ".cnnlab" / "run"  # a hidden folder is never read as data: allowed
    result = runner.invoke(app, ["train", str(data), "--out", str(hidden), "--freeze", *SMALL])
    assert result.exit_code == 0, result.output
    assert (hidden / "best.pt").is_file()


def test_model_checkpoint_that_does_not_fit_its_architecture_gives_a_short_error(tmp_path: Path) -> None:
    """The error listed every missing and unexpected key: tens of kilobytes on the terminal."""
    data = make_two_colours(tmp_path / "data")
    first = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "a"), "--freeze", *SMALL])
    assert first.exit_code == 0, first.output
    ckpt = torch.load(tmp_path / "a" / "best.pt", weights_only=False)
    ckpt["arch"] = "mobilenet_v3_small"
    torch.save(ckpt, tmp_path / "other.pt")
    args = ["train", str(data), "--out", str(tmp_path / "b"), "--freeze", *SMALL]
    args[args.index("--model") + 1] = str(tmp_path / "other.pt")
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "do not fit mobilenet_v3_small" in result.stderr and len(result.stderr) < 2000


def test_onnx_model_is_refused_with_advice_for_train(tmp_path: Path) -> None:
    """The refusal suggested --backend, an option train does not have."""
    data = make_two_colours(tmp_path / "data")
    (tmp_path / "m.onnx").write_bytes(b"\\x08\\x07")
    args = ["train", str(data), "--out", str(tmp_path / "b"), "--freeze", *SMALL]
    args[args.index("--model") + 1] = str(tmp_path / "m.onnx")
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "ONNX" in result.stderr and "--backend" not in result.stderr


def test_classes_that_differ_only_in_case_are_warned_about(tmp_path: Path) -> None:
    data = make_two_colours(tmp_path / "data")
    (data / "red").rename(data / "Blue")
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--freeze", *SMALL])
    assert result.exit_code == 0, result.output
    assert "differ only in case" in result.stderr and "'Blue', 'blue'" in result.stderr


@pytest.mark.slow
def test_resume_with_two_processes(tmp_path: Path) -> None:
    """Every rank but 0 was given overwrite=True next to resume=True and stopped at the settings check."""
    data = make_two_colours(tmp_path / "data")
    out = tmp_path / "run"
    args = [str(data), "--out", str(out), *SMALL]
    first = runner.invoke(app, ["train", *args, "--epochs", "1", "--freeze-epochs", "0", "--no-probe"])
    assert first.exit_code == 0, first.output
    cmd = [sys.executable, "-m", "cnnlab", "train", "--out", str(out), "--resume", "--workers", "0", "--nproc", "2", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "exclude each other" not in proc.stderr


def test_without_held_out_images_no_evaluation_on_validation_images_is_claimed(tmp_path: Path) -> None:
    """With one image per class nothing is held out; the run said it evaluated on the validation images."""
    data = make_two_colours(tmp_path / "data", per_class=1)
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--freeze", *SMALL])
    assert result.exit_code == 0, result.output
    assert "uses the validation images" not in result.stderr and "no held-out figure" in result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["evaluated_on"] is None and "validation figures" not in metrics["note"]


def test_freeze_with_ema_or_mixup_says_they_are_not_used(tmp_path: Path) -> None:
    data = make_two_colours(tmp_path / "data")
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--freeze", "--ema",
                                 "--mixup", "0.2", *SMALL])
    assert result.exit_code == 0, result.output
    assert "--ema, --mixup act on SGD epochs" in result.stderr


def test_tensorboard_that_does_not_import_is_a_usage_error(tmp_path: Path) -> None:
    """Found by find_spec but failing to import, tensorboard crashed the run with a traceback after the run
    folder was prepared."""
    fake = tmp_path / "site" / "tensorboard"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: needs a newer protobuf')\n")
    data = make_two_colours(tmp_path / "data")
    src = Path(__file__).resolve().parents[2] / "src"
    cmd = [sys.executable, "-m", "cnnlab", "train", str(data), "--out", str(tmp_path / "run"), "--freeze",
           "--tensorboard", *SMALL]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(src)])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "does not import" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_image_size_near_the_input_limit_trains_and_above_it_is_a_usage_error(tmp_path: Path) -> None:
    """--image-size 2000 scaled the resize to 2286, over the 2048 limit: a ValueError traceback."""
    data = make_two_colours(tmp_path / "data", per_class=1)
    args = ["train", str(data), "--freeze", *SMALL, "--batch-size", "2"]
    args[args.index("--image-size") + 1] = "2000"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    args[args.index("--image-size") + 1] = "4096"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and not isinstance(result.exception, ValueError)


def test_unknown_model_or_missing_checkpoint_is_refused_before_the_data_are_read(tmp_path: Path) -> None:
    """A typo in --model was found only after every image had been scanned and hashed."""
    missing_data = tmp_path / "no-such-data"  # reading the data would be an error of its own
    for model, expected in (("efficientnet_lite", "efficientnet_lite0"), (str(tmp_path / "gone.pt"), "no such checkpoint")):
        result = runner.invoke(app, ["train", str(missing_data), "--out", str(tmp_path / "run"), "--model", model])
        assert result.exit_code == 2, result.output
        assert expected in result.stderr and "no-such-data" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_find_lr_warns_when_the_loss_never_rose(tmp_path: Path) -> None:
    """On a few easy images the loss stayed flat up to the largest rate, and --find-lr suggested 1.0 as if it
    had found something."""
    data = make_two_colours(tmp_path / "data", per_class=4)
    config = TrainConfig(data=str(data), out=str(tmp_path / "lr"), model="efficientnet_lite0", image_size=32,
                         workers=0, val_fraction=0.0, probe=False, augment="none")  # a steady loss near ln(2)
    flat = find_lr(config, start_lr=1e-9, end_lr=1e-7, steps=6)  # rates far too small to break anything
    assert flat.suggestion is not None and 1e-9 <= flat.suggestion <= 1e-7
    assert flat.warning and "never rose" in flat.warning
    assert flat.to_dict()["warning"] == flat.warning
    broken = find_lr(config, start_lr=1e-3, end_lr=1e4, steps=30)  # rates that do break training
    assert broken.warning is None and broken.suggestion is not None and broken.suggestion < 1e3


def test_resuming_a_finished_run_says_so(tmp_path: Path) -> None:
    """--resume of a run that had finished evaluated it again without a word."""
    data = make_two_colours(tmp_path / "data")
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", *SMALL]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "had finished (epoch 1): nothing is left to train" in again.stderr


def test_model_folder_and_checkpoint_with_other_weights_are_refused_before_the_data_are_read(tmp_path: Path) -> None:
    data = make_two_colours(tmp_path / "data")
    first = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "a"), "--freeze", *SMALL])
    assert first.exit_code == 0, first.output
    missing_data = str(tmp_path / "no-such-data")
    folder = runner.invoke(app, ["train", missing_data, "--out", str(tmp_path / "b"), "--model", str(tmp_path / "a")])
    assert folder.exit_code == 2 and "is a folder" in folder.stderr and "best.pt" in folder.stderr, folder.output
    weights = runner.invoke(app, ["train", missing_data, "--out", str(tmp_path / "b"),
                                  "--model", str(tmp_path / "a" / "best.pt"), "--random-weights"])
    assert weights.exit_code == 2 and "do not apply" in weights.stderr, weights.output
    assert not (tmp_path / "b").exists()


def test_layer_and_crop_options_the_run_does_not_use_are_named(tmp_path: Path) -> None:
    data = make_two_colours(tmp_path / "data")
    probe_only = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "a"), "--freeze",
                                     "--frozen-stride", "8", "--train-size-ratio", "0.5", *SMALL])
    assert probe_only.exit_code == 0, probe_only.output
    assert "--frozen-stride, --train-size-ratio act on SGD epochs" in probe_only.stderr
    plain = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "b"), "--epochs", "1",
                                "--augment", "none", "--train-size-ratio", "0.5", *SMALL])
    assert plain.exit_code == 0, plain.output
    assert "--train-size-ratio is not used" in plain.stderr


def _u_curve(steps: int = 100) -> tuple[list[float], list[float]]:
    """A range test as fastai draws it: flat at 2, falling from 1e-5 to a minimum of 0.5 at 1e-2, then rising."""
    lrs = [1e-7 * (1e8 ** (i / (steps - 1))) for i in range(steps)]
    losses = []
    for lr in lrs:
        x = math.log10(lr)
        losses.append(2.0 if x < -5 else 2.0 - 0.5 * (x + 5) if x < -2 else 0.5 + 3.0 * (x + 2) ** 2)
    return lrs, losses


def test_fastais_rules_on_a_curve_that_falls_then_rises() -> None:
    lrs, losses = _u_curve()
    rules = suggest_rules(lrs, losses)
    assert set(rules) == {"valley", "minimum", "steep", "slide"}
    assert 1e-5 < rules["valley"] < 1e-2  # inside the fall, not at its bottom
    assert 5e-4 < rules["minimum"] < 2e-3  # the rate of the lowest loss (1e-2) / 10
    assert 1e-5 <= rules["steep"] < 1e-2
    assert valley_fall(lrs, losses) > 1.0


def test_a_flat_curve_has_no_fall_to_suggest_from() -> None:
    """After a probe that fits the training images the loss is flat near zero until it breaks; the previous rule
    read the noise as the start of the rise and suggested --lr 1.35e-07."""
    lrs, _ = _u_curve()
    flat = [0.003 + 0.0005 * ((i * 7919) % 13) / 13 for i in range(80)] + [0.003 * 1.4 ** k for k in range(20)]
    assert valley_fall(lrs, flat) < 0.05 * math.log(2)


def test_the_plot_axis_shows_the_whole_curve() -> None:
    """lr_find.png's y axis was clipped at 4 x the lowest loss: most of the curve was off the chart."""
    values = [0.01, 0.02, 5.0, 30.0, math.inf, math.nan]
    low, high, scale = y_axis(values) or (0, 0, "")
    assert scale == "log" and low <= 0.01 and high >= 30.0
    low, high, scale = y_axis([0.6, 0.7, 2.0]) or (0, 0, "")
    assert scale == "linear" and low < 0.6 and high > 2.0
    assert y_axis([math.nan]) is None


def test_after_a_probe_that_fits_the_curve_is_flat_and_the_suggestion_is_below_the_rise(tmp_path: Path) -> None:
    """The issue's run: after the probe the loss was flat near zero and the finder suggested --lr 1.35e-07."""
    data = make_two_colours(tmp_path / "data", per_class=4)
    config = TrainConfig(data=str(data), out=str(tmp_path / "lr"), model="efficientnet_lite0", image_size=32,
                         workers=0, val_fraction=0.0, augment="none", lr=1e-3)
    result = find_lr(config, start_lr=1e-6, end_lr=100.0, steps=40)
    assert result.warning and "did not fall" in result.warning and result.rule == FLAT_RULE
    assert result.suggestion == min(TrainConfig().lr, result.rules["rise"] / FLAT_DIVISOR)
    assert "(--lr 0.001 was given: the range test does not depend on it)" in result.warning  # not the user's rate


def _flat_then_rising(steps: int = 100, onset: float = 1e-2, seed: int = 0) -> tuple[list[float], list[float]]:
    """The curve measured after a probe that fits real photos: flat near 0.01 with noise, rising from ``onset``."""
    generator = torch.Generator().manual_seed(seed)
    lrs = [1e-7 * (1e8 ** (i / (steps - 1))) for i in range(steps)]
    noise = (torch.rand(steps, generator=generator) * 0.008).tolist()
    return lrs, [0.008 + n + (0.0 if lr < onset else 0.5 * math.log10(lr / onset) + 0.1) for lr, n in zip(lrs, noise)]


def test_on_a_flat_curve_the_suggestion_is_the_default_or_below_the_rise() -> None:
    """On real photos after the probe, fastai's valley and minimum read the noise of the flat part (1e-7 .. 1e-3),
    and the sweep's rates scored alike: the default stands, unless training breaks below three times it."""
    default = TrainConfig().lr
    for seed in range(3):
        lrs, losses = _flat_then_rising(seed=seed)  # rises from 1e-2: a third of that is above the default
        onset = rise_onset(lrs, losses, num_classes=4)
        assert onset is not None and 1e-2 <= onset < 1.5e-2
        result = apply_rules(LRFinderResult("full", lrs=lrs, losses=losses, smoothed=losses), classes=4, images=50)
        assert result.rule == FLAT_RULE and result.warning and "did not fall" in result.warning
        assert result.rules["rise"] == onset and result.suggestion == default
        assert "the suggestion is the default" in result.warning
        lrs, losses = _flat_then_rising(onset=1e-3, seed=seed)  # breaks early: a third of the rise, below it
        early = rise_onset(lrs, losses, num_classes=4)
        assert early is not None and 1e-3 <= early < 1.5e-3
        result = apply_rules(LRFinderResult("full", lrs=lrs, losses=losses, smoothed=losses), classes=4, images=50)
        assert result.suggestion == pytest.approx(early / FLAT_DIVISOR)
        assert result.warning and "default --lr 0.002 is above it" in result.warning
        assert "keep the default" not in result.warning  # the default would break training here
    assert rise_onset(lrs, [0.01] * len(lrs), num_classes=4) is None  # never rose: no onset


def test_a_curve_that_falls_keeps_fastais_valley() -> None:
    lrs, losses = _u_curve()
    result = apply_rules(LRFinderResult("full", lrs=lrs, losses=losses, smoothed=losses), classes=4, images=50)
    assert result.warning is None and result.suggestion == result.rules["valley"]
