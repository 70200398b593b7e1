"""Writing every output file of a benchmark run into one folder.

``write_bench_outputs(result, out_dir)`` writes:

* ``results.md``: the report (see :func:`cnnlab.report.blocks.report_blocks`), figures linked;
* ``report.html``: the same report on one self-contained page, figures embedded;
* ``results.csv`` / ``results.json``: one row per model, stable columns, the schema version
  (:data:`cnnlab.bench.result.SCHEMA_VERSION`); the JSON adds the environment, configuration,
  label mapping, per-class figures, confusion matrices and paired tests (strict JSON: no nan);
* ``predictions/<model>.csv``: path, label, top-k indices and probabilities (recompute anything);
* ``skipped.csv``: every file left out, and why;
* the plots as PNG files (``accuracy_vs_throughput``, ``memory``, ``per_class``, ``confusion_<model>``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.jsonable import to_jsonable
from cnnlab.report.blocks import Figure, report_blocks
from cnnlab.report.html import render_html
from cnnlab.report.markdown import render_markdown
from cnnlab.report.naming import file_stem, unique_names
from cnnlab.report.plots import bench_plots

if TYPE_CHECKING:
    from cnnlab.bench.result import BenchResult

#: The columns of skipped.csv.
SKIPPED_COLUMNS = ("path", "label", "reason", "detail")


def _write_rows(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _write_results_csv(result: BenchResult, path: Path, schema_version: int) -> None:
    rows = [{"schema_version": schema_version, **m.flat()} for m in result.models]
    if rows:
        _write_rows(path, rows, list(rows[0]))
    else:
        path.write_text("", encoding="utf-8")


def _write_skipped(result: BenchResult, path: Path) -> None:
    rows = [{"path": s.path, "label": s.label or "", "reason": s.reason, "detail": s.detail} for s in result.skipped]
    _write_rows(path, rows, SKIPPED_COLUMNS)


def _write_predictions(result: BenchResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ds = result.dataset
    for m, name in zip(result.models, unique_names([m.name for m in result.models])):
        if m.predictions is None:
            continue
        categories = m.run.categories
        k = m.predictions["topk"].shape[1]
        with (folder / f"{file_stem(name)}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label"] + [f"top{i}_index" for i in range(1, k + 1)]
                            + [f"top{i}_prob" for i in range(1, k + 1)] + ["top1_name"])
            for row, idx, prob in zip(m.predictions["rows"], m.predictions["topk"], m.predictions["probs"]):
                top1 = categories[int(idx[0])] if categories else ""
                writer.writerow([str(ds.paths[int(row)]), ds.classes[ds.targets[int(row)]]]
                                + [int(i) for i in idx] + [f"{float(p):.6f}" for p in prob] + [top1])


def write_bench_outputs(result: BenchResult, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write every output file into ``out_dir`` (created if needed); returns their paths by kind.

    The kinds are ``markdown``, ``html``, ``csv``, ``json``, ``skipped`` and, with ``plots``, one
    per plot (``accuracy_vs_throughput``, ``memory``, ``per_class``, ``confusion_<model>``).
    """
    from cnnlab.bench.result import SCHEMA_VERSION  # here, not at import: cnnlab.bench.result loads numpy and scipy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "results.csv", "json": out / "results.json", "skipped": out / "skipped.csv"}
    _write_results_csv(result, files["csv"], SCHEMA_VERSION)
    files["json"].write_text(json.dumps(to_jsonable(result.to_dict()), indent=2, allow_nan=False), encoding="utf-8")
    _write_skipped(result, files["skipped"])
    _write_predictions(result, out / "predictions")
    figures: list[Figure] = bench_plots(result, out) if plots else []
    files.update({figure.key: figure.path for figure in figures})
    blocks = report_blocks(result, figures)
    files["markdown"] = out / "results.md"
    files["markdown"].write_text(render_markdown(blocks), encoding="utf-8")
    files["html"] = out / "report.html"
    files["html"].write_text(render_html(blocks), encoding="utf-8")
    return files
