"""Workers forked by the zygote (cnnlab.bench.zygote) behave as fresh worker processes do, and none outlives its run."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlab.bench.config import MeasureOptions
from cnnlab.bench.protocol import PREDICTION_DTYPE, RunRequest
from cnnlab.bench.runner import run_isolated, worker_env
from cnnlab.bench.zygote import ENV_SWITCH, Zygote, start_zygote
from cnnlab.progress import Progress
from tests.helpers.images import make_image

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the zygote forks: Linux only")


class Keep(Progress):
    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, key: str, description: str, *, total: float | None = None, completed: float = 0) -> None:
        self.started.append(key)


def _request(tmp_path: Path, name: str, images: int = 2) -> RunRequest:
    paths = []
    for i in range(images):
        make_image(tmp_path / f"{i}.png", color=(40 * i, 200, 30))
        paths.append(str(tmp_path / f"{i}.png"))
    measure = MeasureOptions(weights="random", workers=0, warmup=1, latency_repeats=3, throughput_repeats=3,
                             batch_size=2)
    return RunRequest(model="squeezenet1_1", paths=paths, measure=measure, predictions_file=str(tmp_path / name),
                      class_names=["x"], imagenet_accepted=[[1]], progress=True)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_the_zygote_is_opt_in() -> None:
    assert start_zygote({**worker_env(), ENV_SWITCH: "0"}) is None
    assert start_zygote({k: v for k, v in worker_env().items() if k != ENV_SWITCH}) is None


@pytest.fixture(autouse=True)
def workers_allowed() -> None:
    """An interrupted bench earlier in this process (a Ctrl-C test) leaves new workers refused until the next
    bench starts (cnnlab.bench.runner.kill_workers); these tests call run_isolated directly."""
    from cnnlab.bench import runner

    runner._STOPPING.clear()


@pytest.fixture
def zygote() -> Zygote:
    started = start_zygote({**worker_env(), ENV_SWITCH: "1"})
    assert started is not None
    yield started
    started.close()


@pytest.mark.slow
def test_a_forked_worker_gives_what_a_fresh_process_gives(tmp_path: Path, zygote: Zygote) -> None:
    forked, fresh = Keep(), Keep()
    a = run_isolated(_request(tmp_path, "a.bin"), tmp_path, 0, progress=forked, zygote=zygote)
    b = run_isolated(_request(tmp_path, "b.bin"), tmp_path, 1, progress=fresh)
    assert a.error is None and b.error is None and a.eval_images == b.eval_images == 2
    assert np.array_equal(np.fromfile(tmp_path / "a.bin", dtype=PREDICTION_DTYPE),
                          np.fromfile(tmp_path / "b.bin", dtype=PREDICTION_DTYPE))
    steps = [[key.split(":", 1)[1] for key in seen.started] for seen in (forked, fresh)]
    assert steps[0] == steps[1] and "eval" in steps[0]  # progress came through the pipe
    assert a.process_peak_rss_mib is not None and b.process_peak_rss_mib is not None
    assert 0.5 < a.process_peak_rss_mib / b.process_peak_rss_mib < 2  # its own memory, counted as a fresh one's


@pytest.mark.slow
def test_a_worker_past_its_time_limit_is_killed(tmp_path: Path, zygote: Zygote) -> None:
    run = run_isolated(_request(tmp_path, "a.bin", images=1), tmp_path, 0, progress=Progress(), timeout_s=0.5,
                       zygote=zygote)
    assert run.error == "stopped after the time limit of 0.5 s per model"
    assert zygote.alive
    worker = zygote.spawn(["/nonexistent/request.json", str(tmp_path / "res.json")])  # the zygote still forks
    assert worker.wait(timeout=60) != 0 and not (tmp_path / "res.json").exists()


@pytest.mark.slow
def test_without_its_zygote_bench_starts_fresh_processes(tmp_path: Path, zygote: Zygote) -> None:
    zygote._proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while zygote.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not zygote.alive
    run = run_isolated(_request(tmp_path, "a.bin", images=1), tmp_path, 0, progress=Progress(), zygote=zygote)
    assert run.error is None and run.eval_images == 1


@pytest.mark.slow
def test_closing_the_zygote_stops_its_running_workers(tmp_path: Path, zygote: Zygote) -> None:
    request = _request(tmp_path, "a.bin", images=1)
    request.write(tmp_path / "req.json")
    worker = zygote.spawn([str(tmp_path / "req.json"), str(tmp_path / "res.json")])
    assert worker.pid is not None
    zygote.close()
    assert worker.wait(timeout=30) == -signal.SIGKILL
    assert _gone(worker.pid)


@pytest.mark.slow
def test_a_worker_dies_with_its_zygote(tmp_path: Path, zygote: Zygote) -> None:
    """A zygote killed mid-run left its worker running on, orphaned, next to the next model's worker."""
    request = _request(tmp_path, "a.bin", images=1)
    request.measure = MeasureOptions(weights="random", workers=0, warmup=50, latency_repeats=500,
                                     throughput_repeats=500)
    request.write(tmp_path / "req.json")
    worker = zygote.spawn([str(tmp_path / "req.json"), str(tmp_path / "res.json")])
    assert worker.pid is not None
    time.sleep(1.0)
    zygote._proc.send_signal(signal.SIGKILL)
    assert worker.wait(timeout=30) == -signal.SIGKILL and worker.lost == "its zygote process exited"
    deadline = time.monotonic() + 10
    while not _gone(worker.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(worker.pid)
