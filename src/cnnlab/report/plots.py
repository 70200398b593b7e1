"""Plots of benchmark results (matplotlib with the Agg backend, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnlab.bench import BenchResult


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bench_plots(result: BenchResult, out: Path) -> dict[str, Path]:
    """Write the benchmark's PNG plots into ``out``; returns their paths by name."""
    plt = _pyplot()
    files: dict[str, Path] = {}
    ok = [m for m in result.models if m.ok]
    if not ok:
        return files

    # accuracy vs throughput, with the CI as error bars
    scored = [m for m in ok if m.accuracy is not None and not m.run.random_weights and m.run.eval_total_s]
    if scored:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in scored:
            f = m.flat()
            x = f["eval_images_per_s"]
            y, lo, hi = f["top1"], f["top1_ci_low"], f["top1_ci_high"]
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", capsize=4, label=m.name)
            ax.annotate(m.name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xlabel("images/s, end to end (decode + model)")
        ax.set_ylabel("top-1 accuracy (95% CI)")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"Accuracy vs speed on {len(result.dataset)} images")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        files["accuracy_vs_throughput"] = out / "accuracy_vs_throughput.png"
        fig.savefig(files["accuracy_vs_throughput"], dpi=110)
        plt.close(fig)

    # memory per model
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [m.name for m in ok]
    mem = [m.memory_mib or 0.0 for m in ok]
    weights = [m.run.weights_mib or 0.0 for m in ok]
    xs = range(len(ok))
    ax.bar([x - 0.2 for x in xs], mem, width=0.4, label="peak during inference")
    ax.bar([x + 0.2 for x in xs], weights, width=0.4, label="parameters")
    ax.set_xticks(list(xs), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("MiB")
    on_gpu = any(m.run.cuda_peak_allocated_mib is not None for m in ok)
    ax.set_title("Memory per model (" + ("GPU allocated" if on_gpu else "process RSS increase") + ")")
    ax.legend()
    fig.tight_layout()
    files["memory"] = out / "memory.png"
    fig.savefig(files["memory"], dpi=110)
    plt.close(fig)

    # per-class accuracy
    if scored:
        classes = result.dataset.classes
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) * len(scored) / 2 + 3), 4))
        width = 0.8 / len(scored)
        for j, m in enumerate(scored):
            pc = {p.name: p for p in m.accuracy.per_class}  # type: ignore[union-attr]
            unscored = set(m.accuracy.unscored_classes)  # type: ignore[union-attr]
            values = [float("nan") if c in unscored or c not in pc or not pc[c].support else pc[c].accuracy
                      for c in classes]
            ax.bar([i + j * width for i in range(len(classes))], values, width=width, label=m.name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(classes))], classes, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("top-1 accuracy (recall)")
        ax.set_title("Per-class accuracy (no bar: class not scored by that model)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        files["per_class"] = out / "per_class.png"
        fig.savefig(files["per_class"], dpi=110)
        plt.close(fig)

    # confusion matrices
    from cnnlab.report.naming import file_stem, unique_names

    for m, name in zip(scored, unique_names([m.name for m in scored])):
        cm = m.accuracy.confusion  # type: ignore[union-attr]
        classes = result.dataset.classes
        fig, ax = plt.subplots(figsize=(1.0 + 0.5 * (len(classes) + 1), 1.0 + 0.45 * len(classes)))
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in __import__("numpy").ndenumerate(cm):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(classes) + 1), classes + ["other"], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(m.name, fontsize=9)
        fig.tight_layout()
        key = f"confusion_{file_stem(name)}"
        files[key] = out / f"{key}.png"
        fig.savefig(files[key], dpi=110)
        plt.close(fig)
    return files
