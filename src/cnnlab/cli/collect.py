"""`cnnlab collect`: build a labelled image set from the web, URL lists or a folder."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from cnnlab.cli.app import app
from cnnlab.cli.common import err, escape, full_width_console, handle_errors, out, print_json, print_table, printable, split_csv
from cnnlab.cli.params import Json, Quiet, Wide, out_option
from cnnlab.collect.config import (
    DEFAULT_MIN_SIZE,
    DEFAULT_NEAR_DUP_THRESHOLD,
    DEFAULT_PER_CLASS,
    DEFAULT_SHARD_SIZE,
    DEFAULT_THREADS,
    MAX_WAIT,
    FetchConfig,
    OutputFormat,
)
from cnnlab.imagedata.preprocess import DEFAULT_MAX_PIXELS
from cnnlab.options import EngineName

if TYPE_CHECKING:
    from cnnlab.collect import ClassSummary, CollectResult

_FETCH = FetchConfig()


@contextmanager
def logging_to_stderr(quiet: bool) -> Iterator[None]:
    """Show collect's log messages (warnings; only errors when quiet) on stderr."""
    from rich.logging import RichHandler

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


def _print_summary(classes: list[ClassSummary], title: str, *, wide: bool) -> None:
    """One row per class; ``wide`` adds the candidates decided over every run and never wraps a cell."""
    rows = []
    for c in classes:
        dups = f"{c.duplicates}" + (f" ({c.cross_class_duplicates} cross-class)" if c.cross_class_duplicates else "")
        found = [str(c.found)] if wide else []
        rows.append([c.label, str(c.wanted), *found, str(c.ok), str(c.new), dups, _reasons(c.rejected),
                     _reasons(c.failed)])
    header = ["class", "wanted", *(["found"] if wide else []), "ok", "new", "duplicates", "rejected", "failed"]
    print_table(header, rows, title=title, justify={h: "right" for h in ("wanted", "found", "ok", "new")},
                console=full_width_console() if wide else None)


@app.command("collect")
@handle_errors
def collect_command(
    out_dir: Annotated[Path, out_option("Dataset folder: PATH/<class>/<sha256[:16]>.<ext> + PATH/manifest.jsonl (made if missing; rerun to continue).")],
    classes: Annotated[Optional[list[str]], typer.Option("--classes", "-c", metavar="NAMES", help="Class names, comma-separated or repeated.")] = None,
    per_class: Annotated[Optional[int], typer.Option("--per-class", "-n", min=0, metavar="N", help=f"Images wanted per class (default: {DEFAULT_PER_CLASS} with an engine, every candidate with --urls/--from-folder).")] = None,
    engine: Annotated[EngineName, typer.Option("--engine", case_sensitive=False, help="Where candidates come from (urls/folder: implied by --urls/--from-folder).")] = EngineName.BING,
    query: Annotated[Optional[list[str]], typer.Option("--query", metavar="CLASS=TERMS", help='Search terms for a class: "cat=tabby cat,house cat" (repeatable).')] = None,
    urls: Annotated[Optional[Path], typer.Option("--urls", metavar="PATH", help="URL list: .txt (one per line, with --label) or .csv/.jsonl with url,label.")] = None,
    label: Annotated[Optional[str], typer.Option("--label", metavar="NAME", help="Class of a plain URL list, or of a folder imported as one class.")] = None,
    from_folder: Annotated[Optional[Path], typer.Option("--from-folder", metavar="PATH", help="Import images from PATH/<class>/... (or PATH with --label).")] = None,
    size: Annotated[Optional[str], typer.Option("--size", metavar="SIZE", help="Engine size filter, e.g. large, medium (where the engine has one).")] = None,
    image_type: Annotated[Optional[str], typer.Option("--type", metavar="TYPE", help="Engine type filter, e.g. photo, clipart.")] = None,
    license_: Annotated[Optional[str], typer.Option("--license", metavar="LICENSE", help="Engine license filter, e.g. creativecommons, publicdomain, commercial.")] = None,
    min_size: Annotated[int, typer.Option("--min-size", min=1, metavar="PIXELS", help="Reject images whose shorter side is below this.")] = DEFAULT_MIN_SIZE,
    max_bytes: Annotated[int, typer.Option("--max-bytes", min=1, metavar="BYTES", help="Largest file accepted.")] = _FETCH.max_bytes,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, metavar="PIXELS", help="Larger images are rejected as decompression bombs.")] = DEFAULT_MAX_PIXELS,
    near_dup_threshold: Annotated[int, typer.Option("--near-dup-threshold", min=-1, metavar="BITS", help="Perceptual-hash distance (of 64 bits) for near duplicates; -1: exact only.")] = DEFAULT_NEAR_DUP_THRESHOLD,
    threads: Annotated[int, typer.Option("--threads", min=1, metavar="N", help="Downloads in flight at once.")] = DEFAULT_THREADS,
    per_host: Annotated[int, typer.Option("--per-host", min=1, metavar="N", help="Requests in flight per host.")] = _FETCH.per_host,
    host_delay: Annotated[float, typer.Option("--host-delay", metavar="SECONDS", help=f"Seconds between request starts per host (0 to {MAX_WAIT:g}).")] = _FETCH.host_delay,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS", help=f"Connect/read timeout (above 0, at most {MAX_WAIT:g}); a whole download may take 4x this.")] = _FETCH.timeout,
    retries: Annotated[int, typer.Option("--retries", min=0, metavar="N", help="Retries after a transient failure.")] = _FETCH.retries,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Fetch again URLs that failed in an earlier run.")] = False,
    allow_private_hosts: Annotated[bool, typer.Option("--allow-private-hosts", help="Also connect to private, loopback and link-local addresses (refused by default: SSRF protection). Only for hosts you own.")] = False,
    flickr_key: Annotated[Optional[str], typer.Option("--flickr-key", envvar="FLICKR_API_KEY", metavar="KEY", help="Flickr API key.")] = None,
    engine_url: Annotated[Optional[str], typer.Option("--engine-url", metavar="URL", help="Base URL of the engine (a mirror or a local test server).")] = None,
    format_: Annotated[OutputFormat, typer.Option("--format", case_sensitive=False, help="How the set is stored: files (PATH/<class>/...) or shards in PATH/shards/ (webdataset tar, parquet).")] = OutputFormat.FILES,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, metavar="N", help=f"Images per shard with --format webdataset|parquet (default {DEFAULT_SHARD_SIZE}).")] = DEFAULT_SHARD_SIZE,
    review: Annotated[bool, typer.Option("--review", help="Then run `cnnlab review` on the set (outputs in PATH/.cnnlab/review/).")] = False,
    as_json: Json = False,
    wide: Wide = False,
    quiet: Quiet = False,
) -> None:
    """Build a labelled image set: every image verified, duplicates removed, resumable (re-run the same command)."""
    from cnnlab.cli.progress import RichProgress
    from cnnlab.collect import CollectConfig, parse_queries, run

    filters = {k: v for k, v in (("size", size), ("type", image_type), ("license", license_)) if v}
    from_file = urls is not None or from_folder is not None or engine in (EngineName.URLS, EngineName.FOLDER)
    config = CollectConfig(
        out=out_dir,
        classes=split_csv(classes),
        per_class=per_class if per_class is not None else (None if from_file else DEFAULT_PER_CLASS),
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
        fetch=FetchConfig(timeout=timeout, retries=retries, max_bytes=max_bytes, per_host=per_host,
                          host_delay=host_delay, allow_private_hosts=allow_private_hosts),
        retry_failed=retry_failed,
        format=format_,
        shard_size=shard_size,
    )
    if review and config.format is not OutputFormat.FILES:
        from cnnlab.errors import UsageError

        raise UsageError(f"--review reads class folders; with --format {config.format.value}, review the shards "
                         f"after the crawl: cnnlab review {out_dir / 'shards'}")
    if review:  # a missing extra is said before the crawl (which can take hours), not after it
        from cnnlab.review.job import require_review_extra

        require_review_extra()
    with logging_to_stderr(quiet), RichProgress(quiet=quiet) as progress:
        result = run(config, progress=progress)
    reviewed = _review_after_crawl(result, quiet) if review else None
    if as_json:
        payload = result.to_dict()
        if reviewed is not None:
            payload["review"] = reviewed
        print_json(payload)
        return
    _print_summary(result.classes, f"collect ({result.engine}) -> {result.out}", wide=wide)
    for note in result.notes:
        out.print(f"[yellow]note:[/] {escape(note)}")
    out.print(
        printable(f"{sum(c.new for c in result.classes)} new images, {result.fetched} candidates fetched "
                  f"({result.bytes_downloaded / 1e6:.1f} MB) in {result.elapsed:.1f} s; manifest: {result.manifest}"),
        markup=False,
    )
    if result.format != OutputFormat.FILES.value:
        out.print(printable(f"{result.format} shards: {len(result.shards)} completed by this run in "
                            f"{result.out / 'shards'}"), markup=False)
    if reviewed is not None:
        counts = ", ".join(f"{kind} {n}" for kind, n in reviewed["counts"].items())
        out.print(f"review: {counts}; gallery: {reviewed['files']['html']} "
                  f"(act on it: cnnlab review {result.out} --apply --kinds ...)", markup=False)


def _review_after_crawl(collected: CollectResult, quiet: bool) -> dict[str, Any] | None:
    """`cnnlab review` on the collected set with its defaults: counts and output files, or None with a note."""
    from cnnlab.cli.review import run_review
    from cnnlab.review import ReviewConfig

    if not any(c.ok for c in collected.classes):
        err.print("[yellow]note:[/] nothing collected: no review")
        return None
    result, files = run_review(collected.out, ReviewConfig(), None, quiet=quiet)
    for note in result.notes:
        err.print(f"[yellow]review note:[/] {escape(note)}")
    return {"counts": result.counts(), "files": {k: str(v) for k, v in files.items()}}
