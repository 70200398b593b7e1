"""``--track mlflow`` and ``--track-uri URI`` of ``train`` and ``bench``: the option types, and :func:`track_run`,
which a command calls once its job has written its folder (:func:`cnnlab.tracking.log_run_folder`).

The extra is checked when the options are read (a missing mlflow is an error before an hour of training, not
after); mlflow itself is imported only when the run is logged, so ``--help`` stays fast.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cnnlab.cli.common import err, escape
from cnnlab.errors import UsageError

if TYPE_CHECKING:
    from cnnlab.tracking import TrackedRun


class Tracker(StrEnum):
    """Experiment trackers a finished run can be logged to."""

    MLFLOW = "mlflow"


def _check_tracker(value: Tracker | None) -> Tracker | None:
    if value is not None:
        from cnnlab.tracking import require_mlflow

        try:
            require_mlflow()
        except UsageError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


Track = Annotated[Optional[Tracker], typer.Option(
    "--track", case_sensitive=False, callback=_check_tracker,
    help="Log the finished run to MLflow (extra track): parameters, metrics, report and model as artifacts.")]
TrackUri = Annotated[Optional[str], typer.Option(
    "--track-uri", metavar="URI",
    help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db "
         "in the working folder, artifacts in ./mlruns).")]


def track_run(folder: Path, track: Tracker | None, uri: str | None = None) -> TrackedRun | None:
    """Log the run ``folder`` holds when ``track`` asks for it and say where it went (on stderr); under
    ``torchrun`` only rank 0 logs. Errors are :class:`~cnnlab.errors.CnnlabError` (the command's handler
    prints them)."""
    if track is None:
        if uri:
            err.print("[yellow]warning:[/] --track-uri without --track mlflow: the run was not tracked")
        return None
    from cnnlab.runtime.distributed import from_environment

    ctx = from_environment()
    if ctx is not None and not ctx.is_main:
        return None
    from cnnlab.tracking import log_run_folder, tracking_uri

    _, default_store = tracking_uri(uri)
    tracked = log_run_folder(folder, uri=uri)
    err.print(f"tracked in MLflow: run {tracked.run_id} in experiment {escape(tracked.experiment)} at "
              f"{escape(tracked.tracking_uri)}")
    if default_store:
        err.print(f"  see it with: mlflow ui --backend-store-uri {escape(tracked.tracking_uri)}")
    return tracked


def check_tracking(track: Tracker | None, uri: str | None) -> str | None:
    """Before any work: the tracking store checked (:func:`cnnlab.tracking.check_store`, a one-line error, exit 2),
    or ``--track-uri`` without ``--track`` warned about. Returns the URI :func:`track_run` should get (``None``
    when nothing is tracked: the warning is not repeated after the run). Shared by ``train`` and ``bench``."""
    if track is None:
        if uri:
            err.print("[yellow]warning:[/] --track-uri without --track mlflow: the run will not be tracked")
        return None
    from cnnlab.tracking import check_store

    check_store(uri)
    return uri
