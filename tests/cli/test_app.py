"""The command line as a whole: documented commands, help, version, usage errors before work, 80 columns."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import cnnlab
from cnnlab.cli import app

runner = CliRunner()
README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def _commands() -> list[tuple[str, ...]]:
    """Every command path, e.g. ("bench",), ("weights", "fetch")."""
    group = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = []
    ctx = group.context_class(group)
    for name in group.list_commands(ctx):  # type: ignore[attr-defined]
        command = group.get_command(ctx, name)  # type: ignore[attr-defined]
        if hasattr(command, "list_commands"):  # a group of subcommands (typer vendors its own click)
            paths.extend((name, sub) for sub in command.list_commands(command.context_class(command)))
        else:
            paths.append((name,))
    return paths


@pytest.mark.parametrize("path", _commands(), ids=" ".join)
def test_every_command_has_help_and_is_in_the_readme(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "Usage: cnnlab " + " ".join(path) in result.output
    summary = result.output.split("\n\n")[1].strip()
    assert len(summary) > 20, f"cnnlab {' '.join(path)} has no help text"
    assert all(len(line) <= 80 for line in result.output.splitlines()), "help wider than 80 columns"
    assert re.search(r"cnnlab " + r" ".join(path) + r"\b", README), f"`cnnlab {' '.join(path)}` is not in README.md"


def test_commands_are_listed_in_workflow_order_and_version() -> None:
    names = [p[0] for p in _commands()]
    order = [n for n in ("demo", "collect", "split", "bench", "train", "predict", "export") if n in names]
    assert sorted(order, key=names.index) == order
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"cnnlab {cnnlab.__version__}"


@pytest.mark.parametrize("args", [
    ["bench", "{data}", "--precision", "fp8"],
    ["bench", "{data}", "--device", "mps"],
    ["bench", "{data}", "--batch-size", "0"],
    ["predict", "{data}", "--device", "gpu"],
    ["export", "x.pt", "--format", "tflite"],
    ["collect", "--out", "{out}", "--classes", "cat", "--engine", "altavista"],
])
def test_bad_option_values_are_usage_errors_before_any_work(args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    argv = [a.format(data=data, out=out) for a in args]
    if argv[0] == "bench":
        argv += ["--out", str(out)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output or "unknown" in result.output
    assert not out.exists()


def test_tables_fit_80_columns_and_keep_whole_names() -> None:
    result = runner.invoke(app, ["models", "resnet*"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert re.search(r"\bresnet101\b", result.output) and re.search(r"\bresnet18\b", result.output)


def test_importing_the_cli_loads_no_heavy_library() -> None:
    code = ("import sys, cnnlab.cli; heavy = [m for m in ('torch', 'numpy', 'scipy', 'PIL', 'matplotlib') "
            "if m in sys.modules]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_library_parameters_in_messages_are_shown_as_the_commands_flags(tmp_path: Path) -> None:
    """Issue 22: library messages name parameters, ``(overwrite)``; the command line shows its flags."""
    result = CliRunner().invoke(app, ["collect", "-o", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "(--classes)" in result.stderr and "(--query)" in result.stderr and "(classes)" not in result.stderr
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/x.jpg\n")
    both = CliRunner().invoke(app, ["collect", "-o", str(tmp_path / "c"), "--urls", str(tmp_path / "urls.txt"),
                                    "--from-folder", str(tmp_path)])
    assert both.exit_code == 2 and "(--urls)" in both.stderr and "(--from-folder)" in both.stderr
