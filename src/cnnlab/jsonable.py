"""Turning results into strict JSON data: the one place where nan, numpy types, paths and enums are converted."""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from pathlib import PurePath
from typing import Any


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is missing, nan or infinite (JSON has no nan)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def to_jsonable(obj: Any) -> Any:
    """``obj`` as data that ``json.dumps(allow_nan=False)`` accepts.

    nan and infinities become ``None``; numpy scalars and arrays, paths, enums, tuples, sets and
    dataclasses become their plain equivalents; dict keys become strings.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj.value if isinstance(obj, Enum) else obj
    if isinstance(obj, Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        return to_jsonable(to_dict() if callable(to_dict) else dataclasses.asdict(obj))
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return to_jsonable(tolist())
    return str(obj)
