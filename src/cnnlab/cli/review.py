"""`cnnlab review`: wrong labels, off-topic images, near-duplicates and unusable files in a labelled set."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cnnlab.cli.app import app
from cnnlab.cli.common import err, escape, handle_errors, out, print_json, print_table, split_csv
from cnnlab.cli.params import Device, ImageColumn, Json, LabelColumn, Quiet, Threads, WeightsDir, Wide
from cnnlab.jsonable import to_jsonable
from cnnlab.options import ReviewIssue, parse_choice
from cnnlab.review.config import ISSUE_ORDER, QUARANTINE_DIR, EmbeddingBackend, ReviewConfig

if TYPE_CHECKING:
    from cnnlab.review import ReviewResult
    from cnnlab.review.quarantine import MoveReport

_KINDS = ",".join(k.value for k in ReviewIssue)
_R = ReviewConfig()
_BACKEND = EmbeddingBackend(_R.backend)


def parse_kinds(values: list[str] | None) -> list[ReviewIssue]:
    """``--kinds mislabel,duplicate`` as issue kinds (all of them when not given); a typo is a usage error."""
    names = split_csv(values)
    return [parse_choice(ReviewIssue, n, "issue kind") for n in names] if names else list(ISSUE_ORDER)


def print_summary(result: ReviewResult, files: dict[str, Path], *, wide: bool = False) -> None:
    """The table of issues (fits 80 columns; ``wide``: also the top file's label, suggestion and detail), the notes,
    where the outputs are."""
    header = ["issue", "files", "most suspicious", "score"] + (["label", "suggested", "detail"] if wide else [])
    rows = []
    for kind in ReviewIssue:
        found = result.of(kind)
        top = found[0] if found else None
        row = [kind.value, str(len(found)), top.path if top else "-", f"{top.score:.2f}" if top else "-"]
        if wide:
            row += [top.label, top.suggested_label or "-", top.detail or "-"] if top else ["-", "-", "-"]
        rows.append(row)
    print_table(header, rows, title=f"cnnlab review: {result.images} images, {len(result.classes)} classes",
                justify={"files": "right", "score": "right"})
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    cached = f", {result.from_cache} from the cache" if result.from_cache else ""
    err.print(f"{result.embedded} images embedded{cached} in {result.seconds.get('total', 0.0):.1f} s; "
              f"gallery: {escape(str(files['html']))} (and review.csv, review.json)")


def print_moves(report: MoveReport, root: Path, undo: bool) -> None:
    for note in report.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    for failure in report.failed:
        err.print(f"[red]failed:[/] {escape(failure)}")
    if undo:
        out.print(f"restored {len(report.moves)} files from {root / QUARANTINE_DIR}", markup=False)
    else:
        out.print(f"moved {len(report.moves)} files into {root / QUARANTINE_DIR} "
                  f"(put them back: cnnlab review --undo {root})", markup=False)


def run_review(data: Path, config: ReviewConfig, out_dir: Path | None, *, quiet: bool,
               overwrite: bool = False) -> tuple[ReviewResult, dict[str, Path]]:
    """:func:`cnnlab.review.run` with progress on stderr; used by `review` and `collect --review`."""
    import dataclasses

    from cnnlab.cli.progress import RichProgress
    from cnnlab.review import run

    with RichProgress(quiet=quiet) as progress:
        result = run(dataclasses.replace(config, data=data), out=out_dir, overwrite=overwrite, progress=progress)
    return result, result.files


@app.command("review")
@handle_errors
def review_command(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="A class-folder tree, a CSV/JSONL manifest, a collect output folder, a Hugging Face dataset (hf:NAME[:CONFIG][/SPLIT] or a save_to_disk folder), Parquet files or WebDataset shards.")],
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", metavar="PATH", help="Folder for review.csv/json/html (default: DATA/.cnnlab/review, always replaced).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier review in --out (its review.csv/json/html); the default DATA/.cnnlab/review is review's own and always replaced.")] = False,
    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME|FILE", help="Registry name or a checkpoint from `cnnlab train`.")] = _R.model,
    mapping: Annotated[Optional[Path], typer.Option("--mapping", metavar="FILE", help="YAML/JSON file: class -> ImageNet classes.")] = None,
    device: Device = _R.device,
    backend: Annotated[EmbeddingBackend, typer.Option("--backend", case_sensitive=False, help="What computes the embeddings: torch, onnxruntime (a cached ONNX export; needs cnnlab[onnx]) or auto: onnxruntime when installed, on the CPU.")] = _BACKEND,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, max=65536, metavar="N", help="Images per batch (default: 32 for torch, 8 for onnxruntime).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, metavar="N", help="Decoding processes (default: with onnxruntime on a CPU a quarter of the cores, at least 1; with torch on a CPU a quarter of the cores; on a GPU cores-1 up to 8).")] = None,
    threads: Threads = None,
    weights_dir: WeightsDir = None,
    folds: Annotated[int, typer.Option("--folds", min=2, max=20, metavar="K", help="k of the k-fold probabilities for wrong labels (2-20).")] = _R.folds,
    min_side: Annotated[int, typer.Option("--min-side", min=1, metavar="PX", help="Report images whose shorter side is below this (px).")] = _R.min_side,
    offtopic_z: Annotated[float, typer.Option("--offtopic-z", min=0.1, metavar="Z", help="Off-topic threshold (robust z from the nearest class, at least 0.1).")] = _R.offtopic_z,
    duplicate_match: Annotated[float, typer.Option("--duplicate-match", min=0.5, max=1.0, metavar="X", help="Pixel match (0.5-1) for near-duplicates.")] = _R.duplicate_match,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write DATA/.cnnlab/embeddings-*.npz.")] = False,
    apply: Annotated[bool, typer.Option("--apply", help="Move flagged files into DATA/.quarantine/ (see --kinds).")] = False,
    kinds: Annotated[Optional[list[str]], typer.Option("--kinds", metavar="KIND[,KIND...]", help=f"Issue kinds --apply moves (default: all): {_KINDS}.")] = None,
    min_score: Annotated[float, typer.Option("--min-score", min=0.0, max=1.0, metavar="X", help="--apply moves only files scored at least this (0-1).")] = 0.0,
    undo: Annotated[bool, typer.Option("--undo", help="Put back every file --apply moved out of DATA, and stop.")] = False,
    wide: Wide = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Find wrong labels, off-topic images, near-duplicates and bad files.

    Writes review.csv, review.json and a self-contained review.html (thumbnails and
    evidence, most suspicious first). --apply moves flagged files into DATA/.quarantine/
    (recorded, also in manifest.jsonl); --undo puts them back.
    """
    from cnnlab.review import apply_review, undo_review

    if undo and apply:
        raise typer.BadParameter("choose one of --apply and --undo")
    chosen = parse_kinds(kinds)
    if (kinds is not None or min_score) and not apply:
        raise typer.BadParameter("--kinds and --min-score say what --apply moves; add --apply")
    if undo:
        report = undo_review(data)
        if as_json:
            print_json({"restored": [m.to_dict() for m in report.moves], "notes": report.notes, "failed": report.failed})
        else:
            print_moves(report, data, undo=True)
        if report.failed:
            raise typer.Exit(1)
        return
    if apply:  # a set of records, or where the moves would go, is refused before the review's work, not after it
        from cnnlab.review import check_apply

        check_apply(data)
    config = ReviewConfig(model=model, device=device, backend=backend.value, batch_size=batch_size, workers=workers,
                          image_column=image_column, label_column=label_column, threads=threads, weights_dir=weights_dir,
                          mapping_file=mapping, cache=not no_cache, folds=folds, min_side=min_side,
                          offtopic_z=offtopic_z, duplicate_match=duplicate_match)
    result, files = run_review(data, config, out_dir, quiet=quiet, overwrite=overwrite)
    moves = apply_review(result.root, result.findings, kinds=chosen, min_score=min_score) if apply else None
    if as_json:
        payload = {"review": {k: v for k, v in result.to_dict().items() if k != "findings"},
                   "files": {k: str(v) for k, v in files.items()}, "findings": [f.to_row() for f in result.findings]}
        if moves is not None:
            payload["moved"] = [m.to_dict() for m in moves.moves]
            payload["move_notes"] = moves.notes
            payload["move_failed"] = moves.failed
        print_json(to_jsonable(payload))
    else:
        print_summary(result, files, wide=wide)
        if moves is not None:
            print_moves(moves, result.root, undo=False)
    if moves is not None and moves.failed:
        raise typer.Exit(1)
