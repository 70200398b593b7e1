"""The typer application object that every command module registers itself on.

Command modules import only light modules at import time (typer, the option vocabularies, the
config classes); torch and the rest are imported inside each command, so ``cnnlab --help`` and
``cnnlab COMMAND --help`` answer at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

import cnnlab

#: Commands in the order of the workflow, as `cnnlab --help` lists them.
WORKFLOW_ORDER = ("demo", "collect", "split", "review", "labels", "models", "weights", "bench", "train", "predict",
                  "export", "serve")


class _WorkflowGroup(TyperGroup):
    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(WORKFLOW_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))


def _argument_name(param: Any) -> str:
    """A positional argument as the usage line and help show it: its metavar, else its name in capitals."""
    name = str(param.metavar or param.name.upper())
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name


class Command(TyperCommand):
    """A command whose positional arguments read DATA or NAMES... in its help, as options read PATH or N.

    typer shows an argument as its Python name and type (``{data}``, ``data <path>``,
    ``names... <list[str]>``) whatever its metavar; the grammar's tests (tests/cli/test_grammar.py)
    allow no Python names or types in help.
    """

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments: list[tuple[str, str]] = []
        options: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((_argument_name(param), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class App(typer.Typer):
    """The typer application class of cnnlab and its sub-groups: its commands are :class:`Command`."""

    def command(self, name: Optional[str] = None, *, cls: Optional[type[TyperCommand]] = None,
                **kwargs: Any) -> Callable[[Any], Any]:
        return super().command(name, cls=cls or Command, **kwargs)


app = App(
    name="cnnlab",
    cls=_WorkflowGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnnlab {cnnlab.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Compare, fine-tune and use pretrained image classifiers on your own pictures.

    Workflow: collect -> split -> bench -> train -> predict / export. Try `cnnlab demo`.
    """
