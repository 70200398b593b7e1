"""`cnnlab split`: a stratified, deterministic train/val/test split that keeps near duplicates together."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnnlab.cli.app import app
from cnnlab.cli.collect import logging_to_stderr
from cnnlab.cli.common import err, escape, full_width_console, handle_errors, out, print_json, print_table, printable
from cnnlab.cli.params import Json, Quiet, Wide
from cnnlab.imagedata.hashes import DEFAULT_NEAR_DUP_THRESHOLD


@app.command("split")
@handle_errors
def split_command(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Dataset folder (DATA/<class>/<images>), e.g. the output of `cnnlab collect`.")],
    val: Annotated[float, typer.Option("--val", min=0.0, max=1.0, metavar="FRACTION", help="Fraction of each class for validation (0 to 1).")] = 0.15,
    test: Annotated[float, typer.Option("--test", min=0.0, max=1.0, metavar="FRACTION", help="Fraction of each class for test (0 to 1).")] = 0.15,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Same seed, same files: same split.")] = 0,
    near_dup_threshold: Annotated[int, typer.Option("--near-dup-threshold", min=-1, max=32, metavar="BITS", help="Near duplicates (phash distance, of 64 bits) stay in one split; -1: off.")] = DEFAULT_NEAR_DUP_THRESHOLD,
    crops: Annotated[bool, typer.Option("--crops/--no-crops", help="Also keep crops and rescales of one photo together (features of the offline model, checked on pixels; needs the offline-model extra).")] = True,
    as_json: Json = False,
    wide: Wide = False,
    quiet: Quiet = False,
) -> None:
    """Write DATA/split.csv (path,label,split): stratified, deterministic, near duplicates never straddle splits."""
    from cnnlab.cli.progress import RichProgress
    from cnnlab.imagedata.splits import make_split
    from cnnlab.runtime.features import offline_embedder

    with logging_to_stderr(quiet), RichProgress(quiet=quiet) as progress:
        embed = offline_embedder(progress) if crops and near_dup_threshold >= 0 else None
        if crops and near_dup_threshold >= 0 and embed is None:
            progress.note("crops of one photo are not looked for: the offline model is not installed "
                          "(pip install 'cnnlab[offline-model]')", warning=True)
        result = make_split(data, val=val, test=test, seed=seed, near_dup_threshold=near_dup_threshold, embed=embed,
                            progress=progress)
    if as_json:
        print_json(result.to_dict())
        return
    splits = ("train", "val", "test")
    rows = [[label, *(str(counts[s]) for s in splits), *([str(sum(counts.values()))] if wide else [])]
            for label, counts in result.counts.items()]
    print_table(["class", *splits, *(["total"] if wide else [])], rows, title=f"split of {result.root} (seed {seed})",
                justify={s: "right" for s in (*splits, "total")}, console=full_width_console() if wide else None)
    out.print(
        printable(f"{len(result.rows)} images in {result.groups} groups "
                  f"({result.near_duplicate_groups} near-duplicate groups kept whole"
                  + (f", {result.crop_pairs} pairs of crops among them" if result.crop_pairs else "")
                  + f"); wrote {result.file}"),
        markup=False,
    )
    if result.unhashed:
        names = ", ".join(escape(p) for p in result.unhashed[:3]) + (", ..." if len(result.unhashed) > 3 else "")
        err.print(f"[yellow]warning:[/] {len(result.unhashed)} files could not be decoded ({names}): they are in "
                  "split.csv, each in a group of its own, and bench and train will skip them with the reason")
    if result.skipped:
        names = ", ".join(f"{escape(s['path'])} ({s['reason']})" for s in result.skipped[:3])
        err.print(f"[yellow]warning:[/] {len(result.skipped)} entries are not image files and are not in split.csv: "
                  f"{names}{', ...' if len(result.skipped) > 3 else ''}")
