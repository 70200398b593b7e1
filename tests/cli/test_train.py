"""Small defects of `cnnlab train` found after the review: duplicated or irrelevant warnings, the resume note,
the capped training crop, and two runs writing into one run folder."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.train import lr_find
from tests.helpers.images import make_two_colours
from tests.helpers.runs import SMALL_TRAIN_ARGS as SMALL

runner = CliRunner()


def test_find_lr_says_once_that_the_loss_never_rose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning came twice: as a warning note on stderr and again on stdout under the suggestion."""
    data = make_two_colours(tmp_path / "data", per_class=4)
    # rates far too small to break anything: the loss stays flat (the CLI's own range would take 100 steps)
    monkeypatch.setattr(lr_find, "find_lr", functools.partial(lr_find.find_lr, start_lr=1e-9, end_lr=1e-7, steps=6))
    result = runner.invoke(app, ["train", "--find-lr", str(data), "--out", str(tmp_path / "lr"),
                                 "--no-probe", "--val-fraction", "0", "--augment", "none", *SMALL])
    assert result.exit_code == 0, result.output
    assert "suggested --lr " in result.stdout and "fastai's rules: valley" in result.stdout
    assert (result.stdout + result.stderr).count("never rose") == 1, result.output


def test_find_lr_leaves_out_the_plan_warnings_about_steps_and_validation(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The range test runs its own number of steps and validates nothing, yet warned that the phase had too few
    optimiser steps and that there were no validation images."""
    data = make_two_colours(tmp_path / "data", per_class=4)
    monkeypatch.setattr(lr_find, "find_lr", functools.partial(lr_find.find_lr, steps=3))
    result = runner.invoke(app, ["train", "--find-lr", str(data), "--out", str(tmp_path / "lr"),
                                 "--no-probe", "--val-fraction", "0", "--random-weights", *SMALL])
    assert result.exit_code == 0, result.output
    assert "optimiser steps (" not in result.stderr and "validation" not in result.stderr, result.stderr
    assert "held-out" not in result.stderr
    assert "starting from RANDOM weights" in result.stderr  # a warning that does apply stays


def test_resuming_a_finished_run_leaves_out_the_training_warnings(tmp_path: Path) -> None:
    """--resume of a finished run only evaluates best.pt again, yet repeated the warnings about its training."""
    data = make_two_colours(tmp_path / "data", per_class=4)
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--no-probe",
            "--val-fraction", "0", *SMALL]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "fewer than the 24 a schedule needs" in first.stderr and "no validation images" in first.stderr
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "had finished (epoch 1)" in again.stderr
    assert "optimiser steps" not in again.stderr and "no validation images" not in again.stderr, again.stderr
    assert "no held-out figure" in again.stderr  # still true of the evaluation it does again


def test_resume_note_names_the_frozen_stride_the_run_resolved(tmp_path: Path) -> None:
    """The note on ignored settings said "the run uses None" for a run whose frozen stride had resolved to 4."""
    data = make_two_colours(tmp_path / "data", per_class=4)
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--no-probe", *SMALL]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "frozen stride 4" in first.stderr  # pretrained weights: the default resolves to 4
    other = runner.invoke(app, [*args, "--resume", "--frozen-stride", "2"])
    assert other.exit_code == 0, other.output
    assert "frozen_stride=2 (the run uses 4)" in other.stderr, other.stderr
    assert "None" not in other.stderr
    assert "predicted" not in first.stdout
    same = runner.invoke(app, [*args, "--resume", "--frozen-stride", "4", "--wide"])
    assert same.exit_code == 0, same.output
    assert "frozen_stride" not in same.stderr  # what the run uses: nothing is ignored
    assert "predicted" in same.stdout  # --wide: every column of the per-class table


def test_training_crops_capped_at_the_input_limit_are_warned_about(tmp_path: Path) -> None:
    """--image-size 1100 --train-size-ratio 2 trained on 2048 px crops instead of 2200 px without a word."""
    data = make_two_colours(tmp_path / "data", per_class=1)
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--no-probe",
            "--val-fraction", "0", "--train-size-ratio", "2", "--image-size", "1100", "--batch-size", "2",
            "--model", "mobilenet_v3_small", "--random-weights", "--workers", "0"]  # the cheapest at 2048 px
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("capped at 2048 px") == 1, result.stderr
    assert "asks for 2200 px training crops" in result.stderr
    assert "2048 px training crops (evaluation 1100 px)" in result.stderr


def test_a_run_folder_in_use_is_refused(tmp_path: Path) -> None:
    """Two `cnnlab train` runs into one --out both wrote there; a run now locks its folder (released by the OS if
    it dies), and a second one exits 2 before it writes anything."""
    import fcntl

    data = make_two_colours(tmp_path / "data", per_class=2)
    out = tmp_path / "run"
    out.mkdir()
    args = [str(data), "--out", str(out), "--freeze", *SMALL]
    with (out / ".lock").open("a+") as held:  # as a run in another process holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        for command in (["train", *args], ["train", *args, "--overwrite"],
                        ["train", *[a for a in args if a != "--freeze"], "--find-lr"]):
            result = runner.invoke(app, command)
            assert result.exit_code == 2, result.output
            assert "another cnnlab train run is writing to" in result.stderr, result.stderr
            assert [p.name for p in out.iterdir()] == [".lock"]
    result = runner.invoke(app, ["train", *args])  # the lock released: the run goes ahead
    assert result.exit_code == 0, result.output
    assert (out / "best.pt").is_file()
    again = runner.invoke(app, ["train", *args, "--overwrite"])  # and the finished run released it too
    assert again.exit_code == 0, again.output


def test_many_classes_get_a_one_line_summary_of_their_counts(tmp_path: Path) -> None:
    """With 1,000 classes the counts were one line of 1,000 entries, and the summary a table of 1,000 rows; beyond
    30 classes the run names the range, the median and the classes with the fewest images, the table the 15 least
    accurate classes, and metrics.json keeps every class."""
    import json
    import re

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for c in range(40):
        (data / f"c{c:02d}").mkdir(parents=True)
        for i in range(3 if c == 7 else 5):  # c07 has the fewest images
            array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(array).save(data / f"c{c:02d}" / f"{i}.png")
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--freeze",
                                 "--val-fraction", "0.2", "--random-weights", *SMALL])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stderr.splitlines() if line.startswith("train images per class"))
    assert re.fullmatch(r"train images per class: 2-4 \(median 4\) over 40 classes; fewest: c07 2, .* \(all in "
                        r"metrics.json\)", line), line
    assert "c39" not in line
    assert "per class (val): the 15 least accurate of 40 classes (all in metrics.json)" in result.stdout
    rows = [row for row in result.stdout.splitlines() if re.match(r"\W+c\d\d\s+\W\s+\d", row)]
    assert len(rows) == 15, result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["class_counts"]) == 40 and metrics["class_counts"]["c07"] == 2
    assert len(metrics["val"]["per_class"]) == 40


def test_data_is_the_first_argument_and_data_option_a_deprecated_alias(tmp_path: Path) -> None:
    """`cnnlab train DATA`, as every command that reads a data set; `--data DATA` still works, with a warning."""
    missing = tmp_path / "no-such-data"
    for args in (["train", str(missing)], ["train", "--data", str(missing)], ["train", "-d", str(missing)]):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "run"), "--freeze"])
        assert result.exit_code == 2, result.output
        assert "no-such-data" in result.stderr  # the data reached the run either way
        assert ("deprecated" in result.stderr) == (args[1] != str(missing)), result.stderr
    both = runner.invoke(app, ["train", str(missing), "--data", str(missing)])
    assert both.exit_code == 2 and "give the data once" in both.output
    assert not (tmp_path / "run").exists()


def test_the_summary_names_every_file_the_run_wrote_report_html_included(tmp_path: Path) -> None:
    """The "files" row left out report.html, which every run writes."""
    data = make_two_colours(tmp_path / "data", per_class=4)
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--freeze", *SMALL],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    row = result.stdout[result.stdout.index("│ files"):]
    row = re.sub(r"[│\s]", "", row[:row.index("└")])  # the row, unwrapped (a long folder wraps the cell)
    listed = row.split(":", 1)[1].split(",")
    assert listed == ["best.pt", "last.pt", "history.csv", "curves.png", "metrics.json", "data_split.csv",
                      "report.html"]
    assert all((tmp_path / "run" / name).is_file() for name in listed)
