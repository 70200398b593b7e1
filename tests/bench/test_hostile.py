"""bench's outputs against hostile names (issue 27): class and file names that a spreadsheet would run as
formulas are neutralised in every CSV, names with ``$...$`` reach no plot as mathtext, and an over-long model
path makes no over-long file name."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from cnnlab.bench import BenchConfig, BenchResult, MeasureOptions, bench_models, write_bench_outputs
from cnnlab.models.checkpoint import make_checkpoint, replace_head, save_checkpoint
from cnnlab.models.registry import get_spec
from cnnlab.render.naming import FORMULA_STARTS, csv_text
from tests.helpers.images import make_image

#: Class names that are formulas to a spreadsheet, or TeX to matplotlib.
CLASSES = ["=HYPERLINK(\"x\")", "+1+2", "@SUM(A1)", "-cmd", "$x^{$", "plain"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchResult, dict[str, Path], Path]:
    """One benchmark of a random-weights six-class checkpoint on classes with hostile names."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    for i, name in enumerate(CLASSES):
        for j in range(2):
            make_image(data / name / f"{'=' if j else '@'}img{j}.png", size=(24, 24), color=(40 * i, 200 - 30 * i, 90))
    (data / CLASSES[0] / "=empty.png").write_bytes(b"")  # a skipped file whose path and class are formulas
    base = get_spec("squeezenet1_1")
    torch.manual_seed(0)
    module = base.build(None)
    head = replace_head(module, len(CLASSES))
    ckpt = save_checkpoint(make_checkpoint(arch=base.name, head=head, classes=sorted(CLASSES),
                                           preprocessing=base.preprocessing, state_dict=module.state_dict(),
                                           train_args={}, metrics={}), root / "model.pt")
    measure = MeasureOptions(latency_repeats=1, throughput_repeats=1, warmup=0, batch_size=4, workers=0)
    result = bench_models(BenchConfig(data=data, models=[str(ckpt)], measure=measure, isolate=False))
    return result, write_bench_outputs(result, root / "out"), root / "out"


def _cells(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [cell for row in csv.reader(fh) for cell in row]


def test_no_csv_cell_starts_a_formula(run: tuple[BenchResult, dict[str, Path], Path]) -> None:
    """Before: `=HYPERLINK(...)` class names and `=img1.png` file names reached the cells as they are."""
    result, _, out = run
    assert result.models[0].ok and result.models[0].accuracy is not None
    files = [out / "results.csv", out / "skipped.csv", *(out / "predictions").iterdir(), *(out / "confusion").iterdir()]
    assert len(files) == 4
    texts: list[str] = []
    for path in files:
        cells = _cells(path)
        bad = [c for c in cells if c.startswith(FORMULA_STARTS)]
        assert not bad, (path.name, bad[:3])
        texts.extend(csv_text(c) for c in cells)
    for name in CLASSES:  # every name is there, and given back exactly by csv_text
        assert name in texts
    assert any(Path(t).name == "=img1.png" for t in texts)
    assert any(Path(t).name == "=empty.png" for t in texts)


def test_plots_are_drawn_for_class_names_with_dollar_signs(run: tuple[BenchResult, dict[str, Path], Path]) -> None:
    """Before: matplotlib's mathtext failed on `$x^{$`, leaving a half-written output folder."""
    _, files, out = run
    assert {"per_class", "memory"} <= set(files)
    assert any(key.startswith("confusion_") and not key.startswith("confusion_csv_") for key in files)
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0
    listed = json.loads((out / "results.json").read_text(encoding="utf-8"))["files"]
    assert "per_class.png" in listed and "report.html" in listed


def test_an_over_long_model_path_makes_short_file_names(run: tuple[BenchResult, dict[str, Path], Path],
                                                        tmp_path: Path) -> None:
    """Before: a model path of 300 characters became a 300-character prediction file name: OSError after the run."""
    result, _, _ = run
    (model,) = result.models
    long_name = "/".join(["d" * 120] * 3) + "/best.pt"
    renamed = dataclasses.replace(model, run=dataclasses.replace(model.run, model=long_name,
                                                                 spec={**model.run.spec, "name": long_name}))
    write_bench_outputs(dataclasses.replace(result, models=[renamed]), tmp_path / "out")
    names = [p.name for p in (tmp_path / "out").rglob("*")]
    assert any(n.endswith(".csv") and "ddd" in n for n in names)
    assert max(len(os.fsencode(n)) for n in names) <= 120
