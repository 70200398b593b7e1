"""`cnnlab collect` (build a labelled image set from the web or files) and `cnnlab split`."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from cnnlab.cli.app import app
from cnnlab.cli.common import err, handle_errors, out, print_json, split_csv
from cnnlab.collect import ClassSummary, CollectProgress, FetchConfig, collect, parse_queries
from cnnlab.split import DEFAULT_NEAR_DUP_THRESHOLD, make_split


class _BarProgress(CollectProgress):
    """One rich progress bar per class, on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def class_started(self, label: str, wanted: int, have: int) -> None:
        self.counts[label] = {"duplicate": 0, "rejected": 0, "failed": 0}
        self.tasks[label] = self.progress.add_task(label, total=wanted, completed=min(have, wanted), extra="")

    def item_done(self, label: str, record: Mapping[str, Any], ok: int) -> None:
        status = str(record.get("status"))
        if status in self.counts[label]:
            self.counts[label][status] += 1
        c = self.counts[label]
        extra = f"dup {c['duplicate']} · rejected {c['rejected']} · failed {c['failed']}"
        self.progress.update(self.tasks[label], completed=ok, extra=extra)

    def note(self, message: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/] {message}", highlight=False)


@contextmanager
def _logging_to_stderr(quiet: bool) -> Iterator[None]:
    logger = logging.getLogger("cnnlab.collect")
    handler = RichHandler(console=err, show_time=False, show_path=False)
    handler.setLevel(logging.ERROR if quiet else logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _reasons(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "-"


def _summary_table(classes: list[ClassSummary], title: str) -> Table:
    table = Table(title=title)
    for name in ("class", "wanted", "found", "ok", "new", "duplicates", "rejected", "failed"):
        table.add_column(name, justify="right" if name in ("wanted", "found", "ok", "new", "duplicates") else "left")
    for c in classes:
        ok = f"[green]{c.ok}[/]" if c.met else f"[yellow]{c.ok}[/]"
        dups = f"{c.duplicates}" + (f" ({c.cross_class_duplicates} cross-class)" if c.cross_class_duplicates else "")
        table.add_row(
            c.label, str(c.wanted), str(c.found), ok, str(c.new), dups, _reasons(c.rejected), _reasons(c.failed)
        )
    return table


@app.command("collect")
@handle_errors
def collect_command(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder: OUT/<class>/<sha256[:16]>.<ext> + OUT/manifest.jsonl.")],
    classes: Annotated[Optional[list[str]], typer.Option("--classes", "-c", help="Class names, comma-separated or repeated.")] = None,
    per_class: Annotated[Optional[int], typer.Option("--per-class", "-n", min=0, help="Images wanted per class (default: 100 with an engine, every candidate with --urls/--from-folder).")] = None,
    engine: Annotated[str, typer.Option("--engine", "-e", help="bing, baidu, flickr, google, ddg, urls or folder.")] = "bing",
    query: Annotated[Optional[list[str]], typer.Option("--query", help='Search terms for a class: "cat=tabby cat,house cat" (repeatable).')] = None,
    urls: Annotated[Optional[Path], typer.Option("--urls", help="URL list: .txt (one per line, with --label) or .csv/.jsonl with url,label.")] = None,
    label: Annotated[Optional[str], typer.Option("--label", help="Class of a plain URL list, or of a folder imported as one class.")] = None,
    from_folder: Annotated[Optional[Path], typer.Option("--from-folder", help="Import images from DIR/<class>/... (or DIR with --label).")] = None,
    size: Annotated[Optional[str], typer.Option("--size", help="Engine size filter, e.g. large, medium (where the engine has one).")] = None,
    image_type: Annotated[Optional[str], typer.Option("--type", help="Engine type filter, e.g. photo, clipart.")] = None,
    license_: Annotated[Optional[str], typer.Option("--license", help="Engine license filter, e.g. creativecommons, publicdomain, commercial.")] = None,
    min_size: Annotated[int, typer.Option("--min-size", min=1, help="Reject images whose shorter side is below this (pixels).")] = 64,
    max_bytes: Annotated[int, typer.Option("--max-bytes", min=1, help="Largest file accepted (bytes).")] = 20 * 1024 * 1024,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Larger images are rejected as decompression bombs.")] = 89_478_485,
    near_dup_threshold: Annotated[int, typer.Option("--near-dup-threshold", min=-1, help="Perceptual-hash distance (of 64 bits) for near duplicates; -1: exact only.")] = 4,
    threads: Annotated[int, typer.Option("--threads", "-j", min=1, help="Downloads in flight.")] = 8,
    per_host: Annotated[int, typer.Option("--per-host", min=1, help="Requests in flight per host.")] = 2,
    host_delay: Annotated[float, typer.Option("--host-delay", min=0.0, help="Seconds between request starts per host.")] = 0.25,
    timeout: Annotated[float, typer.Option("--timeout", min=0.01, help="Connect/read timeout (s); a whole download may take 4x this.")] = 10.0,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries after a transient failure.")] = 2,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Fetch again URLs that failed in an earlier run.")] = False,
    flickr_key: Annotated[Optional[str], typer.Option("--flickr-key", envvar="FLICKR_API_KEY", help="Flickr API key.")] = None,
    engine_url: Annotated[Optional[str], typer.Option("--engine-url", help="Base URL of the engine (a mirror or a local test server).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or log messages.")] = False,
) -> None:
    """Build a labelled image set: every image verified, duplicates removed, resumable (re-run the same command)."""
    filters = {k: v for k, v in (("size", size), ("type", image_type), ("license", license_)) if v}
    from_file = urls is not None or from_folder is not None or engine in ("urls", "folder")
    fetch = FetchConfig(timeout=timeout, retries=retries, max_bytes=max_bytes, per_host=per_host, host_delay=host_delay)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"), TimeElapsedColumn())
    with _logging_to_stderr(quiet), Progress(*columns, console=err, disable=quiet) as bar:
        result = collect(
            out_dir,
            split_csv(classes),
            per_class if per_class is not None else (None if from_file else 100),
            engine=engine,
            queries=parse_queries(query or []),
            filters=filters,
            urls=urls,
            label=label,
            from_folder=from_folder,
            engine_url=engine_url,
            api_key=flickr_key,
            min_size=min_size,
            max_pixels=max_pixels,
            near_dup_threshold=near_dup_threshold,
            threads=threads,
            fetch=fetch,
            retry_failed=retry_failed,
            progress=_BarProgress(bar),
        )
    if as_json:
        print_json(result.to_dict())
        return
    out.print(_summary_table(result.classes, f"collect ({result.engine}) -> {result.out}"))
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    out.print(
        f"{sum(c.new for c in result.classes)} new images, {result.fetched} candidates fetched "
        f"({result.bytes_downloaded / 1e6:.1f} MB) in {result.elapsed:.1f} s; manifest: {result.manifest}",
        highlight=False,
    )


@app.command("split")
@handle_errors
def split_command(
    root: Annotated[Path, typer.Argument(help="Dataset folder (DIR/<class>/<images>), e.g. the output of `cnnlab collect`.")],
    val: Annotated[float, typer.Option("--val", min=0.0, max=1.0, help="Fraction of each class for validation.")] = 0.15,
    test: Annotated[float, typer.Option("--test", min=0.0, max=1.0, help="Fraction of each class for test.")] = 0.15,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same files: same split.")] = 0,
    near_dup_threshold: Annotated[int, typer.Option("--near-dup-threshold", min=-1, help="Near duplicates (phash distance) stay in one split; -1: off.")] = DEFAULT_NEAR_DUP_THRESHOLD,
    as_json: Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No log messages.")] = False,
) -> None:
    """Write DIR/split.csv (path,label,split): stratified, deterministic, near duplicates never straddle splits."""
    with _logging_to_stderr(quiet):
        result = make_split(root, val=val, test=test, seed=seed, near_dup_threshold=near_dup_threshold)
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"split of {result.root} (seed {seed})")
    for name in ("class", "train", "val", "test"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for label, counts in result.counts.items():
        table.add_row(label, *(str(counts[s]) for s in ("train", "val", "test")))
    out.print(table)
    out.print(
        f"{len(result.rows)} images in {result.groups} groups "
        f"({result.near_duplicate_groups} near-duplicate groups kept whole); wrote {result.file}",
        highlight=False,
    )
    if result.unhashed:
        err.print(f"[yellow]warning:[/] {len(result.unhashed)} files could not be decoded to hash (e.g. {result.unhashed[0]})")
