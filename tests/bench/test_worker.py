"""bench's processes: merging the ranks' results of one row (cnnlab.bench.ranks), and the worker processes."""

from __future__ import annotations

from cnnlab.bench.protocol import RunResult
from cnnlab.bench.ranks import merge_runs, rank_totals


def test_the_same_error_on_every_rank_is_said_once() -> None:
    error = "device cuda was asked for, but torch sees no CUDA device here"
    merged, predictions = merge_runs([RunResult("m", error=error), RunResult("m", error=error)], [None, None])
    assert predictions is None
    assert merged.error == f"every rank: {error}"
    merged, _ = merge_runs([RunResult("m"), RunResult("m", error="boom"), RunResult("m", error="boom")],
                           [None, None, None])
    assert merged.error == "ranks 1, 2: boom"


def test_a_rank_without_images_has_no_images_per_second() -> None:
    runs = [RunResult("m", eval_images=0, eval_total_s=0.01), RunResult("m", eval_images=1, eval_total_s=0.5)]
    merged, _ = merge_runs(runs, [None, None])
    assert rank_totals(merged)["rank_eval_images_per_s"] == ";2.00"


def test_ctrl_c_while_the_worker_starts_is_quiet(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C reaches the worker too; while it is still importing torch it exits 130 without a traceback."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.bench.worker", str(tmp_path / "req.json"),
                             str(tmp_path / "res.json")], stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # importing torch takes longer
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr


def test_an_interrupted_bench_does_not_leave_its_worker_running(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C (or a signal) that reaches only the bench process while it waits for a worker stops the worker."""
    import subprocess

    import pytest

    from cnnlab.bench.config import MeasureOptions
    from cnnlab.bench.protocol import RunRequest
    from cnnlab.bench.runner import run_isolated
    from cnnlab.progress import Progress

    started: list[subprocess.Popen[str]] = []
    real_wait = subprocess.Popen.wait

    def interrupted_wait(self, timeout=None):  # type: ignore[no-untyped-def]
        if not started:
            started.append(self)
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", interrupted_wait)
    request = RunRequest(model="mobilenet_v3_small", paths=[], predictions_file=str(tmp_path / "p.bin"),
                         measure=MeasureOptions(device="cpu"), class_names=[], imagenet_accepted=[])
    with pytest.raises(KeyboardInterrupt):
        run_isolated(request, tmp_path, 0, progress=Progress())
    assert started and started[0].poll() is not None  # killed, not left running


def test_ctrl_c_with_a_list_of_devices_stops_every_worker(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--device cpu,cpu: Ctrl-C reaching bench alone, while workers run on the device threads, stops them
    all, and no thread starts another."""
    import subprocess
    import threading
    import time

    import pytest
    from PIL import Image

    from cnnlab.bench import BenchConfig, MeasureOptions, bench_models

    (tmp_path / "d" / "cat").mkdir(parents=True)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "d" / "cat" / "a.jpg")
    started: list[subprocess.Popen[str]] = []

    class Recorded(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            if "cnnlab.bench.worker" in args[0]:
                started.append(self)

    real_join = threading.Thread.join

    def join(self, timeout=None):  # type: ignore[no-untyped-def]
        if self.name.startswith("bench-") and threading.current_thread() is threading.main_thread():
            deadline = time.monotonic() + 60
            while not started and time.monotonic() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt
        return real_join(self, timeout)

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    monkeypatch.setattr(threading.Thread, "join", join)
    config = BenchConfig(data=tmp_path / "d", models=["mobilenet_v3_small"] * 4, devices=["cpu", "cpu"],
                         measure=MeasureOptions(device="cpu", weights="random", latency_repeats=3,
                                                throughput_repeats=3))
    with pytest.raises(KeyboardInterrupt):
        bench_models(config)
    time.sleep(1.0)  # a device thread that was starting a worker has started it by now
    assert started and all(p.poll() is not None for p in started), [p.poll() for p in started]
