"""One grammar for every command (issue 22, Build 6), checked on the click tree that `cnnlab` runs.

Each rule is one test, parametrised by command, so a failure names the command and the rule:
``test_every_option_has_help[train]`` fails until ``cnnlab train`` gives every option help text.
The rules are read from the parameters themselves (introspection); only the "no Python types"
rule reads the rendered ``--help``, since that is what a user sees.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cnnlab.cli import app

runner = CliRunner()

#: Commands that read a data set: it is their first positional argument.
DATA_COMMANDS = ("bench", "train", "review", "split", "predict")
#: Of those, the ones whose argument is one data set (a folder or manifest), named DATA in the usage
#: line; predict takes any number of image files, folders and globs.
DATA_NAMED = ("bench", "train", "review", "split")
#: Commands that write an output folder or file: they take it as -o/--out PATH.
OUT_COMMANDS = ("demo", "collect", "bench", "train", "review", "export", "weights fetch")
#: Commands that print a table (checked against what each prints today): they take --wide.
#: `weights` prints plain lines, not tables.
TABLE_COMMANDS = ("demo", "collect", "split", "review", "labels", "models", "bench", "train", "predict")
#: Long option names that would name an output somewhere other than --out.
OUTPUT_NAMES = {"--output", "--out-dir", "--output-dir", "--outdir", "--dest", "--destination", "--save",
                "--save-to", "--to", "--target"}
#: What each short flag means wherever it appears (-m: the model, or the models of bench).
SHORT_MEANING = {"-o": "--out", "-m": "--model", "-b": "--batch-size", "-q": "--quiet", "-h": "--help",
                 "-n": "--per-class", "-j": "--threads"}
SAME_MEANING = {"--models": "--model"}
#: Short flags no command uses (-e was epochs in train and engine in collect).
UNUSED_SHORTS = ("-e",)
#: What typer prints when a parameter has no metavar: Python or click type names, not words for a user.
PYTHON_TYPES = re.compile(
    r"<(?:str|int|float|bool|path|file|text|bytes|datetime|uuid|Path)>"  # typer >= 0.20
    r"|\b(?:list|tuple|dict|set|Optional|Union)\["  # <list[str]>
    r"|\b(?:int|float) range\b|\brange>"  # <int range>
    r"|\bNoneType\b"
    r"|\b(?:INTEGER|FLOAT|TEXT|BOOLEAN|FILENAME)\b"  # click's names, typer < 0.20
    r"|\{[a-z_]+\}"  # a Python parameter name as an argument's placeholder: {data}
)


def _tree() -> dict[str, tuple[Any, Any]]:
    """Every command as "bench" or "weights fetch" -> (click command, its context), with the root as ""."""
    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="cnnlab", **group.context_settings)
    found: dict[str, tuple[Any, Any]] = {"": (group, root)}

    def walk(parent: Any, parent_ctx: Any, prefix: str) -> None:
        for name in parent.list_commands(parent_ctx):
            command = parent.get_command(parent_ctx, name)
            ctx = command.context_class(command, parent=parent_ctx, info_name=name, **command.context_settings)
            path = f"{prefix} {name}".strip()
            if hasattr(command, "list_commands"):  # a group: its callback's options, then its commands
                found[path] = (command, ctx)
                walk(command, ctx, path)
            else:
                found[path] = (command, ctx)

    walk(group, root, "")
    return found


TREE = _tree()
COMMANDS = sorted(path for path, (command, _) in TREE.items() if path and not hasattr(command, "list_commands"))


def _params(path: str, *, hidden: bool = False) -> list[Any]:
    """The parameters of command ``path`` with the help option click adds; hidden ones only if asked."""
    command, ctx = TREE[path]
    return [p for p in command.get_params(ctx) if hidden or not getattr(p, "hidden", False)]


def _options(path: str, *, hidden: bool = False) -> list[Any]:
    return [p for p in _params(path, hidden=hidden) if p.param_type_name == "option"]


def _arguments(path: str) -> list[Any]:
    return [p for p in _params(path, hidden=True) if p.param_type_name == "argument"]


def _flags(param: Any) -> list[str]:
    return [*param.opts, *param.secondary_opts]


def _long(param: Any) -> str:
    return next((f for f in _flags(param) if f.startswith("--")), _flags(param)[0])


def _is_path(param: Any) -> bool:
    """Whether the command hands the value over as a pathlib.Path (typer >= 0.20 keeps no click type)."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        return bool(descriptor.is_path)
    return type(param.type).__name__ == "Path"


def _help(path: str) -> str:
    result = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_tree_holds_the_commands_the_rules_name() -> None:
    named = {*DATA_COMMANDS, *OUT_COMMANDS, *TABLE_COMMANDS}
    assert named <= set(COMMANDS), f"rules name commands that do not exist: {sorted(named - set(COMMANDS))}"


@pytest.mark.parametrize("path", DATA_COMMANDS)
def test_data_is_the_first_positional_argument(path: str) -> None:
    arguments = _arguments(path)
    assert arguments, f"cnnlab {path}: the data set must be its first positional argument; it has none"
    if path in DATA_NAMED:
        assert arguments[0].name == "data", (
            f"cnnlab {path}: the first positional argument must be the data set, named `data` (DATA in the "
            f"usage line), not `{arguments[0].name}`")
    visible = [_long(p) for p in _options(path) if _long(p) == "--data"]
    assert not visible, f"cnnlab {path}: --data may stay only as a hidden, deprecated alias of the argument"


@pytest.mark.parametrize("path", COMMANDS)
def test_outputs_are_named_by_out(path: str) -> None:
    others = sorted(f for p in _options(path) for f in _flags(p) if f in OUTPUT_NAMES)
    assert not others, f"cnnlab {path}: an output is named by -o/--out PATH, not {others}"
    outs = [p for p in _options(path, hidden=True) if "--out" in _flags(p)]
    if path not in OUT_COMMANDS:
        assert not outs, f"cnnlab {path} has --out: add it to OUT_COMMANDS if it writes an output"
        return
    assert outs, f"cnnlab {path} writes an output: it must take -o/--out PATH"
    (out,) = outs
    assert sorted(_flags(out)) == ["--out", "-o"], f"cnnlab {path}: --out must have the short flag -o, has {_flags(out)}"
    assert _is_path(out), f"cnnlab {path}: --out must be typed as a path (pathlib.Path), not {out.name}: str"
    assert out.metavar == "PATH", f"cnnlab {path}: --out must show metavar PATH, shows {out.metavar!r}"


def test_a_short_flag_means_one_option_in_every_command() -> None:
    meanings: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in TREE:
        for param in _options(path, hidden=True):
            for flag in _flags(param):
                if not flag.startswith("--") and flag.startswith("-"):
                    long = _long(param)
                    meanings[flag][SAME_MEANING.get(long, long)].append(path or "cnnlab")
    clashes = {short: dict(longs) for short, longs in meanings.items() if len(longs) > 1}
    assert not clashes, f"short flags that mean different options ({{short: {{long: [commands]}}}}): {clashes}"
    wrong = {short: dict(longs) for short, longs in meanings.items()
             if short in SHORT_MEANING and set(longs) != {SHORT_MEANING[short]}}
    assert not wrong, f"short flags used for other than {SHORT_MEANING}: {wrong}"
    used = {short: dict(meanings[short]) for short in UNUSED_SHORTS if short in meanings}
    assert not used, f"short flags no command may use (give these only a long flag): {used}"


@pytest.mark.parametrize("path", ["", *COMMANDS], ids=lambda p: p or "cnnlab")
def test_every_option_and_argument_has_help(path: str) -> None:
    params = [p for p in _params(path) if p.name != "help"]
    missing = [_long(p) if p.param_type_name == "option" else p.name for p in params
               if not (getattr(p, "help", None) or "").strip()]
    assert not missing, f"cnnlab {path}: no help text for {missing}".replace("cnnlab :", "cnnlab:")


@pytest.mark.parametrize("path", ["", *COMMANDS], ids=lambda p: p or "cnnlab")
def test_help_shows_no_python_types(path: str) -> None:
    text = _help(path)
    found = [(line.strip(), match.group()) for line in text.splitlines() for match in PYTHON_TYPES.finditer(line)]
    assert not found, (f"cnnlab {path} --help shows Python types (give the option a metavar= such as PATH, N, "
                       f"NAME, DEVICE, or make it an Enum/click.Choice): {found}")


@pytest.mark.parametrize("path", TABLE_COMMANDS)
def test_commands_that_print_tables_take_wide(path: str) -> None:
    flags = {f for p in _options(path) for f in _flags(p)}
    assert "--wide" in flags, f"cnnlab {path} prints a table: it must take --wide (cnnlab.cli.params.Wide)"
