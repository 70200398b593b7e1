"""`cnnlab labels`: show how class names map onto ImageNet-1k classes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnnlab.cli.app import app
from cnnlab.cli.common import escape, handle_errors, out, print_json
from cnnlab.cli.params import Json

SHOWN = 10  # classes listed per name unless --all


@app.command("labels")
@handle_errors
def labels_command(
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Class names (e.g. your folder names): cat dog crane.")],
    mapping: Annotated[
        Optional[Path],
        typer.Option("--mapping", metavar="PATH", help="YAML/JSON file {class: [ImageNet indices, names, wnids or nouns]}."),
    ] = None,
    show_all: Annotated[bool, typer.Option("--all", help=f"List every class, not only the first {SHOWN}.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Show every column: the notes in the table, not below it.")] = False,
    as_json: Json = False,
) -> None:
    """Show which ImageNet classes each name maps to (via WordNet), and why."""
    from rich.table import Table

    from cnnlab.imagedata.labels import describe_indices, map_classes

    mappings = map_classes(names, mapping)
    if as_json:
        print_json([m.to_dict() for m in mappings.values()])
        return

    table = Table(show_lines=True)
    for column in ("name", "how", "synset", "ImageNet classes", *(("note",) if wide else ())):
        table.add_column(column)
    for m in mappings.values():
        classes = describe_indices(m.indices) or list(m.candidates)
        shown = classes if show_all else classes[:SHOWN]
        if len(shown) < len(classes):
            shown.append(f"... {len(classes) - len(shown)} more (--all)")
        if m.candidates:
            shown.insert(0, "candidates:")
        notes = (escape(m.note),) if wide else ()
        table.add_row(escape(m.name), m.how, escape(m.synset or ""), escape("\n".join(shown)), *notes)
    out.print(table)
    if wide:
        return
    for m in mappings.values():
        if m.note:
            out.print(f"[bold]{escape(m.name)}[/]: {escape(m.note)}", highlight=False)
