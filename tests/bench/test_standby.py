"""The first model's worker, started before bench checks the data (cnnlab.bench.standby)."""

from __future__ import annotations

import contextlib
import io
import os
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


def test_the_worker_side_says_ready_then_reads_its_two_paths() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert request_from_stdin(io.StringIO('["/tmp/req.json", "/tmp/res.json"]\n')) == ["/tmp/req.json",
                                                                                           "/tmp/res.json"]
        assert request_from_stdin(io.StringIO("")) is None  # the parent closed it unused
        with pytest.raises(ValueError, match="expects"):
            request_from_stdin(io.StringIO('{"a": 1}\n'))
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
        proc = standby.take(tmp_path / "req.json", tmp_path / "res.json")
        assert proc is not None
        assert standby.take(tmp_path / "req.json", tmp_path / "other.json") is None  # one request each
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
    assert standby.take(tmp_path / "req.json", tmp_path / "res.json") is None  # the caller starts a fresh one
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
    assert standby.take(Path("req.json"), Path("res.json")) is None
