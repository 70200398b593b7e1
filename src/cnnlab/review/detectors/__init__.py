"""Review's detectors, one module per kind of finding (:mod:`~cnnlab.review.detectors.base` is the interface).

A new kind of finding is one new module here, whose detector class is decorated with
:func:`~cnnlab.review.detectors.base.register` (and its name in :class:`~cnnlab.options.ReviewIssue`):
:func:`detectors_for` imports every module of this package before it looks in the registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from cnnlab.errors import UsageError
from cnnlab.options import ReviewIssue
from cnnlab.review.detectors.base import REGISTRY, Detector, Need, register

__all__ = ["REGISTRY", "Detector", "Need", "detectors_for", "register"]


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


def detectors_for(kinds: Sequence[ReviewIssue]) -> list[Detector]:
    """One detector per kind asked for, in the order given (a kind without a detector is a usage error)."""
    _import_all()
    missing = [k.value for k in kinds if k not in REGISTRY]
    if missing:
        raise UsageError(f"no detector for issue kind {', '.join(missing)}")
    seen: list[ReviewIssue] = []
    for kind in kinds:
        if kind not in seen:
            seen.append(kind)
    return [REGISTRY[kind]() for kind in seen]
