"""Command-line interface: one module per command, registered on ``app`` in workflow order."""

from __future__ import annotations

from cnnlab.cli import bench as _bench
from cnnlab.cli import collect as _collect
from cnnlab.cli import demo as _demo
from cnnlab.cli import export as _export
from cnnlab.cli import labels as _labels
from cnnlab.cli import models as _models
from cnnlab.cli import predict as _predict
from cnnlab.cli import review as _review
from cnnlab.cli import serve as _serve
from cnnlab.cli import split as _split
from cnnlab.cli import train as _train
from cnnlab.cli import weights as _weights
from cnnlab.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``cnnlab`` console script. Python warnings (ours and our libraries') are shown as one
    ``warning:`` line each on stderr, not with a file name and line number."""
    import warnings

    from cnnlab.cli.common import err, escape

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
             line: str | None = None) -> None:
        err.print(f"[yellow]warning:[/] {escape(str(message))}")

    warnings.showwarning = show
    app()
