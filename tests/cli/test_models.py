"""`cnnlab models`: the registry as a table, --wide, --all and a pattern that matches nothing."""

from __future__ import annotations

from typer.testing import CliRunner

from cnnlab.cli import app

runner = CliRunner()


def _header(output: str) -> str:
    return next(line for line in output.splitlines() if "acc@1" in line)


def test_wide_adds_the_weights_file_size_and_license() -> None:
    narrow = runner.invoke(app, ["models", "resnet18"], env={"COLUMNS": "200"})
    wide = runner.invoke(app, ["models", "resnet18", "--wide"], env={"COLUMNS": "200"})
    assert narrow.exit_code == 0 and wide.exit_code == 0, narrow.output + wide.output
    for column in ("weights file", "MB", "license"):
        assert column not in _header(narrow.stdout) and column in _header(wide.stdout)
    assert "resnet18-f37072fd.pth" in wide.stdout


def test_all_lists_every_weights_entry() -> None:
    default = runner.invoke(app, ["models", "resnet50"], env={"COLUMNS": "200"})
    every = runner.invoke(app, ["models", "resnet50", "--all"], env={"COLUMNS": "200"})
    assert "1 models" in default.stdout and "resnet50.IMAGENET1K_V1" not in default.stdout
    assert "resnet50.IMAGENET1K_V1" in every.stdout and "resnet50.IMAGENET1K_V2" in every.stdout


def test_no_match_exits_1_with_a_message() -> None:
    result = runner.invoke(app, ["models", "zzz*"])
    assert result.exit_code == 1
    assert "no model matches 'zzz*'" in result.output
