"""The first model's worker, started before bench checks the data (cnnlab.bench.standby)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab.bench import BenchConfig, MeasureOptions, bench_models
from cnnlab.bench.protocol import RunRequest, RunResult
from cnnlab.bench.runner import worker_env
from cnnlab.bench.standby import READY, StandbyWorker, request_from_stdin
from cnnlab.errors import DatasetError
from cnnlab.progress import EVENT_KEY
from tests.helpers.images import make_image


def _workers_of_this_process() -> list[str]:
    """Command lines of this process's living children that are bench workers."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        if int(fields.get("PPid", "0")) == os.getpid() and "cnnlab.bench.worker" in cmdline \
                and not fields.get("State", "").startswith("Z"):
            found.append(cmdline)
    return found


def test_the_worker_side_says_ready_then_reads_its_paths_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLAB_TEST_GONE", "1")  # restored after the test, as the one set below is removed
    monkeypatch.setenv("CNNLAB_TEST_SET", "old")
    out = io.StringIO()
    message = {"paths": ["/tmp/req.json", "/tmp/res.json"], "set": {"CNNLAB_TEST_SET": "new"},
               "unset": ["CNNLAB_TEST_GONE"]}
    with contextlib.redirect_stdout(out):
        assert request_from_stdin(io.StringIO(json.dumps(message) + "\n")) == ["/tmp/req.json", "/tmp/res.json"]
        assert os.environ["CNNLAB_TEST_SET"] == "new" and "CNNLAB_TEST_GONE" not in os.environ
        assert request_from_stdin(io.StringIO("")) is None  # the parent closed it unused
        with pytest.raises(ValueError, match="expects"):
            request_from_stdin(io.StringIO('["/tmp/req.json", "/tmp/res.json"]\n'))
    assert out.getvalue().splitlines() == [READY] * 3


@pytest.mark.slow
def test_a_standby_worker_measures_the_request_it_is_handed(tmp_path: Path) -> None:
    for i in range(2):
        make_image(tmp_path / "img" / f"{i}.jpg", (40, 32), (30 * i, 90, 200))
    request = RunRequest(model="squeezenet1_1", paths=[str(p) for p in sorted((tmp_path / "img").iterdir())],
                         predictions_file=str(tmp_path / "pred.bin"), backend="torch", progress=True,
                         measure=MeasureOptions(weights="random", latency_repeats=3, throughput_repeats=3, warmup=1,
                                                batch_size=2, workers=0))
    request.write(tmp_path / "req.json")
    standby = StandbyWorker(worker_env())
    try:
        assert standby.wait_ready()
        proc = standby.take(tmp_path / "req.json", tmp_path / "res.json", worker_env())
        assert proc is not None
        assert standby.take(tmp_path / "req.json", tmp_path / "other.json", worker_env()) is None  # one each
        assert proc.stdout is not None
        events = proc.stdout.read()  # its progress, as bench relays it
        assert proc.wait(timeout=300) == 0
        assert EVENT_KEY in events and "throughput" in events
    finally:
        standby.close()
    result = RunResult.read(tmp_path / "res.json")
    assert result.error is None and result.random_weights
    assert result.eval_images == 2 and result.throughput_ips > 0
    assert not (tmp_path / "other.json").exists()


def test_a_worker_that_cannot_import_is_not_handed_a_request(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken" / "cnnlab"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken install')\n")
    env = {**worker_env(), "PYTHONPATH": str(broken.parent)}
    standby = StandbyWorker(env)
    assert not standby.wait_ready(timeout_s=120)
    assert standby.take(tmp_path / "req.json", tmp_path / "res.json", env) is None  # the caller starts a fresh one
    assert standby.proc is not None and standby.proc.returncode not in (None, 0)
    standby.close()
    assert "a broken install" in capfd.readouterr().err  # what it printed was passed on


def test_an_unused_standby_worker_is_stopped_when_the_checks_fail(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    config = BenchConfig(data=str(tmp_path / "empty"), models=["squeezenet1_1"],
                         measure=MeasureOptions(weights="random"))
    before = _workers_of_this_process()
    with pytest.raises(DatasetError):
        bench_models(config, out=tmp_path / "out")
    assert _workers_of_this_process() == before


def test_closing_an_idle_standby_worker_ends_it() -> None:
    standby = StandbyWorker(worker_env())
    assert standby.wait_ready()
    proc = standby.proc
    assert proc is not None and proc.poll() is None
    standby.close()
    assert proc.returncode is not None
    assert standby.take(Path("req.json"), Path("res.json"), worker_env()) is None


def test_what_it_prints_before_it_is_ready_is_passed_on(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sitecustomize.py").write_text("print('a word from an import')\n")
    standby = StandbyWorker({**worker_env(), "PYTHONPATH": str(tmp_path)})
    try:
        assert standby.wait_ready()
    finally:
        standby.close()
    assert "a word from an import" in capfd.readouterr().err


def test_it_does_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL to bench alone while the worker imports: the kernel ends the worker too."""
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from cnnlab.bench.runner import worker_env\n"
        "from cnnlab.bench.standby import StandbyWorker\n"
        "w = StandbyWorker(worker_env()); print(w.proc.pid, flush=True); time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # an orphan is reaped by init once it is dead
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.slow
def test_bench_hands_its_first_row_to_the_standby_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.bench import standby as standby_module

    handed: list[bool] = []
    real_take = standby_module.StandbyWorker.take

    def take(self: StandbyWorker, *args: object) -> object:
        proc = real_take(self, *args)  # type: ignore[arg-type]
        handed.append(proc is not None)
        return proc

    monkeypatch.setattr(standby_module.StandbyWorker, "take", take)
    for label in ("a", "b"):
        make_image(tmp_path / "data" / label / "0.jpg", (40, 32), (200, 90, 30) if label == "a" else (30, 90, 200))
    config = BenchConfig(data=str(tmp_path / "data"), models=["squeezenet1_1", "squeezenet1_1"],
                         measure=MeasureOptions(weights="random", latency_repeats=3, throughput_repeats=3, warmup=1,
                                                batch_size=2, workers=0))
    result = bench_models(config, out=tmp_path / "out", plots=False)
    assert handed == [True, False]  # the first row took it; the second started a fresh worker
    assert [m.run.eval_images for m in result.models] == [2, 2]
    assert all(m.ok for m in result.models)


@pytest.mark.slow
def test_an_image_column_found_by_the_checks_reaches_the_first_row_too(tmp_path: Path) -> None:
    """The checks tell the workers a table's image column through their environment, after the standby started."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [make_image(tmp_path / "img" / f"{i}.jpg", (40, 32), (40 * i, 90, 200)).read_bytes() for i in range(3)]
    pq.write_table(pa.table({"pixels": images, "label": ["a", "b", "a"]}), tmp_path / "data.parquet")
    config = BenchConfig(data=str(tmp_path / "data.parquet"), image_column="pixels",
                         models=["squeezenet1_1", "squeezenet1_1"],
                         measure=MeasureOptions(weights="random", latency_repeats=3, throughput_repeats=3, warmup=1,
                                                batch_size=2, workers=0))
    result = bench_models(config, out=tmp_path / "out", plots=False)
    assert [m.run.eval_images for m in result.models] == [3, 3]
    assert [len(m.run.eval_skipped) for m in result.models] == [0, 0]
