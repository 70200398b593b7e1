"""A finished run's output folder logged to MLflow: what ``--track mlflow`` does after ``train`` and ``bench``.

The folder is the record: everything logged is read back from the files the job wrote, so a run can be
logged after the fact, to another server, or again.

* a ``train`` run folder (``metrics.json`` and ``history.csv``): its ``train_args`` (and the settings it
  resolved) as parameters; every ``history.csv`` column as a metric with ``step`` = epoch (epoch 0 is the
  linear probe); best.pt's held-out figures in ``metrics.json`` as ``final_test_top1``, ``final_val_loss``...
  (apart from the per-epoch ``val_loss``, ``val_acc``); ``report.html``,
  ``best.pt``, ``metrics.json``, ``history.csv``, ``curves.png`` and ``data_split.csv`` as artifacts
  (not ``last.pt``, which only serves ``resume``);
* a ``bench`` results folder (``results.json``): its config as parameters; each model's figures as metrics
  named ``<model>/<figure>``; ``results.json``, ``results.md``, ``results.csv``, ``report.html``,
  ``skipped.csv`` and the plots as artifacts.

Where it goes (:func:`tracking_uri`): the URI given, else ``MLFLOW_TRACKING_URI``, else an embedded SQLite
store in the working folder (``mlruns.db``, artifacts under ``mlruns/``), which ``mlflow ui --backend-store-uri
sqlite:///mlruns.db`` shows. mlflow (extra ``track``) is imported only here, when a run is logged.

:func:`check_store` is what a job calls before its work when it is to be tracked: a tracking server that
does not answer, or a SQLite or file store whose folder cannot be written, is a one-line
:class:`~cnnlab.errors.UsageError` then, not an error (after minutes of MLflow's retries) once the run is done.
While a run is logged, MLflow's HTTP requests are retried :data:`LOG_HTTP_RETRIES` times with a timeout of
:data:`LOG_HTTP_TIMEOUT_S` seconds unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT``
say otherwise.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, UsageError

#: The embedded store's database and artifact folder, in the working folder.
DEFAULT_DATABASE = "mlruns.db"
DEFAULT_ARTIFACTS = "mlruns"
#: How to get mlflow.
EXTRA_HINT = "pip install 'cnnlab[track]'"
#: Experiments the runs go to unless one is named (or ``MLFLOW_EXPERIMENT_NAME`` is set).
EXPERIMENTS = {"train": "cnnlab-train", "bench": "cnnlab-bench"}

TRAIN_ARTIFACTS = ("report.html", "best.pt", "metrics.json", "history.csv", "curves.png", "data_split.csv")
BENCH_ARTIFACTS = ("results.json", "results.md", "results.csv", "report.html", "skipped.csv")
#: ``history.csv`` columns that are not metrics.
_NOT_METRICS = {"epoch", "phase"}
#: Figures of each held-out split in ``metrics.json`` logged as ``final_<split>_<figure>``.
_SPLIT_FIGURES = ("top1", "top5", "loss", "ece", "mean_confidence", "n")
#: MLflow's limits: a parameter value's length, parameters and metrics per request.
_MAX_PARAM_LENGTH = 6000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
#: Seconds :func:`check_store` waits for a tracking server's answer.
CHECK_TIMEOUT_S = 5.0
#: MLflow's HTTP retries and request timeout while a run is logged, unless its environment variables are set
#: (MLflow's own defaults retry for minutes before giving up on a server that is gone).
LOG_HTTP_RETRIES = 2
LOG_HTTP_TIMEOUT_S = 30


class TrackingError(CnnlabError):
    """The run could not be logged: its files are still in the folder, to log again later."""


@dataclass(frozen=True)
class TrackedRun:
    """Where a logged run went: open it in the MLflow UI of ``tracking_uri``."""

    run_id: str
    experiment_id: str
    experiment: str
    tracking_uri: str
    artifact_uri: str
    kind: str

    def to_dict(self) -> dict[str, str]:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "experiment": self.experiment,
                "tracking_uri": self.tracking_uri, "artifact_uri": self.artifact_uri, "kind": self.kind}


def require_mlflow() -> None:
    """Raise :class:`~cnnlab.errors.UsageError` naming the extra unless mlflow is installed (cheap: no import)."""
    if importlib.util.find_spec("mlflow") is None:
        raise UsageError(f"tracking with MLflow needs the track extra: {EXTRA_HINT}")


def tracking_uri(uri: str | None = None) -> tuple[str, bool]:
    """The tracking URI to log to, and whether it is the default store: ``uri``, else ``MLFLOW_TRACKING_URI``,
    else the SQLite database :data:`DEFAULT_DATABASE` in the working folder (an absolute ``sqlite:///`` URI)."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if chosen:
        return chosen, False
    return f"sqlite:///{(Path.cwd() / DEFAULT_DATABASE).as_posix()}", True


def check_store(uri: str | None = None, *, timeout_s: float = CHECK_TIMEOUT_S) -> str:
    """Check, before any work, that a run can be logged to ``uri`` (:func:`tracking_uri`); return the URI.

    * ``http(s)://``: the server answers a request for ``/health`` within ``timeout_s`` seconds (any HTTP answer
      will do: what it thinks of the credentials is for the logging to find out);
    * ``sqlite:///PATH`` (the default store in the working folder included): the database, when it exists, can be
      opened for writing, and its folder (or the nearest that exists) is a folder a file can be created in; for the
      default store also the artifact folder ``mlruns/`` of the working folder;
    * ``file:`` URIs and plain paths (MLflow's file store): the folder, or the nearest that exists, likewise;
    * anything else (``postgresql://``, ``databricks``...) is left to MLflow when the run is logged.

    Needs no mlflow. Raises :class:`~cnnlab.errors.UsageError` (one line) when the store cannot be used.
    """
    resolved, default_store = tracking_uri(uri)
    parts = urllib.parse.urlsplit(resolved)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        _check_server(resolved, timeout_s)
    elif scheme == "sqlite":
        path = resolved[len("sqlite:///"):].split("?", 1)[0] if resolved.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            _check_database(Path(path), resolved)
        if default_store:
            _check_folder(Path.cwd() / DEFAULT_ARTIFACTS, resolved, "artifact folder")
    elif scheme == "file" or not scheme:
        folder = Path(urllib.request.url2pathname(parts.path)) if scheme == "file" else Path(resolved)
        _check_folder(folder, resolved, "folder")
    return resolved


def _check_server(uri: str, timeout_s: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it answered: a server is there
    except (OSError, ValueError) as exc:  # refused, unknown host, timed out, a URL that is no URL
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            why = f"no answer in {timeout_s:g} s"
        else:
            why = (reason.strerror if isinstance(reason, OSError) else None) or str(reason) or type(exc).__name__
        raise UsageError(f"the MLflow tracking server at {uri} cannot be reached ({why}): start it, or track to "
                         "another URI") from None


def _nearest_existing(path: Path) -> Path:
    """``path`` or the nearest folder above it that exists (``path`` absolute: the root at least)."""
    return next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), Path(path.anchor))


def _check_folder(folder: Path, uri: str, what: str) -> None:
    """``folder`` (or, while it does not exist, the nearest folder above it) is a folder a file can be created in."""
    place = _nearest_existing(folder.absolute())
    if not place.is_dir():
        where = "" if place == folder.absolute() else f" (its {what} would be {folder.absolute()})"
        raise UsageError(f"the MLflow store {uri} cannot be used: {place} is not a folder{where}")
    try:
        with tempfile.NamedTemporaryFile(dir=place, prefix=".cnnlab-track-check-"):
            pass
    except OSError as exc:
        raise UsageError(f"the MLflow store {uri} cannot be written: no file can be created in {place} "
                         f"({exc.strerror or exc}); track to another URI, or run where the folder is writable") \
            from None


def _check_database(path: Path, uri: str) -> None:
    """A SQLite database MLflow can write: the file (when it exists) and its folder (journals are made beside it)."""
    path = path.absolute()
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise UsageError(f"the MLflow store {uri} cannot be used: {path} is not a file")
        try:
            with path.open("r+b"):
                pass
        except OSError as exc:
            raise UsageError(f"the MLflow store {uri} cannot be written: {path} ({exc.strerror or exc}); track to "
                             "another URI, or run where the folder is writable") from None
    _check_folder(path.parent, uri, "database's folder")


@contextlib.contextmanager
def _bounded_http_retries() -> Iterator[None]:
    """MLflow's HTTP retries and timeout bounded (:data:`LOG_HTTP_RETRIES`, :data:`LOG_HTTP_TIMEOUT_S`) while a run
    is logged, unless the user set them; the environment as it was afterwards."""
    defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(LOG_HTTP_RETRIES),
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(LOG_HTTP_TIMEOUT_S)}
    added = [name for name in defaults if name not in os.environ]
    for name in added:
        os.environ[name] = defaults[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def run_kind(folder: Path) -> str:
    """``train`` or ``bench``, from the files in ``folder``; :class:`~cnnlab.errors.UsageError` otherwise."""
    if (folder / "metrics.json").is_file() and (folder / "history.csv").is_file():
        return "train"
    if (folder / "results.json").is_file():
        return "bench"
    raise UsageError(f"{folder} holds neither a finished training run (metrics.json, history.csv) nor benchmark "
                     "results (results.json): nothing to track")


def metric_name(name: str) -> str:
    """``name`` as MLflow accepts it: letters, digits, ``_ - . : /`` and spaces, no empty or ``..`` parts
    (a model named ``runs/x/best.pt@onnxruntime-int8`` -> ``runs/x/best.pt_onnxruntime-int8``)."""
    cleaned = re.sub(r"[^\w.\- :/]", "_", name)
    parts = [p for p in cleaned.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flat ``a.b`` keys with text values (lists as JSON, ``None`` as "None"), cut to MLflow's length."""
    out = {}
    for key, value in _flatten(data, prefix):
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        out[metric_name(key)] = text[:_MAX_PARAM_LENGTH]
    return out


def _number(value: Any) -> float | None:
    """A finite number, else ``None`` (booleans, text, missing and infinite figures are not metrics)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a cnnlab results file")
    return data


@dataclass
class _Record:
    """What one run logs: parameters, metrics ``(key, value, step)``, tags and artifact files."""

    params: dict[str, str]
    metrics: list[tuple[str, float, int]]
    tags: dict[str, str]
    artifacts: list[Path]


def train_record(folder: Path) -> _Record:
    """What a ``train`` run folder logs (see the module's docstring)."""
    metrics_json = _read_json(folder / "metrics.json")
    params = _params(metrics_json.get("train_args") or {})
    params.update(_params(metrics_json.get("resolved") or {}, "resolved."))
    metrics: list[tuple[str, float, int]] = []
    with (folder / "history.csv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            step = int(float(row.get("epoch") or 0))
            metrics += [(metric_name(k), v, step) for k, text in row.items()
                        if k not in _NOT_METRICS and (v := _number(text or None)) is not None]
    for split in ("val", "test"):
        report = metrics_json.get(split) or {}
        metrics += [(f"final_{split}_{k}", v, 0) for k in _SPLIT_FIGURES if (v := _number(report.get(k))) is not None]
    zero_shot = metrics_json.get("zero_shot") or {}
    for key, value in (("best_epoch", metrics_json.get("best_epoch")), ("weight_mix", metrics_json.get("weight_mix")),
                       ("zero_shot_val_acc", zero_shot.get("val_acc"))):
        if (v := _number(value)) is not None:
            metrics.append((key, v, 0))
    tags = {"cnnlab.kind": "train", "cnnlab.folder": str(folder.resolve()),
            "cnnlab.model": str(metrics_json.get("model")), "cnnlab.evaluated_on": str(metrics_json.get("evaluated_on")),
            "cnnlab.classes": json.dumps(metrics_json.get("classes") or [])[:_MAX_PARAM_LENGTH]}
    return _Record(params, metrics, tags, [folder / name for name in TRAIN_ARTIFACTS if (folder / name).is_file()])


def bench_record(folder: Path) -> _Record:
    """What a ``bench`` results folder logs (see the module's docstring)."""
    results = _read_json(folder / "results.json")
    params = _params(results.get("config") or {})
    metrics: list[tuple[str, float, int]] = []
    models = [m for m in results.get("models") or [] if isinstance(m, dict)]
    for model in models:
        name = str(model.get("model"))
        metrics += [(metric_name(f"{name}/{k}"), v, 0) for k, value in model.items()
                    if k not in ("run", "accuracy", "leakage") and (v := _number(value)) is not None]
    dataset = results.get("dataset") or {}
    tags = {"cnnlab.kind": "bench", "cnnlab.folder": str(folder.resolve()), "cnnlab.data": str(dataset.get("root")),
            "cnnlab.models": json.dumps([m.get("model") for m in models])[:_MAX_PARAM_LENGTH],
            "cnnlab.failed": str(sum(m.get("status") == "error" for m in models))}
    plots = sorted(p for p in folder.glob("*.png") if p.is_file())
    return _Record(params, metrics, tags, [folder / n for n in BENCH_ARTIFACTS if (folder / n).is_file()] + plots)


def log_run_folder(folder: str | Path, *, uri: str | None = None, experiment: str | None = None,
                   run_name: str | None = None) -> TrackedRun:
    """Log the finished ``train`` run or ``bench`` results in ``folder`` to MLflow as one new run.

    ``uri``: any MLflow tracking URI (``http://host:5000``, ``sqlite:///path.db``, ``databricks``...); by
    default ``MLFLOW_TRACKING_URI``, else an embedded SQLite store in the working folder (:func:`tracking_uri`).
    ``experiment``: by default ``MLFLOW_EXPERIMENT_NAME``, else ``cnnlab-train`` or ``cnnlab-bench`` (created when
    missing). ``run_name``: by default the folder's name.

    Raises :class:`~cnnlab.errors.UsageError` when mlflow is not installed or the folder holds no finished run,
    :class:`TrackingError` when the store refuses or cannot be reached (the run is then marked failed where
    it was created).
    """
    require_mlflow()
    folder = Path(folder)
    kind = run_kind(folder)
    record = train_record(folder) if kind == "train" else bench_record(folder)
    from cnnlab import __version__

    record.tags["cnnlab.version"] = __version__
    resolved_uri, default_store = tracking_uri(uri)
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENTS[kind]
    try:
        with _bounded_http_retries():
            return _log(record, kind, resolved_uri, default_store, name, run_name or folder.resolve().name)
    except CnnlabError:
        raise
    except Exception as exc:  # mlflow's own errors, and connection errors of an HTTP store
        raise TrackingError(f"could not log {folder} to MLflow at {resolved_uri}: {type(exc).__name__}: {exc}. "
                            "The run's files are unchanged; log them again with "
                            "cnnlab.tracking.log_run_folder") from exc


def _log(record: _Record, kind: str, uri: str, default_store: bool, experiment: str, run_name: str) -> TrackedRun:
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:  # the embedded store keeps its artifacts beside its database, in the working folder
        location = (Path.cwd() / DEFAULT_ARTIFACTS).as_uri() if default_store else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    run = client.create_run(experiment_id, run_name=run_name, tags=record.tags)
    run_id = run.info.run_id
    try:
        params = [Param(k, v) for k, v in record.params.items()]
        for i in range(0, len(params), _PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[i:i + _PARAMS_PER_BATCH])
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v, step in record.metrics]
        for i in range(0, len(metrics), _METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + _METRICS_PER_BATCH])
        for path in record.artifacts:
            client.log_artifact(run_id, str(path))
    except BaseException:
        with contextlib.suppress(Exception):  # a store that went away: the first error is the one to report
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return TrackedRun(run_id, experiment_id, experiment, uri, run.info.artifact_uri, kind)
