"""Issue 24 part 6: a finished train run or bench results logged to MLflow, read back with MlflowClient from a
real SQLite store and from an ``mlflow server`` started on 127.0.0.1 by this module (one server for all)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cnnlab.bench import BenchConfig, MeasureOptions, bench_models
from cnnlab.cli.tracking import Track, TrackUri, track_run
from cnnlab.errors import UsageError
from cnnlab.imagedata.demo import build_demo_set
from cnnlab.tracking import EXTRA_HINT, TrackingError, log_run_folder, tracking_uri
from cnnlab.train import TrainConfig, fine_tune
from tests.helpers.images import make_colours
from tests.helpers.runs import FAST

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="module")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = make_colours(tmp_path_factory.mktemp("colours"), per_class=8, broken=False)
    return fine_tune(TrainConfig(data=str(data), out=str(tmp_path_factory.mktemp("train") / "run"), **FAST)).out


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = build_demo_set(tmp_path_factory.mktemp("demo") / "photos")  # classes that map onto ImageNet: top-1
    measure = MeasureOptions(latency_repeats=2, throughput_repeats=2, warmup=1, batch_size=4, workers=0)
    out = tmp_path_factory.mktemp("bench") / "results"
    bench_models(BenchConfig(data=data, models=["efficientnet_lite0"], measure=measure, isolate=False), out=out,
                 plots=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``mlflow server`` on 127.0.0.1 (a free port, its own SQLite store and artifact folder), until the module ends."""
    root = tmp_path_factory.mktemp("server")
    port = _free_port()
    artifacts = root / "artifacts"
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(artifacts)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not start:\n" + (root / "server.log").read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield uri, artifacts
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its workers (their own process group)
        try:
            process.wait(timeout=3)  # nothing is checked after the tests: no need to wait out a graceful stop
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _history(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((folder / "history.csv").open(encoding="utf-8")))


def _check_train_run(client: MlflowClient, run_id: str, folder: Path, download_to: Path) -> None:
    run = client.get_run(run_id)
    metrics_json = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    args = metrics_json["train_args"]
    assert run.data.params["lr"] == str(args["lr"]) and run.data.params["epochs"] == str(args["epochs"])
    assert run.data.params["crop_scale"] == json.dumps(args["crop_scale"])
    assert run.data.tags["cnnlab.kind"] == "train" and run.info.status == "FINISHED"
    rows = _history(folder)
    val_acc = client.get_metric_history(run_id, "val_acc")
    assert sorted((m.step, m.value) for m in val_acc) == [(int(r["epoch"]), float(r["val_acc"])) for r in rows]
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [int(r["epoch"]) for r in rows]
    assert run.data.metrics["final_val_top1"] == metrics_json["val"]["top1"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "best.pt", "metrics.json", "history.csv", "curves.png"} <= artifacts
    assert "last.pt" not in artifacts
    got = Path(client.download_artifacts(run_id, "report.html", str(download_to)))
    assert got.read_bytes() == (folder / "report.html").read_bytes()


def test_a_train_run_is_logged_to_a_sqlite_store(train_run: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    tracked = log_run_folder(train_run, uri=uri)
    assert tracked.kind == "train" and tracked.experiment == "cnnlab-train" and tracked.tracking_uri == uri
    client = MlflowClient(tracking_uri=uri)
    (tmp_path / "down").mkdir()
    _check_train_run(client, tracked.run_id, train_run, tmp_path / "down")
    assert client.get_run(tracked.run_id).info.run_name == train_run.name
    again = log_run_folder(train_run, uri=uri, experiment="mine", run_name="second")
    assert again.run_id != tracked.run_id and again.experiment_id != tracked.experiment_id
    assert client.get_run(again.run_id).info.run_name == "second"


def test_the_default_store_is_in_the_working_folder(train_run: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert tracking_uri() == (f"sqlite:///{tmp_path / 'mlruns.db'}", True)
    tracked = log_run_folder(train_run)
    assert tracked.tracking_uri == f"sqlite:///{tmp_path / 'mlruns.db'}" and (tmp_path / "mlruns.db").is_file()
    assert tracked.artifact_uri.startswith((tmp_path / "mlruns").as_uri())
    stored = [p.relative_to(tmp_path / "mlruns").parts[-1] for p in (tmp_path / "mlruns").rglob("best.pt")]
    assert stored == ["best.pt"]
    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    tracked = log_run_folder(train_run)
    assert tracked.tracking_uri == f"sqlite:///{other}" and tracked.experiment == "from-env" and other.is_file()


def test_bench_results_are_logged(bench_run: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    tracked = log_run_folder(bench_run, uri=uri)
    assert tracked.kind == "bench" and tracked.experiment == "cnnlab-bench"
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracked.run_id)
    results = json.loads((bench_run / "results.json").read_text(encoding="utf-8"))
    (model,) = results["models"]
    assert model["top1"] is not None and run.data.metrics[f"{model['model']}/top1"] == model["top1"]
    assert run.data.metrics[f"{model['model']}/eval_images"] == model["eval_images"]
    assert run.data.params["measure.batch_size"] == "4" and run.data.params["models"] == '["efficientnet_lite0"]'
    artifacts = {a.path for a in client.list_artifacts(tracked.run_id)}
    assert {"results.json", "results.md", "results.csv", "report.html"} <= artifacts
    assert any(a.endswith(".png") for a in artifacts)


def test_a_folder_without_a_finished_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "history.csv").write_text("epoch\n", encoding="utf-8")
    with pytest.raises(UsageError, match="neither a finished training run"):
        log_run_folder(tmp_path, uri=f"sqlite:///{tmp_path / 'store.db'}")
    assert not (tmp_path / "store.db").exists()


def test_a_store_that_cannot_be_reached_is_a_tracking_error(train_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(TrackingError, match="could not log .* to MLflow at http://127.0.0.1"):
        log_run_folder(train_run, uri=uri)


def test_a_train_run_is_logged_to_a_live_server(server: tuple[str, Path], train_run: Path, tmp_path: Path) -> None:
    uri, artifacts = server
    tracked = log_run_folder(train_run, uri=uri)
    assert tracked.tracking_uri == uri and tracked.artifact_uri.startswith("mlflow-artifacts:")
    _check_train_run(MlflowClient(tracking_uri=uri), tracked.run_id, train_run, tmp_path)
    stored = list(artifacts.rglob("best.pt"))  # uploaded through the server into its artifact folder
    assert len(stored) == 1 and stored[0].read_bytes() == (train_run / "best.pt").read_bytes()


def test_bench_results_are_logged_to_a_live_server(server: tuple[str, Path], bench_run: Path) -> None:
    uri, _ = server
    tracked = log_run_folder(bench_run, uri=uri)
    client = MlflowClient(tracking_uri=uri)
    assert "efficientnet_lite0.IMAGENET1K/top1" in client.get_run(tracked.run_id).data.metrics
    assert "report.html" in {a.path for a in client.list_artifacts(tracked.run_id)}


def test_train_track_mlflow_logs_the_run(tmp_path: Path) -> None:
    """The real command: ``cnnlab train ... --track mlflow --track-uri URI``; without --track nothing is logged."""
    from cnnlab.cli.app import app
    from tests.helpers.runs import SMALL_TRAIN_ARGS

    data = make_colours(tmp_path / "colours", per_class=6, broken=False)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["train", str(data), *SMALL_TRAIN_ARGS, "--epochs", "1", "--freeze-epochs", "1", "-q"]
    done = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--track", "mlflow", "--track-uri", uri])
    assert done.exit_code == 0, done.output
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=uri).search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "report.html" in {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(runs[0].info.run_id)}
    done = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "untracked"), "--track-uri", uri])
    assert done.exit_code == 0 and "the run will not be tracked" in done.output
    assert len(MlflowClient(tracking_uri=uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=uri).search_experiments()])) == 1


def test_bench_track_mlflow_logs_the_results(tmp_path: Path) -> None:
    from cnnlab.cli.app import app

    data = build_demo_set(tmp_path / "photos")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    done = CliRunner().invoke(app, ["bench", str(data), "-m", "efficientnet_lite0", "--in-process", "--repeats", "3",
                                    "--speed-budget", "2", "--no-plots", "-q", "--out", str(tmp_path / "results"),
                                    "--track", "mlflow", "--track-uri", uri])
    assert done.exit_code == 0, done.output
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "efficientnet_lite0.IMAGENET1K/top1" in run.data.metrics


def _cli() -> typer.Typer:
    """A command with the two options, for the extra's check (no run needed)."""
    app = typer.Typer()

    @app.command()
    def job(folder: Path, track: Track = None, track_uri: TrackUri = None) -> None:
        tracked = track_run(folder, track, track_uri)
        print(tracked.run_id if tracked else "not tracked")

    return app


def test_without_the_extra_the_option_is_refused_before_any_work(train_run: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    done = CliRunner().invoke(_cli(), [str(train_run), "--track", "mlflow"])
    shown = " ".join(re.sub(r"[│╭╮╰╯─]", " ", done.output).split())  # typer's error box, unwrapped
    assert done.exit_code == 2 and EXTRA_HINT in shown
    with pytest.raises(UsageError, match=r"track extra: pip install 'cnnlab\[track\]'"):
        log_run_folder(train_run)


def test_import_is_light() -> None:
    """The CLI options and the tracking package load neither mlflow nor torch."""
    code = ("import sys, cnnlab.tracking, cnnlab.cli.tracking\n"
            "print(sorted(m for m in ('mlflow', 'torch') if m in sys.modules))\n")
    src = str(Path(__file__).resolve().parents[2] / "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": src})
    assert done.stdout.strip() == "[]"
