"""`cnnlab weights`: where weights files are looked for, and prefetching them for offline use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnnlab.cli.app import App, app
from cnnlab.cli.common import err, escape, handle_errors, out, print_json, printable
from cnnlab.cli.params import Json, Quiet, WeightsDir, out_option

weights_app = App(help="Find, prefetch and check pretrained weights files.", no_args_is_help=True,
                  rich_markup_mode=None)
app.add_typer(weights_app, name="weights")


@weights_app.command("where")
@handle_errors
def weights_where(
    names: Annotated[list[str], typer.Argument(metavar="MODEL...", help="Model names, e.g. resnet50 alexnet.IMAGENET1K_V1.")],
    weights_dir: WeightsDir = None,
    as_json: Json = False,
) -> None:
    """Print each model's weights file name, its URL, the folders searched and where it was found."""
    from cnnlab.models.registry import get_spec
    from cnnlab.models.weights import locate_weights

    locations = [locate_weights(get_spec(n), weights_dir) for n in names]
    if as_json:
        print_json([loc.to_dict() for loc in locations])
        return
    for loc in locations:
        out.print(f"[bold]{escape(loc.model)}[/]")
        out.print(f"  file:     {loc.file}", markup=False)
        out.print(f"  url:      {loc.url or '(ships inside an installed package)'}", markup=False)
        out.print(printable(f"  found:    {loc.found or 'not on this machine'}"), markup=False)
        out.print(printable("  searched: " + ", ".join(str(p) for p in loc.searched)), markup=False)


@weights_app.command("fetch")
@handle_errors
def weights_fetch(
    names: Annotated[list[str], typer.Argument(metavar="MODEL...", help="Model names to download, e.g. resnet50 alexnet googlenet.")],
    out_dir: Annotated[Optional[Path], out_option("Download into this folder (default: the torch hub cache).")] = None,
    dest: Annotated[Optional[Path], typer.Option("--dest", hidden=True, help="Deprecated name of --out.")] = None,
    quiet: Quiet = False,
) -> None:
    """Download weights (checking their hash) for later use on machines without internet."""
    from cnnlab.errors import CnnlabError
    from cnnlab.models.registry import get_spec
    from cnnlab.models.weights import check_dest_dir, fetch_weights

    if dest is not None:
        err.print("[yellow]note:[/] --dest is deprecated: use -o/--out")
    dest = out_dir if out_dir is not None else dest
    check_dest_dir(dest)  # once, before any download
    failures = 0
    for name in names:
        spec = get_spec(name)
        try:
            path = fetch_weights(spec, dest, progress=not quiet)
        except (CnnlabError, OSError) as exc:  # report each model, then fail at the end
            failures += 1
            err.print(f"[red]{escape(spec.name)}:[/] {escape(str(exc))}")
            continue
        out.print(printable(f"{spec.name}\t{path}"), markup=False)
    if failures:
        raise typer.Exit(3)


@weights_app.command("dirs")
def weights_dirs(weights_dir: WeightsDir = None) -> None:
    """Print the folders searched for weights, in order."""
    from cnnlab.models.weights import search_dirs

    for d in search_dirs(weights_dir):
        out.print(printable(str(d)), markup=False)
