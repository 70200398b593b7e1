"""`cnnlab bench` and `cnnlab demo`: the lab's comparison of models on a labelled folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cnnlab.bench import BenchConfig, BenchResult, bench_models
from cnnlab.cli.app import app
from cnnlab.cli.common import err, handle_errors, out, split_csv
from cnnlab.demo import build_demo_set
from cnnlab.errors import CnnlabError
from cnnlab.report import full_table, lab_table, write_bench_outputs
from cnnlab.zoo import LAB_MODELS, OFFLINE_MODEL

EXIT_MODEL_FAILED = 4


def _print_tables(result: BenchResult) -> None:
    for title, (header, rows) in (("The lab's table", lab_table(result)), ("All figures", full_table(result))):
        table = Table(title=title, show_lines=False)
        for h in header:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
    for c in result.comparisons:
        out.print(f"• {c.verdict}", highlight=False)


def _run(config: BenchConfig, out_dir: Path, plots: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CnnlabError(f"--out {out_dir} exists and is not a folder")
    result = bench_models(config, on_model_start=lambda i, name: err.print(
        f"[bold]model {i + 1}/{len(config.models)}: {name}[/]") if config.progress else None)
    files = write_bench_outputs(result, out_dir, plots=plots)
    _print_tables(result)
    unmapped = [n for n, m in result.mappings.items() if not m.mapped]
    if unmapped:
        err.print(f"[yellow]not scored by ImageNet models (no mapping):[/] {', '.join(unmapped)}", highlight=False)
    if result.skipped:
        err.print(f"[yellow]{len(result.skipped)} files skipped[/] (see {files['skipped']})")
    err.print(f"results in {out_dir}/ (results.md, results.csv, results.json, report.html, plots, predictions/)")
    if not any(m.run.eval_images for m in result.models if m.ok) and any(m.ok for m in result.models):
        err.print("[red]no image could be read[/]: every file was skipped (see skipped.csv)")
        raise typer.Exit(2)
    if result.failed:
        for m in result.failed:
            err.print(f"[red]{m.name} failed:[/] {m.run.error}", highlight=False)
        raise typer.Exit(EXIT_MODEL_FAILED)


Models = Annotated[Optional[list[str]], typer.Option("--models", "-m", help="Comma-separated names or checkpoint files (default: resnet50,alexnet,googlenet).")]


@app.command("bench")
@handle_errors
def bench_command(
    data: Annotated[Path, typer.Argument(help="A class-folder tree DIR/<class>/*.jpg, or a CSV/JSONL manifest with path,label[,split].")],
    models: Models = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.md/csv/json, plots, predictions.")] = Path("bench-results"),
    split: Annotated[Optional[str], typer.Option("--split", help="Use only this split of DIR/split.csv (train, val, test).")] = None,
    mapping: Annotated[Optional[Path], typer.Option("--mapping", help="YAML/JSON file: class -> ImageNet names or indices.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 32,
    precision: Annotated[str, typer.Option("--precision", help="fp32, tf32, bf16 or fp16.")] = "fp32",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory format.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile each model (slow to start).")] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help="Decoding processes (default: GPU cores-1 up to 8; CPU a quarter of the cores).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads (default: the cores not used for decoding; reported).")] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Speed and memory only: no weights, no accuracy.")] = False,
    random_if_missing: Annotated[bool, typer.Option("--random-weights-if-missing", help="Use random weights only for models whose weights are not on disk.")] = False,
    weights_dir: Annotated[Optional[Path], typer.Option("--weights-dir", help="Folder to search for weights.")] = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run all models in this process (default: one process per model).")] = False,
    exact_decode: Annotated[bool, typer.Option("--exact-decode", help="Decode JPEGs at full size (default: DCT-domain downscaling, faster).")] = False,
    repeats: Annotated[int, typer.Option("--repeats", min=3, help="Timed repeats for latency (throughput uses half).")] = 20,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Compare models on a labelled image set: top-1/top-5 with confidence intervals, time, memory.

    Exit status: 0 when every model ran, 4 when some model failed (its row says why).
    """
    config = BenchConfig(
        data=data, models=split_csv(models) or list(LAB_MODELS), split=split, mapping_file=mapping,
        device=device, batch_size=batch_size, precision=precision, channels_last=channels_last, compile=compile,
        workers=workers, threads=threads,
        random_weights="always" if random_weights else ("missing" if random_if_missing else "never"),
        weights_dir=weights_dir, isolate=not in_process, fast_decode=not exact_decode,
        latency_repeats=repeats, throughput_repeats=max(3, repeats // 2), progress=not quiet,
    )
    _run(config, out_dir, plots=not no_plots)


@app.command("demo")
@handle_errors
def demo_command(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where results go.")] = Path("demo-results"),
    device: Annotated[str, typer.Option("--device")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run the lab's comparison on built-in real photos: the offline model plus resnet50, alexnet, googlenet.

    The lab's three models use their pretrained weights when they are on disk (see `cnnlab weights
    where`); otherwise they run with random weights, for speed and memory only, and say so.
    """
    data = build_demo_set(out_dir / "demo-data")
    err.print(f"demo set: {data} (sources listed in {data / 'SOURCES.csv'})")
    config = BenchConfig(data=data, models=[OFFLINE_MODEL, *LAB_MODELS], device=device, batch_size=8,
                         random_weights="missing", progress=not quiet, latency_repeats=10, throughput_repeats=5)
    _run(config, out_dir, plots=True)
