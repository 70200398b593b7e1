"""`cnnlab models`: the registry, with published figures and whether the weights are on this machine."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnlab.cli.app import app
from cnnlab.cli.common import err, full_width_console, handle_errors, print_json, print_table
from cnnlab.cli.params import Json, WeightsDir, Wide


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


@app.command("models")
@handle_errors
def models_command(
    pattern: Annotated[str, typer.Argument(help="Shell wildcard on the model name, e.g. 'res*'.")] = "*",
    all_weights: Annotated[bool, typer.Option("--all", help="List every weights entry, not only defaults.")] = False,
    weights_dir: WeightsDir = None,
    wide: Wide = False,
    as_json: Json = False,
) -> None:
    """List pretrained classifiers: published accuracy, size, cost, and whether the weights are here.

    timm's ImageNet-1k classifiers are listed as timm/ARCH.TAG: `cnnlab models 'timm/convnext*'`.
    """
    from cnnlab.models.registry import list_models
    from cnnlab.models.weights import locate_weights

    specs = list_models(pattern, defaults_only=not all_weights)
    if not specs:
        err.print(f"no model matches {pattern!r}")
        raise typer.Exit(1)
    rows = []
    for spec in specs:
        found = locate_weights(spec, weights_dir).found
        rows.append({**spec.to_dict(), "available": found is not None, "weights_path": str(found) if found else None})
    if as_json:
        print_json(rows)
        return
    header = ["name", "acc@1", "acc@5", "params M", "GMACs", "input", "local"]
    if wide:
        header[6:6] = ["weights file", "MB", "license"]
    table = []
    for r in rows:
        pre = r["preprocessing"]
        name = r["name"] if all_weights else r["arch"]
        row = [name, _fmt(r["acc1"], ".2f"), _fmt(r["acc5"], ".2f"), f"{r['num_params'] / 1e6:.1f}",
               _fmt(r["gmacs"], ".2f"), f"{pre['resize_size']}/{pre['crop_size']}", "yes" if r["available"] else "-"]
        if wide:
            row[6:6] = [r["weights_file"] or "", _fmt(r["weights_size_mb"], ".1f"), r["license"] or ""]
        table.append(row)
    right = {h: "right" for h in ("acc@1", "acc@5", "params M", "GMACs", "MB")}
    title = f"{len(rows)} models" + ("" if all_weights else " (default weights; --all lists every entry)")
    print_table(header, table, title=title, justify=right, console=full_width_console() if wide else None)
