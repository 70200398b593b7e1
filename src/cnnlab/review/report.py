"""Review outputs: ``review.csv`` (one row per finding), ``review.json`` and a self-contained ``review.html``.

The HTML page needs nothing but itself: every thumbnail is a base64 ``data:`` URI. It has one
gallery per issue kind, most suspicious first, each card with its evidence: out-of-fold class
probabilities, nearest neighbours (thumbnails), the kept copy of a duplicate, the pretrained model's
own top classes. Galleries stop after ``max_cards`` cards; ``review.csv`` lists everything.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from cnnlab.jsonable import to_jsonable
from cnnlab.options import ReviewIssue
from cnnlab.review.result import Finding, ReviewResult, write_csv

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

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cnnlab review: {{ r.source }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.5em}
.grid{display:flex;flex-wrap:wrap;gap:.8em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em;width:300px;font-size:.85em;background:#fafafa}
.card img.main{max-width:128px;max-height:128px;float:left;margin-right:.5em}
.nb{display:inline-block;text-align:center;font-size:.75em;margin:.2em;width:80px;vertical-align:top}
.nb img{max-width:72px;max-height:72px}
.path{word-break:break-all;color:#555}
.bar{background:#4a7;height:.6em;display:inline-block}
.none{width:128px;height:96px;float:left;margin-right:.5em;background:#eee;color:#999;font-size:.8em;
 display:flex;align-items:center;justify-content:center}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
.clear{clear:both}
</style></head><body>
<h1>cnnlab review</h1>
<p><b>{{ r.source }}</b>: {{ r.images }} images in {{ r.classes|length }} classes, model <code>{{ r.model }}</code>
({{ r.embedded }} embedded, {{ r.from_cache }} from the cache), {{ "%.1f"|format(r.seconds.get("total", 0)) }} s.</p>
<table><tr><th>issue</th><th>files</th></tr>
{% for kind, title, items, shown in sections %}<tr><td><a href="#{{ kind }}">{{ title }}</a></td><td>{{ items|length }}</td></tr>
{% endfor %}</table>
{% if r.notes %}<h3>Notes</h3><ul>{% for n in r.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
<p>Scores are in [0, 1], higher meaning surer. <code>cnnlab review DIR --apply --kinds KIND --min-score X</code>
moves flagged files into <code>DIR/.quarantine/</code>; <code>cnnlab review --undo DIR</code> puts them back.</p>
{% for kind, title, items, shown in sections %}
<h2 id="{{ kind }}">{{ title }} ({{ items|length }})</h2>
{% if not items %}<p>None found.</p>{% endif %}
<div class="grid">
{% for f, ev in shown %}<div class="card">
{% if ev.thumb %}<img class="main" src="{{ ev.thumb }}" alt="">{% else %}<div class="none">no preview</div>{% endif %}
<div>#{{ f.rank }} · score {{ "%.2f"|format(f.score) }}</div>
<div class="path">{{ f.path }}</div>
<div>label <b>{{ f.label }}</b>{% if f.suggested_label %} → <b>{{ f.suggested_label }}</b>?{% endif %}</div>
<div>{{ f.detail }}</div>
<div class="clear"></div>
{% if ev.probabilities %}<div>out-of-fold probabilities:
{% for name, p in ev.probabilities %}<div>{{ name }}
 <span class="bar" style="width:{{ (p * 120)|round|int }}px"></span> {{ "%.2f"|format(p) }}</div>
{% endfor %}</div>{% endif %}
{% if ev.model_top %}<div>the model sees:
{% for name, p in ev.model_top %}{{ name }} {{ "%.2f"|format(p) }}{% if not loop.last %}, {% endif %}{% endfor %}
{% if ev.imagenet_mass is not none %} (on the set's classes: {{ "%.2f"|format(ev.imagenet_mass) }}){% endif %}
</div>{% endif %}
{% if ev.kept %}<div>kept copy ({{ ev.kept_label }}):</div>
<span class="nb">{% if ev.kept_thumb %}<img src="{{ ev.kept_thumb }}" alt="">{% endif %}<br>{{ ev.kept }}</span>
{% endif %}
{% if ev.neighbour_cards %}<div>nearest images:</div>{% for path, label, sim, thumb in ev.neighbour_cards %}
<span class="nb">{% if thumb %}<img src="{{ thumb }}" alt="">{% endif %}<br>{{ label }} {{ "%.2f"|format(sim) }}</span>
{% endfor %}{% endif %}
</div>{% endfor %}
</div>
{% if items|length > shown|length %}<p>{{ items|length - shown|length }} more in review.csv.</p>{% endif %}
{% endfor %}
</body></html>
"""


class _Thumbnails:
    """base64 JPEG thumbnails, each file decoded once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[tuple[str, int], str | None] = {}

    def __call__(self, path: str, side: int = THUMB_PX) -> str | None:
        key = (path, side)
        if key not in self._done:
            self._done[key] = self._make(path, side)
        return self._done[key]

    def _make(self, path: str, side: int) -> str | None:
        from cnnlab.errors import ImageDecodeError
        from cnnlab.imagedata.decode import decode_image

        file = Path(path) if Path(path).is_absolute() else self.root / path
        try:
            img = decode_image(file, draft_to=side)
        except ImageDecodeError:
            return None
        img.thumbnail((side, side))
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _card(f: Finding, thumbs: _Thumbnails) -> dict[str, Any]:
    ev: dict[str, Any] = dict(f.evidence)
    ev.setdefault("probabilities", None)
    ev.setdefault("model_top", None)
    ev.setdefault("imagenet_mass", None)
    ev.setdefault("kept", None)
    ev["thumb"] = thumbs(f.path) if f.issue is not ReviewIssue.UNREADABLE else None
    if ev["kept"]:
        ev["kept_thumb"] = thumbs(ev["kept"], NEIGHBOUR_PX)
    ev["neighbour_cards"] = [(p, label, sim, thumbs(p, NEIGHBOUR_PX)) for p, label, sim in ev.get("neighbours") or []]
    return ev


def render_html(result: ReviewResult, *, max_cards: int = 200) -> str:
    """The self-contained review page."""
    import jinja2

    thumbs = _Thumbnails(result.root)
    sections = []
    for kind in ReviewIssue:
        items = result.of(kind)
        shown = [(f, _card(f, thumbs)) for f in items[:max_cards]]
        sections.append((kind.value, _TITLES[kind], items, shown))
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE).render(r=result, sections=sections)


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
