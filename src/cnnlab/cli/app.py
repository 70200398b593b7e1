"""The typer application object that every command module registers itself on.

Command modules import only light modules at import time (typer, the option vocabularies, the
config classes); torch and the rest are imported inside each command, so ``cnnlab --help`` and
``cnnlab COMMAND --help`` answer at once.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

import cnnlab

#: Commands in the order of the workflow, as `cnnlab --help` lists them.
WORKFLOW_ORDER = ("demo", "collect", "split", "review", "labels", "models", "weights", "bench", "train", "predict",
                  "export")


class _WorkflowGroup(TyperGroup):
    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(WORKFLOW_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))


app = typer.Typer(
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
