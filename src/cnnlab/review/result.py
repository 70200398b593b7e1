"""What a review found: one :class:`Finding` per (file, issue), ranked within each issue kind."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cnnlab.options import ReviewIssue
from cnnlab.render.naming import csv_record, csv_text

#: Columns of ``review.csv``, in order.
CSV_COLUMNS: Final[tuple[str, ...]] = ("path", "label", "issue", "suggested_label", "score", "rank", "detail")
SCHEMA_VERSION: Final[int] = 1


@dataclass
class Finding:
    """One problem with one file.

    ``path`` is relative to the dataset folder (``/``-separated) when the file is inside it.
    ``score`` is in [0, 1], higher meaning surer; ``rank`` is 1 for the most suspicious file of its
    issue kind. ``evidence`` holds what the report shows (probabilities, neighbours, the kept copy).
    """

    path: str
    label: str
    issue: ReviewIssue
    score: float
    suggested_label: str | None = None
    detail: str = ""
    rank: int = 0
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, str]:
        return {"path": self.path, "label": self.label, "issue": self.issue.value,
                "suggested_label": self.suggested_label or "", "score": f"{self.score:.4f}", "rank": str(self.rank),
                "detail": self.detail}

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "issue": self.issue.value}


def rank_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Sorted by issue kind (vocabulary order), then most suspicious first (ties: path); ranks set per kind."""
    order = {issue: i for i, issue in enumerate(ReviewIssue)}
    ranked = sorted(findings, key=lambda f: (order[f.issue], -f.score, f.path))
    counters: dict[ReviewIssue, int] = {}
    for f in ranked:
        counters[f.issue] = counters.get(f.issue, 0) + 1
        f.rank = counters[f.issue]
    return ranked


@dataclass
class ReviewResult:
    """The whole review of one labelled set."""

    source: str
    root: Path
    model: str
    classes: list[str]
    class_counts: dict[str, int]
    images: int
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)
    embedded: int = 0
    from_cache: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    #: The output files :func:`cnnlab.review.run` wrote (``csv``, ``json``, ``html``); empty when nothing was written.
    files: dict[str, Path] = field(default_factory=dict)

    def of(self, issue: ReviewIssue) -> list[Finding]:
        return [f for f in self.findings if f.issue is issue]

    def counts(self) -> dict[str, int]:
        return {issue.value: len(self.of(issue)) for issue in ReviewIssue}

    def selected(self, kinds: Sequence[ReviewIssue], min_score: float = 0.0) -> list[Finding]:
        """Findings of ``kinds`` with a score of at least ``min_score``."""
        return [f for f in self.findings if f.issue in kinds and f.score >= min_score]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION, "source": self.source, "root": str(self.root), "model": self.model,
            "classes": self.classes, "class_counts": self.class_counts, "images": self.images,
            "counts": self.counts(), "notes": self.notes, "embedded": self.embedded, "from_cache": self.from_cache,
            "seconds": self.seconds, "settings": self.settings, "findings": [f.to_dict() for f in self.findings],
        }


def write_csv(findings: Iterable[Finding], path: Path) -> Path:
    """``review.csv``: one row per finding, columns :data:`CSV_COLUMNS`; a cell that a spreadsheet would run as a
    formula (a file named ``=cmd|...``) is neutralised (:func:`cnnlab.render.naming.csv_cell`; :func:`read_csv`
    undoes it).

    Written atomically, as UTF-8 with surrogate escapes: a file name that is not valid UTF-8 is
    written back as its original bytes (as ``split.csv`` does), so the path still names the file.
    A full disk or a folder that cannot be written is an :class:`~cnnlab.errors.OutputError`.
    """
    from cnnlab.outputs import atomic_open

    with atomic_open(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for f in findings:
            writer.writerow(csv_record(f.to_row()))
    return path


def read_csv(path: Path) -> list[Finding]:
    """Findings back from a ``review.csv`` (without their evidence)."""
    from cnnlab.errors import DatasetError
    from cnnlab.options import parse_choice

    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = [{k: csv_text(v) if isinstance(v, str) else v for k, v in r.items()} for r in csv.DictReader(fh)]
    if rows and not set(CSV_COLUMNS) <= set(rows[0]):
        raise DatasetError(f"{path} is not a review.csv (columns {', '.join(CSV_COLUMNS)})")
    return [Finding(path=r["path"], label=r["label"], issue=parse_choice(ReviewIssue, r["issue"], "issue"),
                    score=float(r["score"]), suggested_label=r["suggested_label"] or None, detail=r["detail"],
                    rank=int(r["rank"])) for r in rows]
