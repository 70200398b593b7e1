"""review.csv against hostile names (issue 27): a file or class name that a spreadsheet would run as a formula is
neutralised in its cell, and read back exactly."""

from __future__ import annotations

import csv
from pathlib import Path

from cnnlab.options import ReviewIssue
from cnnlab.render.naming import FORMULA_STARTS
from cnnlab.review.result import Finding, read_csv, write_csv

NAMES = ["=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "\tcmd", "\rcmd", "'quoted", "plain"]


def test_review_csv_cells_start_no_formula_and_read_back_exactly(tmp_path: Path) -> None:
    """Before: a file `=HYPERLINK(...).jpg` in class `@SUM(A1)` reached review.csv as it is."""
    findings = [Finding(path=f"{name}/{name}.jpg", label=name, issue=ReviewIssue.MISLABEL, score=0.5,
                        suggested_label=name, detail=name, rank=i + 1) for i, name in enumerate(NAMES)]
    path = write_csv(findings, tmp_path / "review.csv")
    with path.open(newline="", encoding="utf-8") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert not [c for c in cells if c.startswith(FORMULA_STARTS)]
    back = read_csv(path)
    assert [(f.path, f.label, f.suggested_label, f.detail) for f in back] == [
        (f.path, f.label, f.suggested_label, f.detail) for f in findings]
