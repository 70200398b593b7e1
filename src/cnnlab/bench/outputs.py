"""Writing every output file of a benchmark run into one folder.

``write_bench_outputs(result, out_dir)`` writes:

* ``results.md``: the report (see :func:`cnnlab.bench.report.report_blocks`), figures linked;
* ``report.html``: the same report on one self-contained page, figures embedded;
* ``results.csv`` / ``results.json``: one row per model, stable columns, the schema version
  (:data:`cnnlab.bench.result.SCHEMA_VERSION`); the JSON adds the environment, configuration,
  label mapping, per-class figures, the most confident mistakes and paired tests (strict JSON:
  no nan; its size grows with models x classes, not with images);
* ``predictions/<model>.csv``: path, label, top-k indices and probabilities (recompute anything);
* ``confusion/<model>.csv``: the non-zero cells of each scored model's confusion matrix;
* ``skipped.csv``: every file left out, and why;
* the plots as PNG files (``accuracy_vs_throughput``, ``memory``, ``per_class``, ``confusion_<model>``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.bench.plots import bench_plots
from cnnlab.bench.report import report_blocks
from cnnlab.bench.stems import model_file_stems
from cnnlab.jsonable import to_jsonable
from cnnlab.outputs import OutputError, OutputFolder, atomic_open, atomic_write, describe_os_error
from cnnlab.render.blocks import Figure
from cnnlab.render.html import render_html
from cnnlab.render.markdown import render_markdown
from cnnlab.render.naming import csv_record, csv_row, printable

if TYPE_CHECKING:
    from cnnlab.bench.result import BenchResult

#: The columns of skipped.csv.
SKIPPED_COLUMNS = ("path", "label", "reason", "detail")
#: Prediction records turned into CSV rows at a time.
_CHUNK = 4096


def _write_rows(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with atomic_open(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(csv_record(row) for row in rows)


def _write_results_csv(result: BenchResult, path: Path, schema_version: int) -> None:
    rows = [{"schema_version": schema_version, **m.flat()} for m in result.models]
    _write_rows(path, rows, list(rows[0]) if rows else ["schema_version"])


def _write_skipped(result: BenchResult, path: Path) -> None:
    rows = [{"path": s.path, "label": s.label or "", "reason": s.reason, "detail": s.detail} for s in result.skipped]
    _write_rows(path, rows, SKIPPED_COLUMNS)


def _write_predictions(result: BenchResult, folder: Path) -> dict[str, Path]:
    """One CSV per model, written chunk by chunk from the prediction records (memory flat in images)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    ds = result.dataset
    for m, stem in zip(result.models, model_file_stems([m.name for m in result.models])):
        records = m.predictions
        if records is None:
            continue
        categories = m.run.categories
        k = m.run.topk or records["topk"].shape[1]
        files[f"predictions_csv_{stem}"] = folder / f"{stem}.csv"
        with atomic_open(folder / f"{stem}.csv") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label"] + [f"top{i}_index" for i in range(1, k + 1)]
                            + [f"top{i}_prob" for i in range(1, k + 1)] + ["top1_name"])
            for start in range(0, len(records), _CHUNK):
                chunk = records[start:start + _CHUNK]
                for row, idx, prob in zip(chunk["row"].tolist(), chunk["topk"][:, :k].tolist(),
                                          chunk["probs"][:, :k].tolist()):
                    top1 = categories[idx[0]] if categories else ""
                    writer.writerow(csv_row([str(ds.paths[row]), ds.classes[ds.targets[row]], *idx,
                                             *[f"{p:.6f}" for p in prob], top1]))
    return files


def _write_confusions(result: BenchResult, folder: Path) -> dict[str, Path]:
    """``confusion/<model>.csv``: the non-zero cells (true, predicted, count) of each scored model."""
    files: dict[str, Path] = {}
    scored = [m for m in result.models if m.accuracy is not None and not m.run.random_weights]
    if not scored:
        return files
    folder.mkdir(parents=True, exist_ok=True)
    classes = result.dataset.classes
    for m, stem in zip(scored, model_file_stems([m.name for m in scored])):
        assert m.accuracy is not None
        c = m.accuracy.confusion
        rows = [{"true": classes[t], "predicted": classes[p] if p < len(classes) else "other", "count": n}
                for t, p, n in zip(c.true.tolist(), c.predicted.tolist(), c.count.tolist())]
        path = folder / f"{stem}.csv"
        _write_rows(path, rows, ("true", "predicted", "count"))
        files[f"confusion_csv_{stem}"] = path
    return files


#: The files every run writes (its plots and per-model CSVs are listed in results.json's ``files``): an output
#: folder holding any of them holds an earlier run (:class:`cnnlab.outputs.OutputFolder`). Folders are not
#: named here: a ``predictions/`` folder of the user's is not bench's to delete, only the files bench listed.
RUN_FILES = ("results.csv", "results.json", "results.md", "report.html", "skipped.csv")
#: The sub-folders whose files an earlier run may list (one level down, CSV files only).
_LISTED_FOLDERS = ("predictions", "confusion")


#: The most of an earlier run's results.json read to find its plots (a link to ``/dev/zero`` or a FIFO in the
#: output folder is no list, not a hang).
MAX_RESULTS_BYTES = 64 * 1024 * 1024


def listed_plots(out_dir: Path) -> list[Path]:
    """The files an earlier run's results.json lists besides :data:`RUN_FILES`: plain PNG file names in the folder
    itself, and CSV files in ``predictions/`` and ``confusion/`` — regular files, nothing else."""
    from cnnlab.errors import ImageDecodeError
    from cnnlab.imagedata.decode import read_regular_file

    try:
        listed = json.loads(read_regular_file(out_dir / "results.json", MAX_RESULTS_BYTES)).get("files") or []
    except (OSError, ValueError, RecursionError, AttributeError, ImageDecodeError):
        return []
    found = []
    for name in listed if isinstance(listed, list) else []:
        parts = Path(str(name)).parts
        path = out_dir / str(name)
        plot = len(parts) == 1 and path.suffix == ".png"
        table = len(parts) == 2 and parts[0] in _LISTED_FOLDERS and path.suffix == ".csv"
        if (plot or table) and ".." not in parts and path.is_file() and not path.is_symlink() and path not in found:
            found.append(path)
    return found


def write_bench_outputs(result: BenchResult, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write every output file into ``out_dir`` (created if needed); returns their paths by kind.

    The kinds are ``markdown``, ``html``, ``csv``, ``json``, ``skipped``, ``confusion_csv_<model>``
    and, with ``plots``, one per plot (``accuracy_vs_throughput``, ``memory``, ``per_class``,
    ``confusion_<model>``, ``throughput_curve``). Every file is written atomically; a write that
    fails (disk full, no permission) raises :class:`cnnlab.outputs.OutputError`. Text meant for
    people (results.md, report.html) shows undecodable file-name bytes as ``\\xNN``; the CSV files
    keep them as they are, so they name the files exactly.
    """
    from cnnlab.bench.result import SCHEMA_VERSION  # here, not at import: cnnlab.bench.result loads numpy and scipy

    out = OutputFolder(Path(out_dir), "bench").create()
    try:
        files = {"csv": out / "results.csv", "json": out / "results.json", "skipped": out / "skipped.csv"}
        _write_results_csv(result, files["csv"], SCHEMA_VERSION)
        _write_skipped(result, files["skipped"])
        files.update(_write_predictions(result, out / "predictions"))
        files.update(_write_confusions(result, out / "confusion"))
        figures: list[Figure] = bench_plots(result, out) if plots else []
        files.update({figure.key: figure.path for figure in figures})
        blocks = report_blocks(result, figures)
        files["markdown"] = atomic_write(out / "results.md", printable(render_markdown(blocks)))
        files["html"] = atomic_write(out / "report.html", printable(render_html(blocks)))
        payload = {**result.to_dict(), "files": sorted(p.relative_to(out).as_posix() for p in files.values())}
        atomic_write(files["json"], json.dumps(to_jsonable(payload), indent=2, allow_nan=False))
    except OSError as exc:
        raise OutputError(describe_os_error(exc, out)) from None
    return files
