"""The typer application object that every command module registers itself on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cnnlab",
    help="Compare, fine-tune and use pretrained image classifiers on your own pictures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
