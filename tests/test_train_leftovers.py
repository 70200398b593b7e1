"""Small defects of `cnnlab train` found after the review: duplicated or irrelevant warnings, the resume note,
the capped training crop, and two runs writing into one run folder."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.finetune import lr_find
from tests.test_train_review10 import SMALL, make_colours

runner = CliRunner()


def test_find_lr_says_once_that_the_loss_never_rose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning came twice: as a warning note on stderr and again on stdout under the suggestion."""
    data = make_colours(tmp_path / "data", per_class=4)
    # rates far too small to break anything: the loss stays flat (the CLI's own range would take 100 steps)
    monkeypatch.setattr(lr_find, "find_lr", functools.partial(lr_find.find_lr, start_lr=1e-9, end_lr=1e-7, steps=6))
    result = runner.invoke(app, ["train", "--find-lr", "--data", str(data), "--out", str(tmp_path / "lr"),
                                 "--no-probe", "--val-fraction", "0", "--augment", "none", *SMALL])
    assert result.exit_code == 0, result.output
    assert "suggested --lr 1.00e-08" in result.stdout
    assert (result.stdout + result.stderr).count("never rose") == 1, result.output
