"""Command-line interface. Each command lives in its own module and registers itself on ``app``."""

from __future__ import annotations

from cnnlab.cli import bench as _bench  # noqa: F401
from cnnlab.cli import collect as _collect  # noqa: F401
from cnnlab.cli import labels as _labels  # noqa: F401
from cnnlab.cli import models as _models  # noqa: F401
from cnnlab.cli import predict as _predict  # noqa: F401
from cnnlab.cli import train as _train  # noqa: F401
from cnnlab.cli.app import app


def main() -> None:
    """Entry point of the ``cnnlab`` console script."""
    app()
