"""Plots of benchmark results as PNG files (matplotlib with the Agg backend, imported only when plotting).

:func:`bench_plots` draws accuracy against speed, memory per model, throughput against batch size
(when several were measured), per-class accuracy and one confusion plot per model with accuracy
figures, and returns them as :class:`Figure` blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.bench.stems import model_file_stems
from cnnlab.bench.tables import scored_models
from cnnlab.render.blocks import Figure
from cnnlab.render.naming import class_label, plot_text, unique_names

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


#: Up to this many classes a confusion matrix is drawn; above it, the most confused pairs.
MAX_MATRIX_CLASSES = 30
#: Up to this many classes every class gets a bar; above it, the worst and the best ones.
MAX_BAR_CLASSES = 40
#: Classes (or pairs) shown at each end when there are too many to draw them all.
SHOWN_AT_EACH_END = 15


def _accuracy_vs_speed(plt: Any, result: BenchResult, scored: list[ModelResult], unscored: list[ModelResult],
                       out: Path) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for m in scored:
        f = m.flat()
        x, y, lo, hi = f["eval_images_per_s"], f["top1"], f["top1_ci_low"], f["top1_ci_high"]
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", capsize=4)
        ax.annotate(plot_text(m.name), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    for m in unscored:  # their speed is real: show it, without an accuracy
        x = m.flat()["eval_images_per_s"]
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"{plot_text(m.name)} (random weights: speed only)", (x, 0.02), rotation=90, fontsize=7, color="grey",
                    textcoords="offset points", xytext=(3, 0), va="bottom")
    ax.set_xlabel("images/s, end to end (decode + model)")
    ax.set_ylabel("top-1 accuracy (95% CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Accuracy vs speed on {len(result.dataset):,} images")
    ax.grid(alpha=0.3)
    return _save(plt, fig, out, "accuracy_vs_throughput", "Top-1 accuracy against images/s, end to end")


def _memory(plt: Any, ok: list[ModelResult], out: Path) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4))
    xs = list(range(len(ok)))
    ax.bar([x - 0.2 for x in xs], [m.memory_mib or 0.0 for m in ok], width=0.4, label="peak during inference")
    ax.bar([x + 0.2 for x in xs], [m.run.weights_mib or 0.0 for m in ok], width=0.4, label="parameters")
    ax.set_xticks(xs, [plot_text(m.name) for m in ok], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("MiB")
    on_gpu = any(m.run.cuda_peak_allocated_mib is not None for m in ok)
    ax.set_title("Memory per model (" + ("GPU allocated" if on_gpu else "process RSS increase") + ")")
    ax.legend()
    return _save(plt, fig, out, "memory", "Memory per model: peak during inference and parameters")


def _class_accuracy(m: ModelResult) -> dict[str, float]:
    assert m.accuracy is not None
    unscored = set(m.accuracy.unscored_classes)
    return {p.name: p.accuracy for p in m.accuracy.per_class if p.support and p.name not in unscored}


def _per_class(plt: Any, classes: list[str], scored: list[ModelResult], out: Path) -> Figure:
    accuracies = [_class_accuracy(m) for m in scored]
    title = "Per-class accuracy (no bar: class not scored by that model)"
    if len(classes) > MAX_BAR_CLASSES:  # the worst and the best classes of the first model
        ranked = sorted(accuracies[0], key=lambda c: (accuracies[0][c], c))
        classes = ranked[:SHOWN_AT_EACH_END] + ranked[-SHOWN_AT_EACH_END:] if len(ranked) > 2 * SHOWN_AT_EACH_END \
            else ranked
        title = (f"The {SHOWN_AT_EACH_END} worst and {SHOWN_AT_EACH_END} best classes of {plot_text(scored[0].name)} "
                 f"(of {len(ranked):,} scored)")
    fig, ax = plt.subplots(figsize=(min(18, max(7, 0.3 * len(classes) * len(scored) + 3)), 4.8))
    width = 0.8 / len(scored)
    for j, (m, acc) in enumerate(zip(scored, accuracies)):
        ax.bar([i + j * width for i in range(len(classes))], [acc.get(c, float("nan")) for c in classes],
               width=width, label=plot_text(m.name))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(classes))], [class_label(c) for c in classes], rotation=60,
                  ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("top-1 accuracy (recall)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=min(4, len(scored)), frameon=False)
    return _save(plt, fig, out, "per_class", "Top-1 accuracy of each class")


def _confusion(plt: Any, classes: list[str], m: ModelResult, name: str, stem: str, out: Path) -> Figure:
    assert m.accuracy is not None
    key = f"confusion_{stem}"
    confusion = m.accuracy.confusion
    if len(classes) > MAX_MATRIX_CLASSES:  # a 1000 x 1000 picture shows nothing: the pairs confused most
        pairs = confusion.most_confused(2 * SHOWN_AT_EACH_END)
        labels = [f"{class_label(classes[t])} → {class_label(classes[p]) if p < len(classes) else 'other'}"
                  for t, p, _ in pairs]
        fig, ax = plt.subplots(figsize=(8, 1.2 + 0.28 * max(1, len(pairs))))
        ax.barh(range(len(pairs)), [c for _, _, c in pairs], color="#4c78a8")
        ax.set_yticks(range(len(pairs)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("images")
        ax.set_title(f"{plot_text(name)}: the most confused pairs (true → predicted)", fontsize=9)
        return _save(plt, fig, out, key, f"The class pairs {name} confuses most (true → predicted)")
    matrix = confusion.dense()
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * (len(classes) + 1), 1.2 + 0.45 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix.tolist()):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7)
    names = [class_label(c) for c in classes]
    ax.set_xticks(range(len(classes) + 1), [*names, "other"], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(plot_text(name), fontsize=9)
    return _save(plt, fig, out, key, f"Confusion matrix of {name} (true class by row)")


def _throughput_curve(plt: Any, ok: list[ModelResult], out: Path) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for m in ok:
        points = sorted((int(b), v) for b, v in m.run.throughput_curve.items())
        ax.plot([b for b, _ in points], [v for _, v in points], "o-", label=plot_text(m.name))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s (model only)")
    ax.set_title("Throughput against batch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out, "throughput_curve", "Model-only images/s at each batch size")


def bench_plots(result: BenchResult, out: Path) -> list[Figure]:
    """Write the benchmark's PNG plots into ``out``; none when every model failed.

    Plots stay readable and small at any number of classes: above :data:`MAX_MATRIX_CLASSES` a
    model's confusion plot shows its most confused pairs, above :data:`MAX_BAR_CLASSES` the
    per-class plot shows the worst and the best classes.
    """
    ok = [m for m in result.models if m.ok]
    if not ok:
        return []
    plt = _pyplot()
    scored = scored_models(result)
    classes = result.dataset.classes
    figures = []
    timed = [m for m in scored if m.run.eval_total_s]
    speed_only = [m for m in ok if m.run.random_weights and m.run.eval_total_s]
    if timed or speed_only:
        figures.append(_accuracy_vs_speed(plt, result, timed, speed_only, out))
    figures.append(_memory(plt, ok, out))
    if any(len(m.run.throughput_curve) > 1 for m in ok):
        figures.append(_throughput_curve(plt, ok, out))
    if scored:
        figures.append(_per_class(plt, classes, scored, out))
    names = [m.name for m in scored]
    for m, name, stem in zip(scored, unique_names(names), model_file_stems(names)):
        figures.append(_confusion(plt, classes, m, name, stem, out))
    return figures
