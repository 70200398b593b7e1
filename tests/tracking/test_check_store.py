"""The tracking store is checked before a job's work (review finding 1): a server with nothing behind it, a store
whose folder cannot be written, ``--track-uri`` without ``--track``: said in one line before training or benching
starts, not after the run with minutes of MLflow's retries."""

from __future__ import annotations

import http.server
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.errors import UsageError
from cnnlab.tracking import check_store
from tests.helpers.images import make_colours
from tests.helpers.runs import SMALL_TRAIN_ARGS


def _closed_port() -> int:
    """A port of 127.0.0.1 with nothing listening (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        yield int(s.getsockname()[1])


@pytest.fixture
def answering() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers /health with 200 and anything else with 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path.endswith("/health") else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_with_nothing_listening_is_refused_at_once() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(UsageError, match=rf"tracking server at {uri} cannot be reached \(.*refused"):
        check_store(uri)
    assert time.monotonic() - started < 30  # a hang guard: MLflow's own retries took minutes


def test_a_server_that_never_answers_is_refused_after_the_timeout(silent_port: int) -> None:
    with pytest.raises(UsageError, match=r"cannot be reached \(no answer in 0.5 s\)"):
        check_store(f"http://127.0.0.1:{silent_port}", timeout_s=0.5)


def test_a_server_that_answers_passes_whatever_it_answers(answering: str) -> None:
    assert check_store(answering) == answering
    assert check_store(answering + "/some/prefix") == answering + "/some/prefix"  # 404 there: still a server


def test_the_environment_variable_is_checked_when_no_uri_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(UsageError, match="cannot be reached"):
        check_store()


def test_a_database_whose_folder_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match=r"cannot be used: .*notes.txt is not a folder"):
        check_store(f"sqlite:///{tmp_path / 'notes.txt' / 'runs.db'}")
    with pytest.raises(UsageError, match=r"runs.db is not a file"):
        (tmp_path / "runs.db").mkdir()
        check_store(f"sqlite:///{tmp_path / 'runs.db'}")


def test_a_database_in_a_folder_still_to_be_made_passes_and_nothing_is_left(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'new' / 'deeper' / 'runs.db'}"
    assert check_store(uri) == uri
    assert list(tmp_path.iterdir()) == []  # the check made nothing: MLflow makes the folders when it logs


def test_the_default_store_in_a_working_folder_that_can_be_written_passes(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert check_store() == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert list(tmp_path.iterdir()) == []


def _check_as(uid: int | None, cwd: Path) -> str:
    """:func:`check_store` of the default store in ``cwd``, as this process (``uid`` None) or, in a forked child,
    as ``uid`` (root cannot be refused a write by a folder's mode): ``ok`` or the error's message."""
    if uid is None:
        os.chdir(cwd)
        try:
            check_store()
        except UsageError as exc:
            return str(exc)
        return "ok"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgid(uid)
            os.setuid(uid)
            os.chdir(cwd)
            check_store()
            message = "ok"
        except BaseException as exc:  # noqa: BLE001 - whatever it is goes back to the test
            message = str(exc)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as fh:
        return fh.read()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX permissions")
def test_a_read_only_working_folder_is_refused_for_the_default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(Path.cwd())  # restored afterwards
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)  # a folder anyone can enter...
        folder = base / "read-only"
        folder.mkdir()
        folder.chmod(0o555)  # ...and none may write in
        message = _check_as(65534 if os.geteuid() == 0 else None, folder)
        assert message == (f"the MLflow store sqlite:///{folder / 'mlruns.db'} cannot be written: no file can be "
                           f"created in {folder} (Permission denied); track to another URI, or run where the folder "
                           "is writable")
    finally:
        folder.chmod(0o755)
        for p in sorted(base.rglob("*"), reverse=True):
            p.rmdir()
        base.rmdir()


# -- the commands: before any work ---------------------------------------------------------------------------------

mlflow_installed = pytest.mark.skipif(__import__("importlib").util.find_spec("mlflow") is None,
                                      reason="--track mlflow needs the track extra")


@mlflow_installed
@pytest.mark.parametrize("command", ["train", "bench"])
def test_an_unreachable_server_stops_the_command_before_any_work(command: str, tmp_path: Path) -> None:
    from cnnlab.cli.app import app

    data = make_colours(tmp_path / "colours", per_class=4, broken=False)
    out = tmp_path / "out"
    uri = f"http://127.0.0.1:{_closed_port()}"
    extra = SMALL_TRAIN_ARGS if command == "train" else ["-m", "efficientnet_lite0", "--in-process"]
    started = time.monotonic()
    done = CliRunner().invoke(app, [command, str(data), *extra, "--out", str(out), "--track", "mlflow",
                                    "--track-uri", uri], env={"COLUMNS": "200"})
    assert done.exit_code == 2, done.output
    assert done.output.strip().splitlines() == [f"error: the MLflow tracking server at {uri} cannot be reached "
                                                "(Connection refused): start it, or track to another URI"]
    assert not out.exists()  # nothing trained or measured, nothing written
    assert time.monotonic() - started < 30


@mlflow_installed
def test_a_store_that_cannot_be_written_stops_train_before_any_work(tmp_path: Path) -> None:
    from cnnlab.cli.app import app

    data = make_colours(tmp_path / "colours", per_class=4, broken=False)
    (tmp_path / "file").write_text("x")
    done = CliRunner().invoke(app, ["train", str(data), *SMALL_TRAIN_ARGS, "--out", str(tmp_path / "out"),
                                    "--track", "mlflow", "--track-uri", f"sqlite:///{tmp_path / 'file' / 'x.db'}"])
    assert done.exit_code == 2 and "is not a folder" in done.output, done.output
    assert not (tmp_path / "out").exists()


def test_track_uri_without_track_is_warned_about_before_any_work(tmp_path: Path) -> None:
    """The warning comes first, whatever the run then does (here: data it refuses at once)."""
    from cnnlab.cli.app import app

    data = make_colours(tmp_path / "colours", per_class=4, classes=("blue",), broken=False)  # one class: refused
    done = CliRunner().invoke(app, ["train", str(data), *SMALL_TRAIN_ARGS, "--out", str(tmp_path / "out"),
                                    "--track-uri", "http://127.0.0.1:9"], env={"COLUMNS": "200"})
    assert done.exit_code == 2
    lines = done.output.splitlines()
    warning = "warning: --track-uri without --track mlflow: the run will not be tracked"
    assert lines[0] == warning and lines.count(warning) == 1
    assert "cannot be reached" not in done.output  # without --track the store is not looked at


@mlflow_installed
def test_a_server_gone_by_the_time_the_run_is_logged_is_given_up_in_seconds(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own retries took 4 min 26 s; while a run is logged they are bounded unless the user set them."""
    from cnnlab.tracking import TrackingError, log_run_folder

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "metrics.json").write_text('{"train_args": {"lr": 0.001}}', encoding="utf-8")
    (tmp_path / "history.csv").write_text("epoch,val_acc\n0,0.5\n", encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(TrackingError, match="could not log"):
        log_run_folder(tmp_path, uri=f"http://127.0.0.1:{_closed_port()}")
    assert time.monotonic() - started < 60
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
