"""The report's tables as plain data: each builder returns ``(header, rows)`` of strings.

The same tables appear on the terminal (``cnnlab bench``), in results.md and in report.html:

* :func:`lab_table`: the lab's table, a column per model; rows Top-1, Top-5 (each with its 95%
  Wilson interval), time for the whole set, memory (:func:`memory_label` says which memory);
* :func:`summary_table`: one row per model, 80 columns wide: :data:`SUMMARY_COLUMNS`, then
  ``GPU MiB`` or ``RSS MiB``;
* :func:`full_table`: one row per model with every figure: :data:`FULL_COLUMNS` (with
  :data:`RUNTIME_COLUMNS` after the name when the run has rows not run by PyTorch in fp32);
* :func:`mapping_table`: how each class folder maps onto ImageNet: :data:`MAPPING_COLUMNS`;
* :func:`per_class_table`: ``class``, ``images``, then ``<model> acc / prec`` per model with
  accuracy figures;
* :func:`throughput_table`: model-only images/s at each measured batch size.

A figure that was not measured reads ``n/a``; a failed model's cells read ``error``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from cnnlab.imagedata.labels import describe_indices
from cnnlab.jsonable import finite_or_none
from cnnlab.render.naming import unique_names

if TYPE_CHECKING:
    from cnnlab.bench.result import BenchResult, ModelResult

#: A table: its header and its rows, every cell a string.
HeaderAndRows = tuple[list[str], list[list[str]]]

#: The row labels of :func:`lab_table` before the memory row.
LAB_ROWS: Final = ("Top-1 accuracy [95% CI]", "Top-5 accuracy [95% CI]", "Time (s, whole set, end to end)")
#: The columns of :func:`summary_table` before the memory column.
SUMMARY_COLUMNS: Final = ("model", "top-1", "95% CI", "top-5", "time s", "img/s")
#: The columns of :func:`full_table`.
FULL_COLUMNS: Final = (
    "model", "top-1", "top-5", "ECE", "images/s (end to end)", "data s", "model s",
    "latency b1 median / p90 (ms)", "throughput (img/s @ batch)", "params (M)",
    "GMACs measured / published", "weights (MiB)", "memory (MiB)", "status",
)
#: Columns added to :func:`full_table` when the run has ImageNet-ReaL labels.
REAL_COLUMNS: Final = ("ReaL top-1", "ReaL top-5")
#: Columns added to :func:`full_table` after the name when some row runs on another backend or precision than
#: PyTorch fp32 (a row's name then ends in ``@backend``: ``resnet50@onnxruntime-int8``).
RUNTIME_COLUMNS: Final = ("backend", "precision")
#: The columns of :func:`mapping_table`.
MAPPING_COLUMNS: Final = ("folder", "images", "how", "ImageNet classes", "note")
#: ImageNet classes named in a mapping cell before the rest are only counted.
_SHOWN_CLASSES = 4


def _pct_ci(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "n/a"
    if low is None or high is None:
        return f"{value:.2f}"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else f"{value:{fmt}}"


def _on_gpu(result: BenchResult) -> bool:
    return any(m.run.cuda_peak_allocated_mib is not None for m in result.models)


def scored_models(result: BenchResult) -> list[ModelResult]:
    """The models with accuracy figures (random-weight and failed models have none)."""
    return [m for m in result.models if m.accuracy is not None and not m.run.random_weights]


def memory_label(result: BenchResult) -> str:
    """What the memory figures measure: peak GPU memory allocated on CUDA, else peak RSS increase."""
    return "Memory (MiB, peak GPU allocated)" if _on_gpu(result) else "Memory (MiB, peak process RSS increase)"


def lab_table(result: BenchResult) -> HeaderAndRows:
    """The lab's table: rows :data:`LAB_ROWS` and :func:`memory_label`, a column per model."""
    header = [""] + unique_names([m.name for m in result.models])
    rows: list[list[str]] = [[label] for label in (*LAB_ROWS, memory_label(result))]
    for m in result.models:
        if not m.ok:
            for row in rows:
                row.append("error")
            continue
        f = m.flat()
        random = " (random weights)" if m.run.random_weights else ""
        rows[0].append(_pct_ci(f["top1"], f["top1_ci_low"], f["top1_ci_high"]) + random)
        rows[1].append(_pct_ci(f["top5"], f["top5_ci_low"], f["top5_ci_high"]) + random)
        rows[2].append(_num(f["eval_total_s"]))
        rows[3].append(_num(f["memory_mib"], ".0f"))
    return header, rows


def short_name(model_name: str) -> str:
    """``resnet50`` for a model's default weights entry, the full name otherwise (tables at 80 columns);
    a backend suffix stays: ``resnet50@openvino``."""
    from cnnlab.models.registry import get_spec

    base, at, runtime = model_name.partition("@")
    arch = base.split(".", 1)[0]
    try:
        short = arch if get_spec(arch).name == base else base
    except Exception:  # noqa: BLE001 - a checkpoint path or unknown name stays as it is
        short = base
    return short + at + runtime


def summary_table(result: BenchResult) -> HeaderAndRows:
    """The key figures, one row per model, narrow enough for an 80-column terminal.

    A model with random weights is marked ``*`` after its name; a backend suffix (``@openvino-int8``)
    goes on a line of its own.
    """
    header = [*SUMMARY_COLUMNS, "GPU MiB" if _on_gpu(result) else "RSS MiB"]
    rows = []
    for m, short in zip(result.models, unique_names([short_name(m.name) for m in result.models])):
        name = short.replace("@", "\n@", 1) + (" *" if m.ok and m.run.random_weights else "")
        if not m.ok:
            rows.append([name, "error"] + [""] * (len(header) - 2))
            continue
        f = m.flat()
        ci = "" if f["top1_ci_low"] is None else f"{f['top1_ci_low']:.2f}-{f['top1_ci_high']:.2f}"
        rows.append([name, _num(f["top1"]), ci, _num(f["top5"]), _num(f["eval_total_s"], ".1f"),
                     _num(f["eval_images_per_s"], ".1f"), _num(f["memory_mib"], ".0f")])
    return header, rows


def _status(m: ModelResult) -> str:
    """A word or two: the error itself is in the report's Errors section (and on stderr), and what
    random weights mean is said under the table."""
    if not m.ok:
        return "error"
    return "random weights" if m.run.random_weights else "ok"


def full_table(result: BenchResult) -> HeaderAndRows:
    """Every figure of every model, one row per model: :data:`FULL_COLUMNS`."""
    rows = []
    for m, name in zip(result.models, unique_names([m.name for m in result.models])):
        f = m.flat()
        rows.append([
            name,
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
            _status(m),
        ])
    header = list(FULL_COLUMNS)
    if shows_runtime(result):
        header[1:1] = RUNTIME_COLUMNS
        for row, m in zip(rows, result.models):
            row[1:1] = [m.runtime, m.run.precision or "n/a"]
    if result.config.real_labels is not None:
        at = header.index("ECE")
        header[at:at] = REAL_COLUMNS
        for row, m in zip(rows, result.models):
            real = m.accuracy.real if m.accuracy else None
            row[at:at] = [_pct_ci(real.accuracy(k), *real.ci[k]) if real and k in real.hits else "n/a" for k in (1, 5)]
    return header, rows


def shows_runtime(result: BenchResult) -> bool:
    """Whether some row runs on another backend than PyTorch, or in another precision than fp32."""
    return any(m.runtime != "torch" or m.run.precision not in ("fp32", "") for m in result.models)


def throughput_table(result: BenchResult) -> HeaderAndRows:
    """Model-only images/s at each measured batch size, a column per batch size."""
    sizes = sorted({int(b) for m in result.models for b in m.run.throughput_curve}, key=int)
    rows = [[name, *[_num(m.run.throughput_curve.get(str(b)), ".1f") for b in sizes]]
            for m, name in zip(result.models, unique_names([m.name for m in result.models])) if m.ok]
    return ["model", *[f"batch {b}" for b in sizes]], rows


def mapping_table(result: BenchResult) -> HeaderAndRows:
    """How each class folder maps onto ImageNet classes: :data:`MAPPING_COLUMNS`."""
    counts = result.dataset.class_counts()
    rows = []
    for name, mapping in result.mappings.items():
        names = describe_indices(mapping.indices)
        shown = ", ".join(names[:_SHOWN_CLASSES])
        if len(names) > _SHOWN_CLASSES:
            shown += f", … ({len(names)} classes)"
        rows.append([name, str(counts.get(name, 0)), mapping.how, shown or "—", mapping.note])
    return list(MAPPING_COLUMNS), rows


def per_class_table(result: BenchResult) -> HeaderAndRows:
    """Accuracy (recall) and precision of each class for each model with accuracy figures.

    A class a model does not score (no mapping onto its outputs, or no image) reads ``not scored``;
    the table has only ``class`` and ``images`` when no model has accuracy figures.
    """
    scored = scored_models(result)
    header = ["class", "images"] + [f"{name} acc / prec" for name in unique_names([m.name for m in scored])]
    by_model = [{c.name: c for c in m.accuracy.per_class} for m in scored if m.accuracy is not None]
    counts = result.dataset.class_counts()
    rows = []
    for c in result.dataset.classes:
        row = [c, str(counts[c])]
        for per_class in by_model:
            item = per_class.get(c)
            if item is None or item.support == 0:
                row.append("not scored")
            else:
                row.append(f"{item.accuracy:.2f} / {_num(finite_or_none(item.precision))}")
        rows.append(row)
    return header, rows
