"""What the benchmark report says, as a list of blocks (:mod:`cnnlab.render.blocks`) that the render layer
draws both as Markdown and as HTML, so the two cannot drift.

:func:`report_blocks` builds the benchmark report: the lab's table first, then every figure, the
paired tests (or why there are none), the plots, the label mapping, per-class accuracy, skipped
files and errors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.bench.tables import (
    full_table,
    lab_table,
    mapping_table,
    per_class_table,
    scored_models,
    throughput_table,
)
from cnnlab.render.blocks import Block, Bullets, Figure, Gallery, GalleryItem, Heading, Paragraph, Table
from cnnlab.render.naming import unique_names

if TYPE_CHECKING:
    from cnnlab.bench.result import BenchResult, ModelResult


PAIRED_TESTS_HEADING = "Are the differences real? (paired McNemar tests, top-1)"


def _batch(result: BenchResult) -> str:
    sizes = sorted({m.run.throughput_batch for m in result.models if m.run.throughput_batch})
    return ", ".join(str(s) for s in sizes) or str(result.config.measure.runtime.batch_size or "n/a")


def _precision(result: BenchResult) -> str:
    used = sorted({m.run.precision for m in result.models if m.run.precision})
    return ", ".join(used) or str(result.config.measure.runtime.precision)


def _layout(result: BenchResult) -> str:
    """How the PyTorch rows ran: the layout changes speed (not predictions), so a reader comparing runs sees it."""
    # a row from before the layout was recorded (channels_last None) says nothing either way
    rows = [m for m in result.models if m.ok and m.run.backend == "torch" and m.run.channels_last is not None]
    if not rows:
        return ""
    layouts: dict[str, list[str]] = {}
    for m in rows:
        layouts.setdefault("channels-last" if m.run.channels_last else "NCHW", []).append(m.name)
    if len(layouts) == 1:
        layout = f"; PyTorch rows in {next(iter(layouts))}"
    else:  # e.g. CPU and GPU rows in one run: say which ran how
        layout = "; PyTorch rows in " + " and ".join(f"{k} ({', '.join(v)})" for k, v in sorted(layouts.items()))
    # a model with no batch norm after a convolution (alexnet) has nothing to fold: only the folded ones are named
    folded = [f"{m.name} {m.run.folded_bn}" for m in rows if m.run.folded_bn]
    return layout + (f", batch norms folded into their convolutions ({', '.join(folded)})" if folded else "")


def _overview(result: BenchResult) -> list[Block]:
    env, ds = result.environment, result.dataset
    device = next((m.run.device_name or m.run.device for m in result.models if m.ok), "n/a")
    return [
        Heading("cnnlab bench results", level=1),
        Paragraph(f"Data: {ds.root} — {len(ds)} images in {len(ds.classes)} classes; {len(result.skipped)} files "
                  f"skipped. Device: {device}; torch {env.get('torch', 'n/a')}, torchvision "
                  f"{env.get('torchvision', 'n/a')}; precision {_precision(result)}; batch {_batch(result)}"
                  f"{_layout(result)}."),
        *_machine(result),
    ]


def _machine(result: BenchResult) -> list[Block]:
    """The machine's load while measuring (a warning when it was busy) and how batch and workers were chosen."""
    from cnnlab.bench.machine import busy_warning

    blocks: list[Block] = []
    warning = busy_warning(result.environment.get("machine") or {})
    if warning:
        blocks.append(Paragraph(f"Warning: {warning}."))
    chosen = [f"{m.name}: batch {m.run.auto['batch_size']}, {m.run.auto['workers']} loader workers "
              f"({m.run.auto.get('reason') or 'measured'})"
              for m in result.models if m.ok and m.run.auto and (m.run.auto.get("batch_auto") or m.run.auto.get("workers_auto"))]
    if chosen:
        blocks.append(Bullets(["Batch size and workers chosen by a short measurement on the first images:", *chosen]))
    return blocks


def fastest_runtimes(result: BenchResult) -> list[str]:
    """For each model measured on two runtimes or more: the fastest one by model throughput, and by how much it
    beats the PyTorch row (or the slowest) — bench's default row is PyTorch, which compares models as the lab did,
    not the fastest way to run one."""
    by_model: dict[str, list[ModelResult]] = {}
    for m in result.models:
        if m.ok and m.run.throughput_ips:
            by_model.setdefault(str(m.run.spec.get("name") or m.run.model), []).append(m)
    lines = []
    for model, rows in by_model.items():
        if len({r.runtime for r in rows}) < 2:
            continue
        speed = {id(r): float(r.run.throughput_ips or 0.0) for r in rows}
        best = max(rows, key=lambda r: speed[id(r)])
        base = next((r for r in rows if r.runtime == "torch"), min(rows, key=lambda r: speed[id(r)]))
        lines.append(f"{model}: {best.runtime}, {speed[id(best)]:.1f} images/s "
                     f"({speed[id(best)] / speed[id(base)]:.2f}x {base.runtime})")
    return lines


def _fastest(result: BenchResult) -> list[Block]:
    lines = fastest_runtimes(result)
    return [Bullets(["Fastest runtime measured (model throughput):", *lines])] if lines else []


def _figures_tables(result: BenchResult) -> list[Block]:
    blocks: list[Block] = [
        Heading("The lab's table"),
        Table(*lab_table(result)),
        Paragraph("Accuracy counts only images whose class maps onto the model's outputs (see the label mapping). "
                  "Brackets are 95% Wilson intervals: where two models' intervals overlap, the data cannot tell them "
                  "apart; the paired tests below say whether a difference is significant."),
        Heading("All figures"),
        Table(*full_table(result)),
        *_fastest(result),
    ]
    if any(m.run.random_weights for m in result.models):
        blocks.append(Paragraph("Models marked 'random weights' ran without their pretrained weights: their speed "
                                "and memory figures are real; they have no accuracy figures."))
    blocks.append(Paragraph("ECE (expected calibration error) compares each prediction's confidence with how often "
                            "such predictions are right. The confidence is the probability the model puts on the "
                            "predicted class as a whole (for a folder 'cat', all of ImageNet's cat classes together)."))
    if result.config.real_labels is not None:
        real = next((m.accuracy.real for m in result.models if m.accuracy and m.accuracy.real), None)
        left_out = (f" ({real.empty_sets:,} images with no correct class and {real.not_covered:,} the file does not "
                    f"cover were left out; {real.n:,} scored)") if real else ""
        blocks.append(Paragraph("ReaL: accuracy against the ImageNet-ReaL relabelling (a prediction is right when it "
                                f"is one of the image's correct classes){left_out}."))
    if any(len(m.run.throughput_curve) > 1 for m in result.models):
        blocks += [Heading("Throughput at each batch size (model only, images/s)"), Table(*throughput_table(result))]
    return blocks


def _paired_tests(result: BenchResult) -> list[Block]:
    heading = Heading(PAIRED_TESTS_HEADING)
    if result.comparisons:
        return [heading, Bullets([c.verdict for c in result.comparisons])]
    scored = len(scored_models(result))
    if scored < 2:
        why = (f"No paired tests: they need two models with accuracy figures, and this run has {scored} "
               "(models with random weights and models that failed have none).")
    else:
        why = ("No paired tests: no two models scored the same images (each model scores only the classes "
               "that map onto its outputs).")
    return [heading, Paragraph(why)]


def _plots(figures: Sequence[Figure]) -> list[Block]:
    return [Heading("Plots"), *figures] if figures else []


def _mistakes(result: BenchResult) -> list[Block]:
    scored = scored_models(result)
    with_mistakes = [(m, name) for m, name in zip(scored, unique_names([m.name for m in scored]))
                     if m.accuracy is not None and m.accuracy.mistakes]
    if not with_mistakes:
        return []
    blocks: list[Block] = [Heading("Most confident mistakes"),
                           Paragraph("The wrong predictions each model was surest of: often a wrong or ambiguous "
                                     "label, an image of two things, or a real weakness of the model.")]
    for m, name in with_mistakes:
        assert m.accuracy is not None
        items = []
        for x in m.accuracy.mistakes:
            top = ", ".join(f"{t['name']} {t['probability']:.0%}" for t in x["top"])
            items.append(GalleryItem(Path(x["path"]), [f"true: {x['true']}",
                                                       f"predicted: {x['predicted']} ({x['confidence']:.0%})",
                                                       f"top-5: {top}"]))
        blocks += [Heading(name, level=3), Gallery(items)]
    return blocks


def _label_mapping(result: BenchResult) -> list[Block]:
    blocks: list[Block] = [Heading("Label mapping"), Table(*mapping_table(result))]
    unmapped = [name for name, mapping in result.mappings.items() if not mapping.mapped]
    if unmapped:
        blocks.append(Paragraph(f"Left out of ImageNet accuracy (no mapping): {', '.join(unmapped)}. "
                                "Add them to a mapping file (--mapping) to score them."))
    if result.dataset.empty_classes:
        blocks.append(Paragraph(f"Empty classes: {', '.join(result.dataset.empty_classes)}."))
    return blocks


def _per_class(result: BenchResult) -> list[Block]:
    header, rows = per_class_table(result)
    return [Heading("Per class"), Table(header, rows)] if len(header) > 2 else []


def _skipped(result: BenchResult) -> list[Block]:
    if not result.skipped:
        return []
    reasons = Counter(s.reason for s in result.skipped)
    counts = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common())
    return [Heading("Skipped files"), Paragraph(f"{counts} (every file in skipped.csv)")]


def _errors(result: BenchResult) -> list[Block]:
    if not result.failed:
        return []
    return [Heading("Errors"), Bullets([f"{m.name}: {m.run.error}" for m in result.failed])]


def report_blocks(result: BenchResult, figures: Sequence[Figure] = ()) -> list[Block]:
    """The content of results.md and report.html, in order; ``figures`` go in a "Plots" section."""
    return [
        *_overview(result),
        *_figures_tables(result),
        *_paired_tests(result),
        *_plots(figures),
        *_mistakes(result),
        *_label_mapping(result),
        *_per_class(result),
        *_skipped(result),
        *_errors(result),
    ]
