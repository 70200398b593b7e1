"""Shared CLI plumbing: consoles, error-to-exit-code mapping, small output helpers. No domain logic.

Results go to stdout (``out``); progress, warnings and errors go to stderr (``err``). Tables on both
fit the terminal's width, or ``$COLUMNS``, or 80 columns when piped; plain lines are never wrapped.

File names that are not valid UTF-8 (possible on Linux) reach Python as surrogate escapes, which a
strict UTF-8 terminal refuses: :func:`printable` shows their odd bytes as ``\\xe9`` on screen, and
:func:`write_stdout` writes machine-readable output (CSV) with the original bytes.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import typer
from rich.console import Console

from cnnlab.errors import CnnlabError
from cnnlab.render.naming import csv_row, printable

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn a :class:`CnnlabError` into a red message on stderr and its exit code, no traceback.

    Library messages name parameters, not flags: a parameter in parentheses, ``(overwrite)``, is shown as
    the running command's flag, ``(--overwrite)`` (:func:`flags_for_parameters`).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CnnlabError as exc:
            if not getattr(exc, "reported_by_main", False):  # torchrun: rank 0 prints an error all ranks share
                err.print(f"[bold red]error:[/] {escape(flags_for_parameters(str(exc)))}")
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


_PARAMETER = re.compile(r"\(([a-z][a-z0-9_]*)\)")
#: Library parameters whose option has another name (``CollectConfig.queries`` is ``--query``, repeated).
_PARAMETER_ALIASES = {"queries": "query"}


def _current_context() -> Any:
    """The running command's click context (typer vendors its own click; plain click before that)."""
    import importlib

    try:
        module = importlib.import_module("typer._click.globals")
    except ImportError:  # a typer that uses click itself
        module = importlib.import_module("click")
    return module.get_current_context(silent=True)


def flags_for_parameters(message: str) -> str:
    """``message`` with each ``(parameter)`` that names an option of the running command shown as its flag
    (``(from_folder)`` -> ``(--from-folder)``): the library speaks of parameters, the command line of flags."""
    ctx = _current_context()
    if ctx is None:
        return message
    flags = {}
    for param in ctx.command.params:
        longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if param.name and longs and not getattr(param, "hidden", False):
            flags[param.name] = longs[0]
            flags[longs[0][2:].replace("-", "_")] = longs[0]

    def swap(match: re.Match[str]) -> str:
        name = match.group(1)
        flag = flags.get(name) or flags.get(_PARAMETER_ALIASES.get(name, ""))
        return f"({flag})" if flag else match.group(0)

    return _PARAMETER.sub(swap, message)


def full_width_console() -> Console:
    """A stdout console as wide as any table (``--wide``: for logs and wide terminals, no wrapped cells)."""
    return Console(highlight=False, soft_wrap=True, width=max(out.width, 1000))


#: Characters a terminal acts on, other than line breaks and tabs: C0 controls (ESC starts colour and cursor
#: sequences), DEL and C1 controls.
_TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape(text: str) -> str:
    """``text`` with rich markup made literal (file names and messages can hold ``[...]``), undecodable
    file-name bytes shown as ``\\xNN`` (see :func:`printable`), and terminal control characters (a file
    named with an ESC sequence) shown as ``\\xNN`` rather than acted on."""
    from rich.markup import escape as rich_escape

    safe = _TERMINAL_CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", printable(text))
    return rich_escape(safe)


def write_stdout(text: str) -> None:
    """Write ``text`` to stdout as it is: file names that are not valid UTF-8 go out as their
    original bytes (so a CSV of paths names the files), whatever the stream's error policy."""
    stream = sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(printable(text))
        return
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        data = text.encode(encoding, "surrogateescape")
    except UnicodeEncodeError:  # a label the terminal's encoding cannot show
        data = text.encode(encoding, "backslashreplace")
    stream.flush()
    buffer.write(data)
    buffer.flush()


def format_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """``header`` and ``rows`` as CSV text for stdout, every cell that a spreadsheet would run as a formula
    neutralised (:func:`cnnlab.render.naming.csv_cell`: a file named ``=HYPERLINK(...)`` stays text)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(csv_row(header))
    writer.writerows(csv_row(row) for row in rows)
    return buf.getvalue()


def split_csv(values: Iterable[str] | None) -> list[str]:
    """Accept both ``--models a,b`` and ``--models a --models b``."""
    result: list[str] = []
    for value in values or []:
        result.extend(part.strip() for part in value.split(",") if part.strip())
    return result


def print_json(obj: Any) -> None:
    """Print JSON to stdout without rich markup or wrapping."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def longest_words(header: list[str], rows: list[list[str]]) -> list[int]:
    """Per column, the width of its longest word (what a column needs to break no word)."""
    return [max(len(word) for cell in column for word in (str(cell).split() or [""])) for column in zip(header, *rows)]


def print_table(header: list[str], rows: list[list[str]], *, title: str | None = None,
                justify: dict[str, str] | None = None, console: Console | None = None,
                whole_words: bool = False) -> None:
    """Print a table that wraps its cells rather than cutting them (``whole_words``: between words only)."""
    from rich.table import Table

    console = console or out
    table = Table(title=escape(title) if title is not None else None, title_justify="left")
    widths: list[int | None] = [None] * len(header)
    if whole_words:  # narrow the columns with the most room first, none below its longest word
        minimum = longest_words(header, rows)
        fitted = [max(len(line) for cell in column for line in (str(cell).splitlines() or [""]))
                  for column in zip(header, *rows)]
        room = console.width - 3 * len(header) - 1
        while sum(fitted) > room:
            i = max(range(len(fitted)), key=lambda j: fitted[j] - minimum[j])
            if fitted[i] <= minimum[i]:
                break
            fitted[i] -= 1
        widths = list(fitted)
    for h, width in zip(header, widths):
        table.add_column(h, overflow="fold", justify=(justify or {}).get(h, "left"),  # type: ignore[arg-type]
                         width=width)
    for row in rows:
        table.add_row(*(escape(str(c)) for c in row))
    console.print(table)
