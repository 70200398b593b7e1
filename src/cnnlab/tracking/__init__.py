"""Experiment tracking: a finished run's output folder logged to MLflow (``--track mlflow``, extra ``track``).

* :mod:`~cnnlab.tracking.mlflow_run`: :func:`log_run_folder` logs a ``train`` run folder or ``bench`` results
  folder (parameters, per-epoch metrics, results, the report and the model as artifacts) and returns a
  :class:`TrackedRun`; :func:`tracking_uri` says where it goes (an embedded SQLite store in the working
  folder unless a URI is given); :func:`check_store` checks, before a job's work, that the store can be used
  (a server that answers, a SQLite or file store whose folder can be written).

Light to import: mlflow is imported only inside :func:`log_run_folder`.
"""

from __future__ import annotations

from cnnlab.tracking.mlflow_run import (
    DEFAULT_ARTIFACTS,
    DEFAULT_DATABASE,
    EXTRA_HINT,
    TrackedRun,
    TrackingError,
    check_store,
    log_run_folder,
    require_mlflow,
    tracking_uri,
)

__all__ = ["DEFAULT_ARTIFACTS", "DEFAULT_DATABASE", "EXTRA_HINT", "TrackedRun", "TrackingError", "check_store",
           "log_run_folder", "require_mlflow", "tracking_uri"]
