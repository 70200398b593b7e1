"""`cnnlab bench`: the lab's comparison of models on a labelled image set."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cnnlab.bench.config import DEFAULT_SPEED_BUDGET_S, BenchConfig, MeasureOptions
from cnnlab.cli.app import app
from cnnlab.cli.common import err, escape, handle_errors, longest_words, out, print_table, split_csv
from cnnlab.cli.params import (
    CalibrationImages,
    DeviceList,
    ImageColumn,
    LabelColumn,
    Nproc,
    PrecisionOpt,
    Quiet,
    Threads,
    WeightsDir,
    Wide,
    default_of,
    out_option,
)
from cnnlab.cli.tracking import Track, Tracker, TrackUri, check_tracking, track_run
from cnnlab.errors import UsageError
from cnnlab.models.registry import LAB_MODELS
from cnnlab.options import (
    DEFAULT_CALIBRATION_IMAGES,
    DecodeWhere,
    RuntimeChoice,
    RuntimeOptions,
    WeightsPolicy,
    parse_choice,
)
from cnnlab.runtime.threads import passive_openmp

if TYPE_CHECKING:
    from cnnlab.bench import BenchResult

passive_openmp()  # before torch is imported (--in-process runs the models here): cnnlab.runtime.threads

#: Exit status when some model failed (its row says why).
EXIT_MODEL_FAILED = 4
_M = MeasureOptions()
_R = _M.runtime


def _fits(header: list[str], rows: list[list[str]]) -> bool:
    """Whether a table fits the terminal without breaking a word (its cells may wrap between words)."""
    widths = longest_words(header, rows)
    return sum(widths) + 3 * len(widths) + 1 <= out.width


def _print_blocks(names: list[str], labels: list[str], values: list[list[str]], title: str) -> None:
    """A table too wide for the terminal, as one block per model: its name, then ``figure: value`` lines."""
    out.print(escape(title), markup=True)
    for name, column in zip(names, values):
        out.print(escape(name), style="bold", markup=True)
        for label, value in zip(labels, column):
            out.print(f"  {label}: {value}", markup=False)


def _print_wide(header: list[str], rows: list[list[str]], title: str, *, by_column: bool = False) -> None:
    """``header``/``rows`` as a table when it fits, else as per-model blocks. ``by_column``: a column
    per model (the lab's table) rather than a row per model."""
    if _fits(header, rows):
        print_table(header, rows, title=title, whole_words=True)
    elif by_column:
        _print_blocks(header[1:], [row[0] for row in rows], [list(col) for col in zip(*(r[1:] for r in rows))], title)
    else:
        _print_blocks([row[0] for row in rows], header[1:], [row[1:] for row in rows], title)


def _sparkline(values: list[float]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    top = max(values) or 1.0
    return "".join(bars[min(len(bars) - 1, int(v / top * (len(bars) - 1) + 0.5))] for v in values)


def print_throughput_curves(result: BenchResult) -> None:
    """Model-only images/s against the batch size, one line per model (when more than one size was measured)."""
    from cnnlab.render.naming import unique_names

    models = [(m, n) for m, n in zip(result.models, unique_names([m.name for m in result.models]))
              if m.ok and len(m.run.throughput_curve) > 1]
    if not models:
        return
    out.print("Throughput by batch size (model-only img/s):", markup=False)
    for m, name in models:
        curve = sorted((int(b), ips) for b, ips in m.run.throughput_curve.items())
        points = ", ".join(f"{b}: {ips:,.1f}" for b, ips in curve)
        best = max(curve, key=lambda p: p[1])[0]
        out.print(escape(f"  {name}: {_sparkline([ips for _, ips in curve])} {points} (best at batch {best})"))


def print_results(result: BenchResult, *, wide: bool) -> None:
    """The comparison on stdout: key figures (or every figure with ``wide``), then the paired tests.

    With ``wide``, a table too wide for the terminal is printed as one block per model instead.
    """
    from cnnlab.bench import full_table, lab_table, summary_table

    if wide:
        _print_wide(*lab_table(result), title="The lab's table", by_column=True)
        _print_wide(*full_table(result), title="All figures")
    else:
        header, rows = summary_table(result)
        print_table(header, rows, title="cnnlab bench (--wide: every figure; files: every detail)",
                    justify={h: "right" for h in header[1:]})
        if any(m.ok and m.run.random_weights for m in result.models):
            out.print("* random weights: speed and memory only, no accuracy", markup=False)
    print_throughput_curves(result)
    for c in result.comparisons:
        out.print(f"- {c.verdict}", markup=False)


def run_bench(config: BenchConfig, out_dir: Path, *, plots: bool, quiet: bool, wide: bool, overwrite: bool,
              track: Tracker | None = None, track_uri: str | None = None) -> None:
    """Run ``config`` into ``out_dir`` (:func:`cnnlab.bench.run`), print the comparison, log it to a tracker when
    asked (before a failed model's exit); exit 2/4 on failures."""
    from cnnlab.bench import run
    from cnnlab.cli.progress import RichProgress

    with RichProgress(quiet=quiet) as progress:
        result = run(config, out=out_dir, overwrite=overwrite, plots=plots, progress=progress)
    if result.files:  # torchrun: rank 0 wrote the folder
        track_run(out_dir, track, track_uri)
    report_bench(result, out_dir, wide=wide)


def report_bench(result: BenchResult, out_dir: Path, *, wide: bool) -> None:
    """Print a finished run's comparison and notes; exit 2 when no image could be read, 4 when a model failed."""
    if not result.files:  # torchrun: a rank other than 0 measured its share; rank 0 reports
        return
    print_results(result, wide=wide)
    unmapped = [n for n, m in result.mappings.items() if not m.mapped]
    if unmapped:
        shown = ", ".join(unmapped[:10]) + (f" and {len(unmapped) - 10} more" if len(unmapped) > 10 else "")
        err.print(f"[yellow]not scored by ImageNet models (no mapping):[/] {escape(shown)}")
    if result.skipped:
        err.print(f"[yellow]{len(result.skipped)} files skipped[/] (see {escape(str(result.files['skipped']))})")
    plots = ", plots" if any(path.suffix == ".png" for path in result.files.values()) else ""
    err.print(f"results in {escape(str(out_dir))}/ (results.md, results.csv, results.json, report.html{plots}, "
              "predictions/)")
    if not any(m.run.eval_images for m in result.models if m.ok) and any(m.ok for m in result.models):
        err.print("[red]no image could be read[/]: every file was skipped (see skipped.csv)")
        raise typer.Exit(2)
    if result.failed:
        for m in result.failed:
            err.print(f"[red]{escape(m.name)} failed:[/] {escape(str(m.run.error))}")
        raise typer.Exit(EXIT_MODEL_FAILED)


def _backends(values: list[str] | None) -> list[str] | None:
    """``--backend torch,openvino`` and ``--backend torch --backend openvino``, each checked before any work."""
    if values is None:
        return None
    try:
        return [parse_choice(RuntimeChoice, v, "backend").value for v in split_csv(values)]
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None


def auto_or_count(text: str | None, what: str, low: int, high: int) -> int | None:
    """``auto`` (``None``: measured per model) or a whole number from ``low`` to ``high``."""
    if text is None or text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(f"expected auto or a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise typer.BadParameter(f"{what} must be auto or from {low} to {high}, got {value}")
    return value


def _batch_sizes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated whole numbers, e.g. 1,8,32; got {text!r}") from None


@app.command("bench")
@handle_errors
def bench_command(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="A class-folder tree DATA/<class>/*.jpg, a CSV/JSONL manifest with path,label[,split], a flat ImageNet validation folder (ILSVRC2012_val_*.JPEG, with --labels), a Hugging Face dataset (hf:NAME[:CONFIG][/SPLIT] or a save_to_disk folder), Parquet files, or WebDataset shards (train-{000000..000009}.tar or a folder of .tar).")],
    models: Annotated[Optional[list[str]], typer.Option("--models", "-m", metavar="NAME[,NAME...]", help=f"Comma-separated names or checkpoint/.onnx files (default: {','.join(LAB_MODELS)}).")] = None,
    out_dir: Annotated[Path, out_option("Folder for results.md/csv/json, report.html, plots, predictions/ (not inside DATA).")] = Path("bench-results"),
    split: Annotated[Optional[str], typer.Option("--split", metavar="NAME", help="Use only this split of DATA/split.csv (train, val, test), or of the dataset's own splits.")] = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    track: Track = None,
    track_uri: TrackUri = None,
    mapping: Annotated[Optional[Path], typer.Option("--mapping", metavar="PATH", help="YAML/JSON file: class -> ImageNet names, wnids or indices.")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", metavar="PATH", help="Ground truth of a flat ImageNet validation folder: LOC_val_solution.csv, or the devkit's folder or ground-truth file.")] = None,
    real_labels: Annotated[Optional[Path], typer.Option("--real-labels", metavar="PATH", help="ImageNet-ReaL real.json: also report accuracy against the ReaL labels.")] = None,
    backends: Annotated[Optional[list[str]], typer.Option("--backend", callback=_backends, metavar="[" + "|".join(c.value for c in RuntimeChoice) + "][,...]", help="Comma-separated: torch, onnxruntime, openvino, onnxruntime-int8, openvino-int8; a row per model and backend (default: torch).")] = None,
    calibration_images: CalibrationImages = DEFAULT_CALIBRATION_IMAGES,
    device: DeviceList = _R.device,
    nproc: Nproc = None,
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", metavar="auto|N", help="Images per batch; auto: measured per model and device on the first images (a few seconds; the choice and its evidence go into results.json).")] = "auto",
    batch_sizes: Annotated[Optional[str], typer.Option("--batch-sizes", metavar="N[,N...]", help="Also measure model-only throughput at these batch sizes, e.g. 1,8,32,128 (a curve).")] = None,
    precision: PrecisionOpt = _R.precision,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC memory format (torch rows); default: on for the CPU, where it is faster.", show_default=False)] = _R.channels_last,
    fold_bn: Annotated[bool, typer.Option("--fold-bn/--no-fold-bn", help="Fold batch normalisation into the convolutions before it (torch rows; same predictions, faster).")] = True,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile each model (torch rows; slow to start).")] = _R.compile,
    workers: Annotated[str, typer.Option("--workers", metavar="auto|N", help="Decoding processes beside the model; auto: none for a CPU model (threads of this process decode each batch, taking turns with it), cores-1 up to 8 for a GPU model.")] = "auto",
    threads: Threads = _R.threads,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Speed and memory only: no weights, no accuracy.")] = False,
    random_if_missing: Annotated[bool, typer.Option("--random-weights-if-missing", help="Random weights only for models whose weights are not on disk.")] = False,
    weights_dir: WeightsDir = _M.weights_dir,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run all models in this process (default: one process per model).")] = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout-per-model", min=1.0, metavar="SECONDS", help="Stop a model after this many seconds and report it as an error.")] = default_of(BenchConfig, "model_timeout_s"),
    decode: Annotated[DecodeWhere, typer.Option("--decode", case_sensitive=False, help="Where JPEGs are decoded: auto (nvJPEG on the GPU when the model runs on CUDA), cpu, or device.")] = _R.decode,
    exact_decode: Annotated[bool, typer.Option("--exact-decode", help="Decode JPEGs at full size (default: DCT-domain downscaling, faster).")] = False,
    repeats: Annotated[int, typer.Option("--repeats", min=3, metavar="N", help="Timed rounds for latency, at most (throughput uses half; at least 3): each figure is their median, with its spread.")] = _M.latency_repeats,
    speed_budget: Annotated[float, typer.Option("--speed-budget", min=1.0, metavar="SECONDS", help="Seconds the speed phases (throughput, latency) of each model may take together.")] = DEFAULT_SPEED_BUDGET_S,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results of an earlier run in --out.")] = False,
    wide: Wide = False,
    quiet: Quiet = False,
) -> None:
    """Compare models on a labelled image set: top-1/top-5 with confidence intervals, time, memory.

    With --backend, each model also runs as its ONNX export in onnxruntime or openvino, and in
    int8 calibrated on your images: speed and accuracy side by side. The machine and its load
    are part of every speed figure: compare rows of one run.

    Exit status: 0 when every model ran, 4 when some model failed (its row says why).
    """
    if random_weights and random_if_missing:
        raise typer.BadParameter("choose one of --random-weights and --random-weights-if-missing")
    track_uri = check_tracking(track, track_uri)  # the store, before any work
    if nproc is not None:
        from cnnlab.runtime.distributed import from_environment, relaunch

        if from_environment() is None:  # under torchrun already: --nproc was for the launcher
            raise typer.Exit(relaunch(nproc, "bench"))
    devices = device.split(",")
    names = split_csv(models) if models is not None else list(LAB_MODELS)
    if not names:
        raise typer.BadParameter("names no model; leave it out for the lab's three", param_hint="--models")
    policy = (WeightsPolicy.RANDOM if random_weights else
              WeightsPolicy.RANDOM_IF_MISSING if random_if_missing else WeightsPolicy.PRETRAINED)
    runtime = RuntimeOptions(device=devices[0], batch_size=auto_or_count(batch_size, "the batch size", 1, 65536),
                             precision=precision, channels_last=channels_last, fold_bn=fold_bn, compile=compile,
                             workers=auto_or_count(workers, "the loader workers", 0, 256), threads=threads,
                             fast_decode=not exact_decode, decode=decode)
    measure = MeasureOptions(runtime=runtime, weights=policy, weights_dir=weights_dir, latency_repeats=repeats,
                             throughput_repeats=max(3, repeats // 2), batch_sizes=_batch_sizes(batch_sizes),
                             speed_budget_s=speed_budget)
    config = BenchConfig(data=data, models=names, split=split, image_column=image_column, label_column=label_column,
                         mapping_file=mapping, labels_file=labels,
                         real_labels=real_labels, measure=measure, isolate=not in_process, model_timeout_s=timeout,
                         backends=[RuntimeChoice(b) for b in backends or [RuntimeChoice.TORCH.value]],
                         calibration_images=calibration_images, devices=devices if len(devices) > 1 else [])
    if in_process:  # the models run in this process: as in their own processes, freed memory is kept for reuse
        from cnnlab.runtime.allocator import keep_freed_memory

        keep_freed_memory()
    run_bench(config, out_dir, plots=not no_plots, quiet=quiet, wide=wide, overwrite=overwrite, track=track,
              track_uri=track_uri)
