"""The CLI's display of :class:`cnnlab.progress.Progress` reports: rich progress bars on stderr."""

from __future__ import annotations

import types
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichBars,
)

from cnnlab.cli.common import err, escape
from cnnlab.progress import Progress


class RichProgress(Progress):
    """Bars on stderr, one per open task; finished tasks leave their one-line summary.

    ``quiet``: no bars and no plain notes; summaries and warnings are still printed (one line per
    finished piece of work, as scripts want).
    """

    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or err
        self.quiet = quiet
        self._bars = RichBars(
            TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, disable=quiet, transient=True,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        self._bars.stop()

    def start(self, key: str, description: str, *, total: float | None = None, completed: float = 0) -> None:
        if key in self._tasks:
            self._bars.remove_task(self._tasks.pop(key))
        self._tasks[key] = self._bars.add_task(escape(description), total=total, completed=int(completed), info="")

    def update(self, key: str, *, advance: float = 0, completed: float | None = None, total: float | None = None,
               description: str | None = None, info: str | None = None) -> None:
        task = self._tasks.get(key)
        if task is None:
            return
        fields: dict[str, Any] = {}
        if info is not None:
            fields["info"] = escape(info)
        if description is not None:
            fields["description"] = escape(description)
        self._bars.update(task, advance=advance or None, completed=completed, total=total, **fields)

    def finish(self, key: str, message: str | None = None) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            self._bars.remove_task(task)
        if message:
            self.console.print(escape(message))

    def note(self, message: str, *, warning: bool = False) -> None:
        if warning:
            self.console.print(f"[yellow]warning:[/] {escape(message)}")
        elif not self.quiet:
            self.console.print(escape(message))
