"""Plots of benchmark results as PNG files (matplotlib with the Agg backend, imported only when plotting).

:func:`bench_plots` draws accuracy against speed, memory per model, per-class accuracy and one
confusion matrix per model with accuracy figures, and returns them as :class:`Figure` blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.report.blocks import Figure
from cnnlab.report.naming import file_stem, unique_names
from cnnlab.report.tables import scored_models

if TYPE_CHECKING:
    from cnnlab.bench.result import BenchResult, ModelResult

#: Resolution of every PNG.
DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, out: Path, key: str, title: str) -> Figure:
    fig.tight_layout()
    path = out / f"{key}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Figure(key=key, title=title, path=path)


def _accuracy_vs_speed(plt: Any, result: BenchResult, scored: list[ModelResult], out: Path) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in scored:
        f = m.flat()
        x, y, lo, hi = f["eval_images_per_s"], f["top1"], f["top1_ci_low"], f["top1_ci_high"]
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", capsize=4, label=m.name)
        ax.annotate(m.name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("images/s, end to end (decode + model)")
    ax.set_ylabel("top-1 accuracy (95% CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Accuracy vs speed on {len(result.dataset)} images")
    ax.grid(alpha=0.3)
    return _save(plt, fig, out, "accuracy_vs_throughput", "Top-1 accuracy against images/s, end to end")


def _memory(plt: Any, ok: list[ModelResult], out: Path) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = list(range(len(ok)))
    ax.bar([x - 0.2 for x in xs], [m.memory_mib or 0.0 for m in ok], width=0.4, label="peak during inference")
    ax.bar([x + 0.2 for x in xs], [m.run.weights_mib or 0.0 for m in ok], width=0.4, label="parameters")
    ax.set_xticks(xs, [m.name for m in ok], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("MiB")
    on_gpu = any(m.run.cuda_peak_allocated_mib is not None for m in ok)
    ax.set_title("Memory per model (" + ("GPU allocated" if on_gpu else "process RSS increase") + ")")
    ax.legend()
    return _save(plt, fig, out, "memory", "Memory per model: peak during inference and parameters")


def _per_class(plt: Any, classes: list[str], scored: list[ModelResult], out: Path) -> Figure:
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) * len(scored) / 2 + 3), 4))
    width = 0.8 / len(scored)
    for j, m in enumerate(scored):
        assert m.accuracy is not None
        per_class = {p.name: p for p in m.accuracy.per_class}
        unscored = set(m.accuracy.unscored_classes)
        values = [float("nan") if c in unscored or c not in per_class or not per_class[c].support
                  else per_class[c].accuracy for c in classes]
        ax.bar([i + j * width for i in range(len(classes))], values, width=width, label=m.name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(classes))], classes, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("top-1 accuracy (recall)")
    ax.set_title("Per-class accuracy (no bar: class not scored by that model)")
    ax.legend(fontsize=8)
    return _save(plt, fig, out, "per_class", "Top-1 accuracy of each class")


def _confusion(plt: Any, classes: list[str], m: ModelResult, name: str, out: Path) -> Figure:
    assert m.accuracy is not None
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * (len(classes) + 1), 1.0 + 0.45 * len(classes)))
    ax.imshow(m.accuracy.confusion, cmap="Blues")
    for i, row in enumerate(m.accuracy.confusion.tolist()):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes) + 1), classes + ["other"], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(name, fontsize=9)
    return _save(plt, fig, out, f"confusion_{file_stem(name)}", f"Confusion matrix of {name} (true class by row)")


def bench_plots(result: BenchResult, out: Path) -> list[Figure]:
    """Write the benchmark's PNG plots into ``out``; none when every model failed."""
    ok = [m for m in result.models if m.ok]
    if not ok:
        return []
    plt = _pyplot()
    scored = scored_models(result)
    classes = result.dataset.classes
    figures = []
    timed = [m for m in scored if m.run.eval_total_s]
    if timed:
        figures.append(_accuracy_vs_speed(plt, result, timed, out))
    figures.append(_memory(plt, ok, out))
    if scored:
        figures.append(_per_class(plt, classes, scored, out))
    for m, name in zip(scored, unique_names([m.name for m in scored])):
        figures.append(_confusion(plt, classes, m, name, out))
    return figures
