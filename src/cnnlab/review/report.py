"""Review outputs: ``review.csv`` (one row per finding), ``review.json`` and a self-contained ``review.html``.

The HTML page needs nothing but itself: every thumbnail is a base64 ``data:`` URI. It has one
gallery per issue kind, most suspicious first, each card with its evidence: out-of-fold class
probabilities, nearest neighbours (thumbnails), the kept copy of a duplicate, the pretrained model's
own top classes. Galleries stop after ``max_cards`` cards; ``review.csv`` lists everything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.jsonable import to_jsonable
from cnnlab.options import ReviewIssue
from cnnlab.review.result import Finding, ReviewResult, write_csv

if TYPE_CHECKING:
    from cnnlab.render.thumbnails import Thumbnails

#: The page's template, in :mod:`cnnlab.render`'s ``templates/``.
TEMPLATE = "review.html.j2"
#: Longer side of the thumbnails in the page, in pixels.
THUMB_PX = 128
NEIGHBOUR_PX = 72

_TITLES = {
    ReviewIssue.MISLABEL: "Likely wrong labels",
    ReviewIssue.OFFTOPIC: "Off-topic images",
    ReviewIssue.DUPLICATE: "Near-duplicates",
    ReviewIssue.UNREADABLE: "Unreadable files",
    ReviewIssue.TOO_SMALL: "Too small",
}


def _card(f: Finding, thumbs: Thumbnails) -> dict[str, Any]:
    ev: dict[str, Any] = dict(f.evidence)
    ev.setdefault("probabilities", None)
    ev.setdefault("model_top", None)
    ev.setdefault("imagenet_mass", None)
    ev.setdefault("kept", None)
    ev["thumb"] = thumbs(f.path, THUMB_PX) if f.issue is not ReviewIssue.UNREADABLE else None
    if ev["kept"]:
        ev["kept_thumb"] = thumbs(ev["kept"], NEIGHBOUR_PX)
    ev["neighbour_cards"] = [(p, label, sim, thumbs(p, NEIGHBOUR_PX)) for p, label, sim in ev.get("neighbours") or []]
    return ev


def render_html(result: ReviewResult, *, max_cards: int = 200) -> str:
    """The self-contained review page (``render/templates/review.html.j2`` in the shared environment)."""
    from cnnlab.render.html import render_template
    from cnnlab.render.thumbnails import Thumbnails

    thumbs = Thumbnails(result.root)
    sections = []
    for kind in ReviewIssue:
        items = result.of(kind)
        shown = [(f, _card(f, thumbs)) for f in items[:max_cards]]
        sections.append((kind.value, _TITLES[kind], items, shown))
    return render_template(TEMPLATE, r=result, sections=sections)


def write_review_outputs(result: ReviewResult, out_dir: Path, *, max_cards: int = 200) -> dict[str, Path]:
    """Write ``review.csv``, ``review.json`` and ``review.html`` into ``out_dir``; return their paths.

    Each file is written atomically. File names that are not valid UTF-8 keep their bytes in the
    CSV, are ``\\udcXX`` escapes in the JSON (which read back as the same name) and ``\\xNN`` in the
    page. An OSError (full disk, no permission) is an :class:`~cnnlab.errors.OutputError`.
    """
    from cnnlab.outputs import atomic_open
    from cnnlab.render.naming import printable

    files = {"csv": out_dir / "review.csv", "json": out_dir / "review.json", "html": out_dir / "review.html"}
    write_csv(result.findings, files["csv"])
    with atomic_open(files["json"]) as fh:
        fh.write(json.dumps(to_jsonable(result.to_dict()), indent=1, allow_nan=False) + "\n")
    page = render_html(result, max_cards=max_cards)
    with atomic_open(files["html"], encoding="utf-8", errors="strict") as fh:
        fh.write(printable(page))
    return files
