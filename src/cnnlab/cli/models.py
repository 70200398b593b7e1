"""`cnnlab models` and `cnnlab weights`: the registry and where weights live."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from cnnlab.cli.app import app
from cnnlab.cli.common import err, handle_errors, out, print_json
from cnnlab.weights import fetch_weights, locate_weights, search_dirs
from cnnlab.zoo import get_spec, list_models

weights_app = typer.Typer(help="Find, prefetch and check pretrained weights files.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

WeightsDir = Annotated[
    Optional[str],
    typer.Option("--weights-dir", help="Also look here (before the torch hub cache). Env: CNNLAB_WEIGHTS_DIR."),
]


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


@app.command("models")
@handle_errors
def models_command(
    pattern: Annotated[str, typer.Argument(help="Shell wildcard on the model name, e.g. 'res*'.")] = "*",
    all_weights: Annotated[bool, typer.Option("--all", help="List every weights entry, not only defaults.")] = False,
    weights_dir: WeightsDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List pretrained classifiers with their published accuracy, size, cost and local availability."""
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
    table = Table(title=f"{len(rows)} models" + ("" if all_weights else " (default weights; --all for every entry)"))
    for col, justify in [("name", "left"), ("acc@1", "right"), ("acc@5", "right"), ("params (M)", "right"),
                         ("GMACs", "right"), ("input", "right"), ("weights file", "left"),
                         ("MB", "right"), ("local", "center")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        pre = r["preprocessing"]
        table.add_row(
            r["name"], _fmt(r["acc1"], ".2f"), _fmt(r["acc5"], ".2f"), f"{r['num_params'] / 1e6:.1f}",
            _fmt(r["gmacs"], ".3f"), f"{pre['resize_size']}/{pre['crop_size']}", r["weights_file"] or "",
            _fmt(r["weights_size_mb"], ".1f"), "yes" if r["available"] else "-",
        )
    out.print(table)


@weights_app.command("where")
@handle_errors
def weights_where(
    names: Annotated[list[str], typer.Argument(help="Model names, e.g. resnet50 alexnet.IMAGENET1K_V1.")],
    weights_dir: WeightsDir = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print each model's weights file name, its URL, the folders searched and where it was found."""
    locations = [locate_weights(get_spec(n), weights_dir) for n in names]
    if as_json:
        print_json([loc.to_dict() for loc in locations])
        return
    for loc in locations:
        out.print(f"[bold]{loc.model}[/]")
        out.print(f"  file:     {loc.file}")
        out.print(f"  url:      {loc.url or '(ships inside an installed package)'}")
        out.print(f"  found:    {loc.found or 'not on this machine'}")
        out.print("  searched: " + ", ".join(str(p) for p in loc.searched))


@weights_app.command("fetch")
@handle_errors
def weights_fetch(
    names: Annotated[list[str], typer.Argument(help="Model names to download, e.g. resnet50 alexnet googlenet.")],
    dest: Annotated[Optional[str], typer.Option("--dest", help="Download into this folder (default: the torch hub cache).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Download weights (checking their hash) for later use on machines without internet."""
    failures = 0
    for name in names:
        spec = get_spec(name)
        try:
            path = fetch_weights(spec, dest, progress=not quiet)
        except Exception as exc:  # report each model, then fail at the end
            failures += 1
            err.print(f"[red]{spec.name}:[/] {exc}", highlight=False)
            continue
        out.print(f"{spec.name}\t{path}")
    if failures:
        raise typer.Exit(3)


@weights_app.command("dirs")
def weights_dirs(weights_dir: WeightsDir = None) -> None:
    """Print the folders searched for weights, in order."""
    for d in search_dirs(weights_dir):
        out.print(str(d))
