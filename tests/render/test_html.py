"""One Jinja environment for every page: bench's report and review's gallery render through it, escaped, strict."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from cnnlab.options import ReviewIssue
from cnnlab.render.html import environment, render_template
from cnnlab.review import Finding, ReviewResult
from cnnlab.review.report import render_html as render_review
from tests.helpers.images import make_image


def test_one_environment_holds_every_template() -> None:
    env = environment()
    assert env is environment()
    assert {"report.html.j2", "review.html.j2"} <= set(env.list_templates())
    assert env.autoescape and env.undefined is jinja2.StrictUndefined


def test_the_review_page_renders_through_the_shared_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlab.render.html as html

    used: list[str] = []
    monkeypatch.setattr(html, "render_template", lambda name, **context: used.append(name) or render_template(name, **context))
    make_image(tmp_path / "cat" / "a.jpg")
    result = ReviewResult(source="<set>", root=tmp_path, model="m", classes=["cat", "dog"], class_counts={"cat": 1, "dog": 0},
                          images=1, seconds={"total": 1.0},
                          findings=[Finding("cat/a.jpg", "cat", ReviewIssue.MISLABEL, 0.8, suggested_label="<dog>", rank=1,
                                            evidence={"probabilities": [["<dog>", 0.8], ["cat", 0.2]]})])
    page = render_review(result)
    assert used == ["review.html.j2"]
    assert "&lt;dog&gt;" in page and "<dog>" not in page and "&lt;set&gt;" in page  # escaped
    assert page.count("data:image/jpeg;base64,") == 1 and 'id="mislabel"' in page


def test_a_missing_value_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render_template("review.html.j2", sections=[])
