"""Shared CLI plumbing: consoles, error-to-exit-code mapping. No domain logic lives here.

Results go to stdout (``out``); progress, warnings and errors go to stderr (``err``).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import typer
from rich.console import Console

from cnnlab.errors import CnnlabError

def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output keeps full-width tables instead of rich's 80-column default.
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, soft_wrap=True, width=width)


out = _console(stderr=False)
err = _console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn a :class:`CnnlabError` into a red message on stderr and its exit code, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CnnlabError as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def split_csv(values: Iterable[str] | None) -> list[str]:
    """Accept both ``--models a,b`` and ``--models a --models b``."""
    result: list[str] = []
    for value in values or []:
        result.extend(part.strip() for part in value.split(",") if part.strip())
    return result


def print_json(obj: Any) -> None:
    """Print JSON to stdout without rich markup or wrapping."""
    print(json.dumps(obj, indent=2, default=str))
