"""Command-line interface: one module per command, registered on ``app`` in workflow order."""

from __future__ import annotations

from cnnlab.cli import demo as _demo  # noqa: F401  (the order here is the order of `cnnlab --help`)
from cnnlab.cli import collect as _collect  # noqa: F401
from cnnlab.cli import split as _split  # noqa: F401
from cnnlab.cli import labels as _labels  # noqa: F401
from cnnlab.cli import models as _models  # noqa: F401
from cnnlab.cli import weights as _weights  # noqa: F401
from cnnlab.cli import bench as _bench  # noqa: F401
from cnnlab.cli import train as _train  # noqa: F401
from cnnlab.cli import predict as _predict  # noqa: F401
from cnnlab.cli import export as _export  # noqa: F401
from cnnlab.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``cnnlab`` console script."""
    app()
