"""The bench worker protocol: versioned, tolerant of new fields, a clean subprocess, a time limit per model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.bench import BenchConfig, MeasureOptions, bench_models
from cnnlab.bench.protocol import PREDICTION_DTYPE, PROTOCOL_VERSION, ProtocolError, RunRequest, RunResult
from cnnlab.progress import JsonLinesProgress, Progress, replay
from tests.helpers.images import make_image


def test_request_round_trip_ignores_unknown_fields_and_refuses_other_versions(tmp_path: Path) -> None:
    request = RunRequest(model="resnet18", paths=["a.jpg"], predictions_file="p.npz",
                         measure=MeasureOptions(precision="bf16", weights="random"))
    data = request.to_dict()
    assert data["protocol"] == PROTOCOL_VERSION and data["measure"]["precision"] == "bf16"
    data["a_field_from_the_future"] = 1
    data["measure"]["another_one"] = True
    again = RunRequest.from_dict(json.loads(json.dumps(data)))
    assert again.measure == request.measure and again.paths == ["a.jpg"]
    with pytest.raises(ProtocolError, match="protocol version 1"):
        RunRequest.from_dict({**data, "protocol": 1})
    result = RunResult(model="x", eval_images=3).to_dict()
    assert RunResult.from_dict({**result, "new_figure": 1.5}).eval_images == 3
    with pytest.raises(ProtocolError):
        RunResult.from_dict({k: v for k, v in result.items() if k != "protocol"})


def test_bad_option_values_fail_when_the_config_is_made() -> None:
    from cnnlab.errors import UsageError

    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        MeasureOptions(precision="fp8")
    with pytest.raises(UsageError, match="unknown device"):
        MeasureOptions(device="gpu0")


def _run_worker(request: RunRequest, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], RunResult]:
    request.write(tmp_path / "req.json")
    proc = subprocess.run([sys.executable, "-m", "cnnlab.bench.worker", str(tmp_path / "req.json"),
                           str(tmp_path / "res.json")], capture_output=True, text=True, timeout=180)
    return proc, RunResult.read(tmp_path / "res.json")


@pytest.mark.slow
def test_worker_process_reports_progress_and_errors_without_warnings(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    measure = MeasureOptions(weights="random", workers=0, warmup=1, latency_repeats=3, throughput_repeats=3)
    request = RunRequest(model="squeezenet1_1", paths=[str(tmp_path / "a.png")], measure=measure,
                         predictions_file=str(tmp_path / "p.bin"), class_names=["x"], imagenet_accepted=[[1]],
                         progress=True)
    proc, result = _run_worker(request, tmp_path)
    assert proc.returncode == 0 and result.error is None and result.eval_images == 1
    assert "Warning" not in proc.stderr, proc.stderr  # e.g. runpy's "found in sys.modules" RuntimeWarning
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    started = [e["args"]["key"] for e in events if e["call"] == "start"]
    assert started == ["load", "auto", "throughput", "latency", "eval"]  # batch size auto: measured, shown
    assert result.auto is not None and result.auto["batch_auto"] and not result.auto["workers_auto"]
    assert result.throughput_batch == result.auto["batch_size"]
    assert result.speed_s is not None and result.throughput_timing is not None
    assert {"q1_s", "q3_s", "max_s"} <= set(result.throughput_timing)
    assert all(e["cnnlab-progress"] == 1 for e in events)
    request.model = "no_such_model"
    proc, result = _run_worker(request, tmp_path)
    assert proc.returncode == 0 and result.error is not None and "unknown model 'no_such_model'" in result.error


def test_progress_events_survive_the_pipe() -> None:
    import io

    class Keep(Progress):
        def __init__(self) -> None:
            self.seen: list[tuple[str, object]] = []

        def update(self, key: str, **kwargs: object) -> None:
            self.seen.append((key, kwargs.get("advance")))

        def note(self, message: str, *, warning: bool = False) -> None:
            self.seen.append((message, warning))

    stream = io.StringIO()
    sender = JsonLinesProgress(stream)
    sender.update("eval", advance=8, info="3 img/s")
    sender.note("hello", warning=True)
    keep = Keep()
    lines = stream.getvalue().splitlines() + ["plain output line"]
    assert [replay(line, keep, key_prefix="0:") for line in lines] == [True, True, False]
    assert keep.seen == [("0:eval", 8), ("hello", True)]


def test_a_model_past_its_time_limit_becomes_an_error_row(tmp_path: Path) -> None:
    for i in range(2):
        make_image(tmp_path / "data" / "cat" / f"{i}.png")
    config = BenchConfig(data=tmp_path / "data", models=["squeezenet1_1"], model_timeout_s=0.2,
                         measure=MeasureOptions(weights="random", workers=0))
    (model,) = bench_models(config).models
    assert not model.ok and "time limit of 0.2 s" in str(model.run.error)


def test_worker_main_ends_quietly_on_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlab.bench import worker

    def interrupted(*args: object, **kwargs: object) -> RunResult:
        raise KeyboardInterrupt

    request = RunRequest(model="squeezenet1_1", paths=[], predictions_file=str(tmp_path / "p.bin"))
    request.write(tmp_path / "req.json")
    monkeypatch.setattr(worker, "run_model", interrupted)
    assert worker.main([str(tmp_path / "req.json"), str(tmp_path / "res.json")]) == 130
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "KeyboardInterrupt" not in captured.err
    assert not (tmp_path / "res.json").exists()


def test_prediction_records_are_56_bytes_as_the_docs_say() -> None:
    """What the parent keeps per image and model (the docs' memory claim quotes this figure)."""
    root = Path(__file__).parents[2]
    text = " ".join(p.read_text(encoding="utf-8") for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))])
    assert PREDICTION_DTYPE.itemsize == 56
    assert f"{PREDICTION_DTYPE.itemsize} bytes per image" in " ".join(text.split())


def test_measure_options_embed_runtime_options_and_keep_the_results_json_keys() -> None:
    """How a model runs is one RuntimeOptions, parsed once; results.json and the worker messages keep
    the flat keys of earlier versions."""
    from cnnlab.options import DecodeWhere, Precision, RuntimeOptions

    short = MeasureOptions(device="cpu", batch_size=8, workers=0, precision="bf16", decode="cpu")
    long = MeasureOptions(runtime=RuntimeOptions(device="cpu", batch_size=8, workers=0, precision=Precision.BF16,
                                                 decode=DecodeWhere.CPU))
    assert short.runtime == long.runtime and short.runtime.precision is Precision.BF16
    data = short.to_dict()
    assert list(data) == ["device", "batch_size", "precision", "channels_last", "compile", "workers", "threads",
                          "fast_decode", "decode", "fold_bn", "weights", "weights_dir", "batch_sizes", "warmup",
                          "latency_repeats", "throughput_repeats", "max_seconds_per_timing",
                          "speed_budget_s"]
    assert (data["precision"], data["decode"], data["weights"]) == ("bf16", "cpu", "pretrained")
    assert MeasureOptions.from_dict({**data, "unknown": 1}).to_dict() == data
    with pytest.raises(TypeError, match="backend"):
        MeasureOptions(backend="onnxruntime")  # per row: BenchConfig.backends


def test_a_worker_whose_reader_is_gone_exits_quietly() -> None:
    """Found by review: stopping bench made each worker print BrokenPipeError tracebacks."""
    import subprocess
    import sys

    code = ("from cnnlab.progress import JsonLinesProgress; import sys\n"
            "p = JsonLinesProgress(sys.stdout)\n"
            "for i in range(100000): p.note('x' * 100)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(1000)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and "Traceback" not in err and "BrokenPipe" not in err
