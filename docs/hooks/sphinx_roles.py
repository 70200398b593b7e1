"""A Griffe extension for the API pages: cnnlab's docstrings cite names with Sphinx roles (:class:`~a.B`).

The site renders docstrings as Markdown, where a role would show as raw text; this turns each role into
inline code of the name a reader sees (the last part for ``~a.b.C``), and ``#:`` comments above dataclass
fields into those fields' docstrings, so a config's fields are documented on its page.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _name(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles as inline code; read ``#:`` field comments as docstrings."""

    def on_instance(self, *, node: ast.AST | griffe.ObjectNode, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_name, obj.docstring.value)

    def on_attribute_instance(self, *, node: ast.AST | griffe.ObjectNode, attr: griffe.Attribute, **kwargs: Any) -> None:
        if attr.docstring is not None or not attr.lineno or attr.parent is None or attr.parent.filepath is None:
            return
        try:
            lines = attr.parent.lines_collection[attr.parent.filepath]
        except KeyError:
            return
        comments: list[str] = []
        index = attr.lineno - 2
        while index >= 0 and lines[index].strip().startswith("#:"):
            comments.insert(0, lines[index].strip()[2:].strip())
            index -= 1
        if comments:
            text = _ROLE.sub(_name, " ".join(comments))
            attr.docstring = griffe.Docstring(text, parent=attr)
