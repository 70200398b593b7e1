"""Turning a :class:`~cnnlab.bench.BenchResult` into files: Markdown, CSV, JSON, PNG plots, HTML.

``write_bench_outputs(result, out_dir)`` writes:

* ``results.md``: the lab's table (rows Top-1, Top-5, time, memory; a column per model), then the
  full table, the verdicts of paired tests, the label mapping, per-class accuracy, skipped files;
* ``results.csv`` / ``results.json``: one row per model, stable columns, schema version, environment;
* ``predictions/<model>.csv``: path, label, top-5 indices and probabilities (recompute anything);
* ``skipped.csv``; plots (``accuracy_vs_throughput.png``, ``memory.png``, ``per_class.png``,
  ``confusion_<model>.png``); ``report.html`` showing all of it on one page.
"""

from __future__ import annotations

import csv
import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from cnnlab.labels import describe_indices
from cnnlab.report.naming import file_stem, unique_names

if TYPE_CHECKING:
    from cnnlab.bench import BenchResult


def _pct_ci(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "n/a"
    if low is None or high is None:
        return f"{value:.2f}"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _num(value: float | None, fmt: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{suffix}"


def memory_label(result: BenchResult) -> str:
    on_gpu = any(m.run.cuda_peak_allocated_mib is not None for m in result.models)
    return "Memory (MiB, peak GPU allocated)" if on_gpu else "Memory (MiB, peak process RSS increase)"


def lab_table(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """The lab's table: header and rows (Top-1, Top-5, time, memory), a column per model."""
    header = [""] + [m.name for m in result.models]
    rows: list[list[str]] = [["Top-1 accuracy [95% CI]"], ["Top-5 accuracy [95% CI]"],
                             ["Time (s, whole set, end to end)"], [memory_label(result)]]
    for m in result.models:
        f = m.flat()
        if not m.ok:
            for row in rows:
                row.append("error")
            continue
        random = " (random weights)" if m.run.random_weights else ""
        rows[0].append(_pct_ci(f["top1"], f["top1_ci_low"], f["top1_ci_high"]) + random)
        rows[1].append(_pct_ci(f["top5"], f["top5_ci_low"], f["top5_ci_high"]) + random)
        rows[2].append(_num(f["eval_total_s"]))
        rows[3].append(_num(f["memory_mib"], ".0f"))
    return header, rows


def short_name(model_name: str) -> str:
    """``resnet50`` for a model's default weights entry, the full name otherwise (tables at 80 columns)."""
    from cnnlab.zoo import get_spec

    arch = model_name.split(".", 1)[0]
    try:
        return arch if get_spec(arch).name == model_name else model_name
    except Exception:  # noqa: BLE001 - a checkpoint path or unknown name stays as it is
        return model_name


def summary_table(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """The key figures, one row per model, narrow enough for an 80-column terminal."""
    on_gpu = any(m.run.cuda_peak_allocated_mib is not None for m in result.models)
    header = ["model", "top-1", "95% CI", "top-5", "time s", "img/s", "GPU MiB" if on_gpu else "RSS MiB"]
    rows = []
    for m in result.models:
        f = m.flat()
        name = short_name(m.name) + (" *" if m.ok and m.run.random_weights else "")
        if not m.ok:
            rows.append([name, "error", "", "", "", "", ""])
            continue
        ci = "" if f["top1_ci_low"] is None else f"{f['top1_ci_low']:.2f}-{f['top1_ci_high']:.2f}"
        rows.append([name, _num(f["top1"]), ci, _num(f["top5"]), _num(f["eval_total_s"], ".1f"),
                     _num(f["eval_images_per_s"], ".1f"), _num(f["memory_mib"], ".0f")])
    return header, rows


def full_table(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    header = ["model", "top-1", "top-5", "ECE", "images/s (end to end)", "data s", "model s",
              "latency b1 median / p90 (ms)", "throughput (img/s @ batch)", "params (M)",
              "GMACs measured / published", "weights (MiB)", "memory (MiB)", "status"]
    rows = []
    for m in result.models:
        f = m.flat()
        rows.append([
            m.name,
            _pct_ci(f["top1"], f["top1_ci_low"], f["top1_ci_high"]),
            _pct_ci(f["top5"], f["top5_ci_low"], f["top5_ci_high"]),
            _num(f["ece"], ".3f"),
            _num(f["eval_images_per_s"], ".1f"),
            _num(f["eval_data_s"]),
            _num(f["eval_model_s"]),
            f"{_num(f['latency_b1_median_ms'], '.1f')} / {_num(f['latency_b1_p90_ms'], '.1f')}",
            f"{_num(f['throughput_images_per_s'], '.1f')} @ {f['throughput_batch'] or 'n/a'}",
            _num(f["params"] / 1e6 if f["params"] else None, ".2f"),
            f"{_num(f['gmacs_measured'], '.3f')} / {_num(f['gmacs_published'], '.3f')}",
            _num(f["weights_mib"], ".1f"),
            _num(f["memory_mib"], ".0f"),
            ("random weights: speed and memory only" if f["random_weights"] else "ok") if m.ok else f"error: {f['error']}",
        ])
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mapping_rows(result: BenchResult) -> list[list[str]]:
    counts = result.dataset.class_counts()
    rows = []
    for name, mapping in result.mappings.items():
        names = describe_indices(mapping.indices)
        shown = ", ".join(names[:4]) + (f", … ({len(names)} classes)" if len(names) > 4 else "")
        rows.append([name, str(counts.get(name, 0)), mapping.how, shown or "—", mapping.note])
    return rows


def per_class_rows(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    scored = [m for m in result.models if m.accuracy is not None and not m.run.random_weights]
    header = ["class", "images"] + [f"{m.name} acc / prec" for m in scored]
    counts = result.dataset.class_counts()
    rows = []
    for c in result.dataset.classes:
        row = [c, str(counts[c])]
        for m in scored:
            pc = {p.name: p for p in m.accuracy.per_class}  # type: ignore[union-attr]
            item = pc.get(c)
            if item is None or item.support == 0:
                row.append("not scored")
            else:
                row.append(f"{item.accuracy:.2f} / {_num(None if item.precision != item.precision else item.precision)}")
        rows.append(row)
    return header, rows


# A report is a list of blocks, rendered both as Markdown and as HTML so the two never drift apart:
# ("h1"|"h2"|"p", text), ("table", header, rows), ("list", items).
Block = tuple[Any, ...]


def report_blocks(result: BenchResult) -> list[Block]:
    """The content of results.md and report.html, in order."""
    env = result.environment
    ds = result.dataset
    device = next((m.run.device_name or m.run.device for m in result.models if m.ok), "n/a")
    blocks: list[Block] = [
        ("h1", "cnnlab bench results"),
        ("p", f"Data: {ds.root} — {len(ds)} images in {len(ds.classes)} classes; {len(result.skipped)} files "
              f"skipped. Device: {device}; torch {env['torch']}, torchvision {env['torchvision']}; "
              f"precision {result.config.measure.precision}; batch {result.config.measure.batch_size}."),
        ("h2", "The lab's table"),
        ("table", *lab_table(result)),
        ("p", "Accuracy counts only images whose class maps onto the model's outputs (see the label mapping). "
              "Brackets are 95% Wilson intervals: where two models' intervals overlap, the data cannot tell them "
              "apart; the paired tests below say whether a difference is significant."),
        ("h2", "All figures"),
        ("table", *full_table(result)),
    ]
    if any(m.run.random_weights for m in result.models):
        blocks.append(("p", "Models marked 'random weights' ran without their pretrained weights: their speed and "
                            "memory figures are real; they have no accuracy figures."))
    if result.comparisons:
        blocks += [("h2", "Are the differences real? (paired McNemar tests, top-1)"),
                   ("list", [c.verdict for c in result.comparisons])]
    blocks += [("h2", "Label mapping"),
               ("table", ["folder", "images", "how", "ImageNet classes", "note"], mapping_rows(result))]
    unmapped = [n for n, m in result.mappings.items() if not m.mapped]
    if unmapped:
        blocks.append(("p", f"Left out of ImageNet accuracy (no mapping): {', '.join(unmapped)}. "
                            "Add them to a mapping file (--mapping) to score them."))
    if ds.empty_classes:
        blocks.append(("p", f"Empty classes: {', '.join(ds.empty_classes)}."))
    header, rows = per_class_rows(result)
    if len(header) > 2:
        blocks += [("h2", "Per class"), ("table", header, rows)]
    if result.skipped:
        reasons = Counter(s.reason for s in result.skipped)
        blocks += [("h2", "Skipped files"),
                   ("p", ", ".join(f"{r}: {n}" for r, n in reasons.most_common()) + " (every file in skipped.csv)")]
    errors = [m for m in result.models if not m.ok]
    if errors:
        blocks += [("h2", "Errors"), ("list", [f"{m.name}: {m.run.error}" for m in errors])]
    return blocks


def markdown_report(result: BenchResult) -> str:
    """results.md."""
    parts = []
    for block in report_blocks(result):
        kind = block[0]
        if kind == "h1":
            parts.append(f"# {block[1]}")
        elif kind == "h2":
            parts.append(f"## {block[1]}")
        elif kind == "p":
            parts.append(block[1])
        elif kind == "table":
            parts.append(_md_table(block[1], block[2]))
        elif kind == "list":
            parts.append("\n".join(f"- {item}" for item in block[1]))
        parts.append("")
    return "\n".join(parts)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_predictions(result: BenchResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ds = result.dataset
    for m, name in zip(result.models, unique_names([m.name for m in result.models])):
        if m.predictions is None:
            continue
        categories = m.run.categories
        with (folder / f"{file_stem(name)}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            k = m.predictions["topk"].shape[1]
            writer.writerow(["path", "label"] + [f"top{i}_index" for i in range(1, k + 1)]
                            + [f"top{i}_prob" for i in range(1, k + 1)] + ["top1_name"])
            for row, idx, prob in zip(m.predictions["rows"], m.predictions["topk"], m.predictions["probs"]):
                top1 = categories[int(idx[0])] if categories else ""
                writer.writerow([str(ds.paths[int(row)]), ds.classes[ds.targets[int(row)]]]
                                + [int(i) for i in idx] + [f"{float(p):.6f}" for p in prob] + [top1])


def write_bench_outputs(result: BenchResult, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write every output file; returns their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["markdown"] = out / "results.md"
    files["markdown"].write_text(markdown_report(result))
    files["csv"] = out / "results.csv"
    _write_csv(files["csv"], [{"schema_version": 1, **m.flat()} for m in result.models])
    files["json"] = out / "results.json"
    files["json"].write_text(json.dumps(result.to_dict(), indent=2, default=_json_default))
    files["skipped"] = out / "skipped.csv"
    with files["skipped"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "reason", "detail"])
        writer.writeheader()
        writer.writerows({"path": s.path, "label": s.label or "", "reason": s.reason, "detail": s.detail}
                         for s in result.skipped)
    _write_predictions(result, out / "predictions")
    if plots:
        from cnnlab.report.plots import bench_plots

        files.update(bench_plots(result, out))
    files["html"] = out / "report.html"
    files["html"].write_text(html_report(result, {k: v.name for k, v in files.items() if v.suffix == ".png"}))
    return files


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return str(obj)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(result: BenchResult, images: dict[str, str]) -> str:
    """report.html: the same blocks as results.md, then the plots (PNG files next to it)."""
    esc = html.escape
    parts = []
    for block in report_blocks(result):
        kind = block[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{esc(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif kind == "table":
            parts.append(_html_table(block[1], block[2]))
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block[1]) + "</ul>")
    if images:
        parts.append("<h2>Plots</h2>")
    for key, name in images.items():
        parts.append(f"<h3>{esc(key.replace('_', ' '))}</h3><img src='{esc(name)}' alt='{esc(key)}'>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
             "th{background:#f3f3f3}img{max-width:100%}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>cnnlab bench</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
