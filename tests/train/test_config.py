"""TrainConfig parses its typed settings once, and the resolved settings a checkpoint stores, in both formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.errors import UsageError
from cnnlab.options import BNPolicy, Precision, Schedule
from cnnlab.train.config import ResolvedSettings, TrainConfig, resumed_config, stored_resolved


def test_typed_settings_are_parsed_when_set_not_when_read() -> None:
    config = TrainConfig(data="d", precision="BF16", schedule="cosine", device=" CPU ")
    assert config.precision is Precision.BF16 and config.schedule is Schedule.COSINE and config.device == "cpu"
    config.bn = "train"  # an assignment is parsed too: the run never meets a string
    assert config.bn is BNPolicy.TRAIN
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        config.precision = "fp8"  # type: ignore[assignment]
    with pytest.raises(UsageError, match="unknown device"):
        TrainConfig(device="tpu")
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_resolved_settings_round_trip_through_a_checkpoint_entry() -> None:
    resolved = ResolvedSettings(bn="train", frozen_stride=1, probe=False, train_size=176, precision="fp32")
    assert resolved.bn is BNPolicy.TRAIN and resolved.precision is Precision.FP32
    entry = resolved.to_dict()
    assert entry == {"bn": "train", "frozen_stride": 1, "probe": False, "train_size": 176, "precision": "fp32"}
    assert ResolvedSettings(**stored_resolved({ResolvedSettings.KEY: entry})) == resolved


def test_checkpoints_of_the_previous_release_keep_their_resolved_settings() -> None:
    """Before ResolvedSettings a run stored what it resolved as ``*_resolved`` keys of ``train_args``; older runs
    stored some or none of them."""
    old = {"train_args": {"bn": "auto", "frozen_stride": None, "bn_resolved": "train", "frozen_stride_resolved": 1,
                          "probe_resolved": True, "train_size_resolved": 32, "precision_resolved": "fp32"}}
    assert stored_resolved(old) == {"bn": "train", "frozen_stride": 1, "probe": True, "train_size": 32,
                                    "precision": "fp32"}
    assert stored_resolved({"train_args": {"bn_resolved": "frozen"}}) == {"bn": "frozen"}
    assert stored_resolved({"train_args": {}}) == {} and stored_resolved({}) == {}
    # the resume note names what the run resolved to, not the stored "auto"/None
    _, notes = resumed_config(TrainConfig(frozen_stride=2, resume=True), old["train_args"], stored_resolved(old))
    assert notes and "frozen_stride=2 (the run uses 1)" in notes[0]


@pytest.mark.parametrize("field", ["lr", "mixup", "color_jitter", "backbone_lr_ratio", "weight_decay"])
def test_numbers_that_cannot_work_are_refused_when_the_config_is_made(field: str) -> None:
    """Issue 27 (and the review): ``--lr inf`` was accepted until after an epoch, ``mixup=inf`` trained."""
    for value in (float("inf"), float("nan")):
        with pytest.raises(UsageError, match=f"{field} must be finite"):
            TrainConfig(**{field: value})
    with pytest.raises(UsageError, match="epochs"):
        TrainConfig(epochs=-1)


def test_the_cli_refuses_an_infinite_learning_rate_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cnnlab.cli import app

    (tmp_path / "data" / "a").mkdir(parents=True)
    result = CliRunner().invoke(app, ["train", str(tmp_path / "data"), "-o", str(tmp_path / "run"), "--lr", "inf"])
    assert result.exit_code == 2 and "lr must be finite" in result.output, result.output
    assert not (tmp_path / "run").exists()
