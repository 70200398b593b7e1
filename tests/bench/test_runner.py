"""bench end to end: random-weights speed runs, real accuracy with the offline model, failures as rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnlab.bench import BenchConfig, MeasureOptions, bench_models, write_bench_outputs
from cnnlab.bench.measure import count_macs
from cnnlab.bench.runner import preflight
from cnnlab.cli import app
from cnnlab.errors import DatasetError
from cnnlab.imagedata.demo import build_demo_set
from cnnlab.metrics import wilson_interval
from cnnlab.models.load import LoadedModel
from cnnlab.models.registry import get_spec
from tests.helpers.images import make_image

runner = CliRunner()
FAST = dict(latency_repeats=3, throughput_repeats=3, warmup=1, batch_size=4, workers=0)


def fast(**kwargs: object) -> MeasureOptions:
    return MeasureOptions(**{**FAST, **kwargs})  # type: ignore[arg-type]


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    for label, color in [("cat", (200, 120, 40)), ("dog", (90, 60, 30)), ("unicorn_rainbow", (250, 0, 250))]:
        for i in range(3):
            make_image(root / label / f"{i}.jpg", (48 + i, 40), color)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "empty_class").mkdir()
    return root


@pytest.mark.slow
def test_random_weights_run_in_subprocesses_via_cli(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["bench", str(tiny_folder), "--models", "squeezenet1_1,mobilenet_v3_small",
                                 "--random-weights", "--out", str(out), "-q", "--workers", "0",
                                 "--repeats", "3", "-b", "4", "--no-plots"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["model"] for r in rows] == ["squeezenet1_1.IMAGENET1K_V1", "mobilenet_v3_small.IMAGENET1K_V1"]
    for r in rows:
        assert r["status"] == "ok" and r["random_weights"] == "True"
        assert r["top1"] == ""  # no accuracy from random weights
        assert int(r["eval_images"]) == 9 and int(r["skipped_images"]) == 1
        assert float(r["throughput_images_per_s"]) > 0 and float(r["latency_b1_median_ms"]) > 0
        assert float(r["eval_total_s"]) >= float(r["eval_model_s"]) > 0
        assert float(r["rss_peak_mib"]) > 0
        assert int(r["threads"]) >= 1
    md = (out / "results.md").read_text()
    assert "random weights" in md and "unicorn_rainbow" in md and "Empty classes: empty_class" in md
    skipped = list(csv.DictReader((out / "skipped.csv").open()))
    assert [(Path(s["path"]).name, s["reason"], s["label"]) for s in skipped] == [("broken.jpg", "truncated", "cat")]
    payload = json.loads((out / "results.json").read_text())
    assert payload["schema_version"] == 2
    assert payload["environment"]["torch"] == torch.__version__
    assert payload["label_mapping"]["unicorn_rainbow"]["how"] == "unmapped"
    # skipped files are listed once (dataset.skipped) and counted per model, not repeated in each run
    assert [Path(s["path"]).name for s in payload["dataset"]["skipped"]] == ["broken.jpg"]
    assert all("eval_skipped" not in m["run"] and m["skipped_images"] == 1 for m in payload["models"])
    # quiet: no bars, one line per finished model
    finished = [line for line in result.stderr.splitlines() if "random weights," in line and "img/s" in line]
    assert [line.split(":")[0] for line in finished] == ["squeezenet1_1.IMAGENET1K_V1", "mobilenet_v3_small.IMAGENET1K_V1"]


def test_real_accuracy_with_offline_model(tmp_path: Path) -> None:
    """Hand-checked: efficientnet_lite0 gets 7 of the 8 scorable demo photos right at top-1
    (Grace Hopper's top-1 is 'mortarboard'; 'military uniform' is in her top 5) and all 8 at top-5.
    The astronaut has no ImageNet class and is left out, not scored as wrong."""
    data = build_demo_set(tmp_path / "demo")
    (data / "coffee" / "bad.png").write_bytes(b"")
    result = bench_models(BenchConfig(data=data, models=["efficientnet_lite0"], measure=fast(), isolate=False))
    (model,) = result.models
    assert model.ok and model.accuracy is not None
    summary = model.accuracy.summary
    assert model.accuracy.scored == 8
    assert summary.hits[1] == 7 and summary.hits[5] == 8
    assert summary.ci[1] == pytest.approx(wilson_interval(7, 8))
    assert model.accuracy.unscored_classes == ["astronaut"]
    assert [(Path(s.path).name, s.reason) for s in result.skipped] == [("bad.png", "empty")]
    per_class = {c.name: c for c in model.accuracy.per_class}
    assert per_class["military uniform"].correct == 0 and per_class["motorcycle"].correct == 2
    files = write_bench_outputs(result, tmp_path / "out")
    for key in ("markdown", "csv", "json", "html", "accuracy_vs_throughput", "memory", "per_class"):
        assert files[key].is_file() and files[key].stat().st_size > 100, key
    # predictions.csv lets anyone recompute top-1
    rows = list(csv.DictReader((tmp_path / "out" / "predictions" / "efficientnet_lite0.IMAGENET1K.csv").open()))
    cats = {r["path"]: int(r["top1_index"]) for r in rows if r["label"] == "cat"}
    assert all(281 <= v <= 287 for v in cats.values()) and len(cats) == 1


def test_missing_weights_stop_the_run_before_any_model(tiny_folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setenv("CNNLAB_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    out = tmp_path / "out"
    result = runner.invoke(app, ["bench", str(tiny_folder), "--models",
                                 "efficientnet_lite0,alexnet,googlenet,resnet50.IMAGENET1K_V1",
                                 "--out", str(out), "-q", "--workers", "0", "--repeats", "3", "-b", "4"])
    assert result.exit_code == 3
    assert "alexnet-owt-7be5be79.pth" in result.stderr and "googlenet-1378be20.pth" in result.stderr
    # the hint names each model's own weights (its tag), not its architecture's default ones
    fetch = "cnnlab weights fetch alexnet.IMAGENET1K_V1 googlenet.IMAGENET1K_V1 resnet50.IMAGENET1K_V1"
    assert fetch in " ".join(result.stderr.split()) and "--random-weights-if-missing" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # preflight runs before the output folder is made (and locked)


@pytest.mark.slow
def test_failures_become_rows_and_the_run_goes_on(tiny_folder: Path, tmp_path: Path) -> None:
    """A checkpoint trained from an architecture this installation does not know fails in its worker."""
    from cnnlab.models.checkpoint import HeadInfo, make_checkpoint, save_checkpoint

    spec = get_spec("squeezenet1_1")
    ckpt = make_checkpoint(arch="no_such_arch.V1", head=HeadInfo("fc", "linear", 8, 1000, 2), classes=["cat", "dog"],
                           preprocessing=spec.preprocessing, state_dict={"w": torch.zeros(2)}, train_args={}, metrics={})
    broken = save_checkpoint(ckpt, tmp_path / "broken.pt")
    out = tmp_path / "out"
    result = runner.invoke(app, ["bench", str(tiny_folder), "--models", f"{broken},squeezenet1_1", "--random-weights",
                                 "--out", str(out), "-q", "--workers", "0", "--repeats", "3", "-b", "4", "--no-plots"])
    assert result.exit_code == 4, result.output
    rows = {r["model"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows[str(broken)]["status"] == "error" and "no_such_arch" in rows[str(broken)]["error"]
    assert rows["squeezenet1_1.IMAGENET1K_V1"]["status"] == "ok"
    assert f"{broken} failed" in result.stderr


def test_simulated_oom_in_process(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_call = LoadedModel.__call__

    def maybe_oom(self: LoadedModel, batch: torch.Tensor) -> torch.Tensor:
        if self.spec.arch == "squeezenet1_1":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(self, batch)

    monkeypatch.setattr(LoadedModel, "__call__", maybe_oom)
    result = bench_models(BenchConfig(data=tiny_folder, models=["squeezenet1_1", "mobilenet_v3_small"],
                                      measure=fast(weights="random"), isolate=False))
    first, second = result.models
    assert first.run.error is not None and first.run.error.startswith("out of GPU memory")
    assert second.ok and second.run.eval_images == 9
    assert [m.name for m in result.failed] == ["squeezenet1_1.IMAGENET1K_V1"]


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "googlenet", "efficientnet_lite0"])
def test_measured_macs_match_published_metadata(name: str) -> None:
    spec = get_spec(name)
    model = spec.build().eval()
    assert count_macs(model, spec.preprocessing.crop_size, torch.device("cpu")) == pytest.approx(spec.gmacs, rel=0.01)


def test_paired_comparison_uses_common_images(tmp_path: Path) -> None:
    data = build_demo_set(tmp_path / "demo")
    result = bench_models(BenchConfig(data=data, models=["efficientnet_lite0", "efficientnet_lite0.IMAGENET1K"],
                                      measure=fast(), isolate=False))
    (comparison,) = result.comparisons
    assert comparison.n == 8 and comparison.mcnemar.b == 0 and comparison.mcnemar.c == 0
    assert "not a significant difference" in comparison.verdict
    assert np.array_equal(result.models[0].predictions["topk"], result.models[1].predictions["topk"])


def test_random_weights_never_publish_accuracy(tmp_path: Path) -> None:
    data = build_demo_set(tmp_path / "demo")
    result = bench_models(BenchConfig(data=data, models=["efficientnet_lite0", "squeezenet1_1"],
                                      measure=fast(weights="random-if-missing"), isolate=False))
    real, random = result.models
    assert not real.run.random_weights and real.accuracy is not None
    assert random.run.random_weights and random.accuracy is None
    models = result.to_dict()["models"]
    assert models[1]["accuracy"] is None and models[1]["top1"] is None
    assert result.comparisons == []  # nothing to compare a random model with


def test_empty_and_unreadable_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlab.bench.worker

    out = tmp_path / "o"
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    result = runner.invoke(app, ["bench", str(tmp_path / "empty"), "-q", "-o", str(out)])
    assert result.exit_code == 2 and "no images found" in result.stderr
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat" / "x.jpg").write_bytes(b"nope")
    (tmp_path / "bad" / "cat" / "y.png").write_bytes(b"")

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model ran although no image decodes")

    monkeypatch.setattr(cnnlab.bench.worker, "run_model", no_model)
    result = runner.invoke(app, ["bench", str(tmp_path / "bad"), "--models", "efficientnet_lite0", "--in-process",
                                 "-q", "--no-plots", "--workers", "0", "--repeats", "3", "-o", str(out)])
    assert result.exit_code == 2 and "no image could be read" in result.stderr, result.output
    assert "none of its 2 image files decodes" in result.stderr and "1 empty" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(DatasetError, match="no image could be read"):
        preflight(BenchConfig(data=tmp_path / "bad", models=["squeezenet1_1"], measure=fast(weights="random")))
    (tmp_path / "m.csv").write_text("path,label\nx.jpg,\n")
    result = runner.invoke(app, ["bench", str(tmp_path / "m.csv"), "-q", "-o", str(out)])
    assert result.exit_code == 2 and "needs both a path and a label" in result.stderr
    assert not out.exists()  # no failed preflight leaves a folder (with its .lock) behind


def test_same_model_twice_keeps_both_prediction_files(tiny_folder: Path, tmp_path: Path) -> None:
    result = bench_models(BenchConfig(data=tiny_folder, models=["squeezenet1_1", "squeezenet1_1"],
                                      measure=fast(weights="random"), isolate=False))
    write_bench_outputs(result, tmp_path / "o", plots=False)
    names = sorted(p.name for p in (tmp_path / "o" / "predictions").iterdir())
    assert names == ["squeezenet1_1.IMAGENET1K_V1.csv", "squeezenet1_1.IMAGENET1K_V1_2.csv"]


def test_predictions_equal_a_plain_reference_computation(tmp_path: Path) -> None:
    """Image for image, bench's predictions are what PIL + torchvision transforms + the model compute."""
    from PIL import Image
    from torchvision import transforms

    from cnnlab.models.weights import load_state_dict, resolve_weights

    data = build_demo_set(tmp_path / "demo")
    result = bench_models(BenchConfig(data=data, models=["efficientnet_lite0"], measure=fast(fast_decode=False),
                                      isolate=False))
    write_bench_outputs(result, tmp_path / "out", plots=False)
    rows = list(csv.DictReader((tmp_path / "out" / "predictions" / "efficientnet_lite0.IMAGENET1K.csv").open()))
    spec = get_spec("efficientnet_lite0")
    model = spec.build(load_state_dict(resolve_weights(spec))).eval()
    reference = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(mean=[127 / 255] * 3, std=[128 / 255] * 3),
    ])
    assert len(rows) == 9
    for row in rows:
        with torch.inference_mode():
            probs = model(reference(Image.open(row["path"]).convert("RGB"))[None]).softmax(1)[0]
        values, indices = probs.topk(5)
        assert [int(row[f"top{i}_index"]) for i in range(1, 6)] == indices.tolist(), row["path"]
        assert [float(row[f"top{i}_prob"]) for i in range(1, 6)] == pytest.approx(values.tolist(), abs=2e-4)


def tiny_checkpoint(path: Path, classes: list[str], data_record: dict | None = None) -> Path:
    """A valid checkpoint (random squeezenet1_1 with a new head), made in a second without training."""
    from cnnlab.models.checkpoint import build_finetuned, make_checkpoint, replace_head, save_checkpoint

    spec = get_spec("squeezenet1_1")
    torch.manual_seed(0)
    module = spec.build(None)
    head = replace_head(module, len(classes))
    assert build_finetuned(spec, len(classes), module.state_dict()) is not None
    ckpt = make_checkpoint(arch=spec.name, head=head, classes=classes, preprocessing=spec.preprocessing,
                           state_dict=module.state_dict(), train_args={}, metrics={}, data_record=data_record)
    return save_checkpoint(ckpt, path)


def test_model_files_are_recognised_one_way_everywhere(tiny_folder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint is known by its suffix in any case (bench preflight, its worker, load_model alike), and a
    registry name that happens to be a file in the working folder is still the registry model."""
    from cnnlab.models.files import is_checkpoint_file, is_onnx_file, model_file_kind

    assert [model_file_kind(n) for n in ("a.pt", "b.PTH", "c.ckpt", "d.ONNX", "resnet50", "x.IMAGENET1K")] == [
        "checkpoint", "checkpoint", "checkpoint", "onnx", None, None]
    assert is_checkpoint_file(Path("runs/best.Pt")) and is_onnx_file("m.onnx") and not is_onnx_file("m.pt")
    upper = tiny_checkpoint(tmp_path / "FINETUNED.PT", ["cat", "dog", "unicorn_rainbow"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "squeezenet1_1").write_bytes(b"not a model")  # a stray file named like a registry model
    result = bench_models(BenchConfig(data=tiny_folder, models=[str(upper), "squeezenet1_1"],
                                      measure=fast(weights="random"), isolate=False))
    ours, registry = result.models
    assert ours.ok, ours.run.error
    assert ours.run.eval_images == 9 and not ours.run.random_weights
    assert registry.ok and registry.run.random_weights, registry.run.error


def test_preflight_makes_folders_sharing_imagenet_classes_disjoint(tmp_path: Path) -> None:
    """Folders ``cat`` and ``tiger cat`` both claim ImageNet's 282: bench scores it for ``tiger cat`` only."""
    for label in ("cat", "tiger cat"):
        make_image(tmp_path / "d" / label / "0.jpg")
    plan = preflight(BenchConfig(data=tmp_path / "d", models=["squeezenet1_1"], measure=fast(weights="random")))
    assert 282 in plan.mappings["tiger cat"].indices and 282 not in plan.mappings["cat"].indices


def test_out_below_a_regular_file_is_a_usage_error(tiny_folder: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        result = runner.invoke(app, ["bench", str(tiny_folder), "-m", "squeezenet1_1", "--random-weights",
                                     "-o", str(out), "-q"])
        assert result.exit_code == 2, result.output
        assert "is a file, not a folder" in result.stderr or "exists and is not a folder" in result.stderr
        assert "Traceback" not in result.stderr
    assert afile.read_text() == "x"


def test_timeout_per_model_needs_isolation(tiny_folder: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", str(tiny_folder), "-m", "squeezenet1_1", "--random-weights", "--in-process",
                                 "--timeout-per-model", "30", "-o", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2, result.output
    assert "time limit per model" in result.stderr and "running every model in this process" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


def test_a_timed_out_row_is_named_like_the_others_and_no_time_is_lost(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker is stopped at the limit; a process it started that still holds the progress pipe
    (as decoding subprocesses do for a while) does not delay the next model."""
    import subprocess
    import sys
    import time

    from cnnlab.bench.protocol import RunRequest
    from cnnlab.bench.result import ModelResult
    from cnnlab.bench.runner import run_isolated
    from cnnlab.progress import Progress

    real_popen = subprocess.Popen
    stuck = ("import subprocess, sys, time; "
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(8)']); time.sleep(60)")

    def popen(args: list[str], **kwargs: object) -> subprocess.Popen[str]:
        if "cnnlab.bench.worker" not in args:  # not the worker: what torch's imports start (ctypes' find_library)
            return real_popen(args, **kwargs)  # type: ignore[call-overload, no-any-return]
        return real_popen([sys.executable, "-c", stuck], **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(subprocess, "Popen", popen)
    request = RunRequest(model="squeezenet1_1", paths=[], predictions_file=str(tmp_path / "p.bin"),
                         backend="onnxruntime")
    get_spec("squeezenet1_1")  # the failed row is named from the registry: built now, not in the timed part
    t0 = time.perf_counter()
    run = run_isolated(request, tmp_path, 0, progress=Progress(), timeout_s=1.5)
    elapsed = time.perf_counter() - t0
    assert run.error == "stopped after the time limit of 1.5 s per model"
    assert ModelResult(run).name == "squeezenet1_1.IMAGENET1K_V1@onnxruntime"
    assert elapsed < 4.0, elapsed  # was 1.5 s + a 5 s wait for the relay


def test_help_names_every_data_layout() -> None:
    result = runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "80"})
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "class-folder tree" in text and "manifest" in text
    assert "flat ImageNet validation folder" in text and "--labels" in text


def test_wide_output_at_80_columns_is_readable(tiny_folder: Path, tmp_path: Path) -> None:
    """--wide on an 80-column terminal: a table too wide for it becomes one block per model (figure: value),
    and the throughput-vs-batch curve is shown, one line per model."""
    result = runner.invoke(app, ["bench", str(tiny_folder), "-m", "squeezenet1_1", "--random-weights", "--in-process",
                                 "--batch-sizes", "1,4", "-b", "4", "--workers", "0", "--repeats", "3", "--no-plots",
                                 "-q", "--wide", "-o", str(tmp_path / "o")], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    block = lines[lines.index("All figures"):]
    assert block[1] == "squeezenet1_1.IMAGENET1K_V1"
    assert "  status: random weights" in block and any(line.startswith("  params (M): 1.24") for line in block)
    curve = [line for line in lines if line.startswith("  squeezenet1_1.IMAGENET1K_V1: ")]
    assert len(curve) == 1 and " 1: " in curve[0] and ", 4: " in curve[0] and "best at batch" in curve[0]
    assert "Throughput by batch size (model-only img/s):" in lines
