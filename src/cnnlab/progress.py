"""One progress interface for every long-running pipeline (predict, bench, train, collect, review).

Library functions take a ``progress`` argument and report to it; they never draw anything
themselves. Work is reported as *tasks*, each named by a key (several can be open at once, e.g.
one per class in ``collect``)::

    progress.start("eval", "resnet50 eval", total=len(paths))
    progress.update("eval", advance=len(batch), info="412 img/s")
    progress.finish("eval", "resnet50: 50,000 images in 121 s")
    progress.note("3 files skipped", warning=True)

:class:`Progress` itself ignores every call: it is the default, so a library caller that wants
no output passes nothing. The CLI passes a rich progress display (``cnnlab.cli.progress``).
:class:`JsonLinesProgress` writes the calls as JSON lines and :func:`replay` turns such a line
back into a call: that is how a bench worker process reports to the parent's display.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, TextIO

#: The key that marks a JSON line as a progress event (its value is the event format version).
EVENT_KEY = "cnnlab-progress"
EVENT_VERSION = 1


class Progress:
    """Receiver of progress reports. This base class ignores them; subclasses display or forward them."""

    def start(self, key: str, description: str, *, total: float | None = None, completed: float = 0) -> None:
        """A task begins. ``total`` is its size in its own units (images, batches), ``None`` if unknown."""

    def update(
        self,
        key: str,
        *,
        advance: float = 0,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        info: str | None = None,
    ) -> None:
        """A task moved on: by ``advance`` units, or to ``completed``; ``info`` is a short status text."""

    def finish(self, key: str, message: str | None = None) -> None:
        """A task ended; ``message`` is a one-line summary worth keeping (shown even when quiet)."""

    def note(self, message: str, *, warning: bool = False) -> None:
        """Something the user should know now (``warning``: something that may make a result wrong)."""


class JsonLinesProgress(Progress):
    """Writes every call as one JSON line to ``stream`` (read back with :func:`replay`)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _emit(self, call: str, **args: Any) -> None:
        try:
            self.stream.write(json.dumps({EVENT_KEY: EVENT_VERSION, "call": call, "args": args}) + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # the reader is gone (bench was stopped): this process is not needed
            with contextlib.suppress(OSError, ValueError, AttributeError):  # nor Python's own flush at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
            raise SystemExit(1) from None

    def start(self, key: str, description: str, *, total: float | None = None, completed: float = 0) -> None:
        self._emit("start", key=key, description=description, total=total, completed=completed)

    def update(
        self,
        key: str,
        *,
        advance: float = 0,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        info: str | None = None,
    ) -> None:
        args = {"advance": advance, "completed": completed, "total": total, "description": description, "info": info}
        self._emit("update", key=key, **{k: v for k, v in args.items() if v is not None})

    def finish(self, key: str, message: str | None = None) -> None:
        self._emit("finish", key=key, message=message)

    def note(self, message: str, *, warning: bool = False) -> None:
        self._emit("note", message=message, warning=warning)


_CALLS = ("start", "update", "finish", "note")


def replay(line: str, progress: Progress, *, key_prefix: str = "") -> bool:
    """Call ``progress`` as the JSON line written by :class:`JsonLinesProgress` says.

    Returns ``False`` (and calls nothing) for a line that is not a progress event, so a reader can
    pass other output through. ``key_prefix`` keeps the tasks of several senders apart.
    """
    try:
        event = json.loads(line)
    except ValueError:
        return False
    if not isinstance(event, dict) or event.get(EVENT_KEY) != EVENT_VERSION or event.get("call") not in _CALLS:
        return False  # not an event, or one of a format this version does not read
    args = dict(event.get("args") or {})
    if "key" in args:
        args["key"] = key_prefix + str(args["key"])
    try:
        getattr(progress, event["call"])(**args)
    except TypeError:  # an event from a newer sender with arguments this version does not know
        return False
    return True
