"""`cnnlab review`'s command line: the shared grammar (DATA positional, -o/--out PATH, help everywhere, choices
shown as choices, --wide), and what it prints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cnnlab.cli.app import app
from cnnlab.options import ReviewIssue
from cnnlab.review import Finding, ReviewResult

runner = CliRunner()


def _params() -> list[Any]:
    group = typer.main.get_command(app)
    return list(group.commands["review"].params)  # type: ignore[attr-defined]


def test_review_follows_the_cli_grammar() -> None:
    params = _params()
    arguments = [p for p in params if p.param_type_name == "argument"]
    assert [a.name for a in arguments] == ["data"]  # the data set is positional
    options = {p.name: p for p in params if p.param_type_name == "option"}
    assert options["out_dir"].opts == ["--out", "-o"] and options["out_dir"].metavar == "PATH"
    assert all(o.help for o in options.values()), [n for n, o in options.items() if not o.help]
    assert "wide" in options and "overwrite" in options
    shorts = {opt for o in options.values() for opt in o.opts if not opt.startswith("--")}
    assert shorts <= {"-o", "-m", "-b", "-q"}


def test_help_shows_no_python_types() -> None:
    result = runner.invoke(app, ["review", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert not re.search(r"<(str|int|float|path|list\[str\])[^>]*>|range>", result.output), result.output
    assert "-o, --out PATH" in result.output and "--backend <auto|torch|onnxruntime>" in result.output


def _result(tmp_path: Path) -> ReviewResult:
    return ReviewResult(source=str(tmp_path), root=tmp_path, model="m", classes=["cat", "dog"],
                        class_counts={"cat": 5, "dog": 5}, images=10, seconds={"total": 1.0},
                        findings=[Finding("cat/x.jpg", "cat", ReviewIssue.MISLABEL, 0.9, suggested_label="dog",
                                          detail="p(cat) 0.10, p(dog) 0.90", rank=1)])


@pytest.mark.parametrize("wide", [False, True])
def test_the_summary_table_and_wide(tmp_path: Path, wide: bool, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.cli import common
    from cnnlab.cli.review import print_summary

    # the console's own setting, restored as it was (setting .width back would pin it, ignoring $COLUMNS later)
    monkeypatch.setattr(common.out, "_width", 200)
    print_summary(_result(tmp_path), {"html": tmp_path / "review.html"}, wide=wide)
    table = capsys.readouterr().out
    assert "cat/x.jpg" in table and "mislabel" in table
    assert ("suggested" in table and "p(dog) 0.90" in table) is wide


@pytest.mark.parametrize(("args", "message"), [
    (["--apply", "--undo"], "choose one of --apply and --undo"),
    (["--kinds", "duplicate"], "add --apply"),
    (["--min-score", "0.5"], "add --apply"),
])
def test_options_that_contradict_or_do_nothing_are_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    """Found by review: `review --undo --apply` exited 0, `--kinds` without `--apply` did nothing."""
    (tmp_path / "data" / "cat").mkdir(parents=True)
    result = CliRunner().invoke(app, ["review", str(tmp_path / "data"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "data" / ".cnnlab").exists()
