"""bench with --backend: a row per model and backend, accuracy beside speed, failures as rows, extras checked first."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.bench import BenchConfig, BenchResult, MeasureOptions, bench_models, full_table, summary_table, write_bench_outputs
from cnnlab.cli import app
from cnnlab.errors import CnnlabError
from cnnlab.imagedata.demo import build_demo_set

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("openvino")
runner = CliRunner()
FAST = MeasureOptions(latency_repeats=3, throughput_repeats=3, warmup=1, batch_size=4, workers=0, threads=1)
MODEL = "efficientnet_lite0.IMAGENET1K"


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        yield


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_set(tmp_path_factory.mktemp("demo") / "photos")


@pytest.fixture(scope="module")
def result(demo: Path) -> BenchResult:
    return bench_models(BenchConfig(data=demo, models=["efficientnet_lite0"], measure=FAST, isolate=False,
                                    backends=["torch", "onnxruntime", "openvino-int8"]))


def test_one_row_per_backend_with_accuracy_speed_and_memory(result: BenchResult) -> None:
    assert [m.name for m in result.models] == [MODEL, f"{MODEL}@onnxruntime", f"{MODEL}@openvino-int8"]
    torch_row, ort_row, int8_row = (m.flat() for m in result.models)
    for row in (torch_row, ort_row, int8_row):
        assert row["status"] == "ok" and row["top1"] is not None and row["eval_images_per_s"] > 0
        assert row["memory_mib"] is not None and row["threads"] == 1
    assert ort_row["top1"] == torch_row["top1"]  # the fp32 export predicts what PyTorch predicts
    assert (ort_row["backend"], ort_row["precision"], ort_row["provider"]) == ("onnxruntime", "fp32",
                                                                              "CPUExecutionProvider")
    assert (int8_row["backend"], int8_row["quantization"], int8_row["precision"]) == ("openvino", "int8", "int8")
    assert int8_row["calibration_images"] == 9  # the whole demo set: fewer images than the default sample
    assert int8_row["weights_mib"] < 0.4 * ort_row["weights_mib"]
    assert torch_row["gmacs_measured"] and ort_row["gmacs_measured"] is None  # MACs are counted on the torch module
    assert ort_row["prepare_s"] is not None and torch_row["prepare_s"] is None
    # what ran, recorded per row: the torch row with its 49 batch norms folded, in channels-last on the CPU (the
    # defaults); ONNX Runtime picks its own layout and fuses in its graph optimiser: not applicable there
    assert (torch_row["channels_last"], torch_row["folded_bn"]) == (torch_row["device"] == "cpu", 49)
    assert (ort_row["channels_last"], ort_row["folded_bn"]) == (None, None)
    # the paired tests compare the int8 row with the fp32 ones: is the difference real?
    assert any(f"{MODEL}@openvino-int8" in c.verdict for c in result.comparisons)


def test_tables_and_files_show_backend_and_precision(result: BenchResult, tmp_path: Path) -> None:
    header, rows = full_table(result)
    assert header[:3] == ["model", "backend", "precision"]
    assert [r[1:3] for r in rows] == [["torch", "fp32"], ["onnxruntime", "fp32"], ["openvino-int8", "int8"]]
    names = [r[0] for r in summary_table(result)[1]]
    assert names == ["efficientnet_lite0", "efficientnet_lite0\n@onnxruntime", "efficientnet_lite0\n@openvino-int8"]
    files = write_bench_outputs(result, tmp_path, plots=False)
    rows_csv = list(csv.DictReader(files["csv"].open()))
    assert [(r["backend"], r["quantization"]) for r in rows_csv] == [("torch", "none"), ("onnxruntime", "none"),
                                                                       ("openvino", "int8")]
    assert {p.name for p in (tmp_path / "predictions").iterdir()} == {
        f"{MODEL}.csv", f"{MODEL}_onnxruntime.csv", f"{MODEL}_openvino-int8.csv"}
    assert "| backend | precision |" in files["markdown"].read_text()
    layout = "channels-last" if result.models[0].run.device == "cpu" else "NCHW"
    assert f"PyTorch rows in {layout}, batch norms folded into their convolutions ({MODEL} 49)." in files["markdown"].read_text()


def test_a_failed_export_is_that_rows_error(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlab.runtime.loader

    def broken(*args: object, **kwargs: object) -> Path:
        raise CnnlabError("onnx export of squeezenet1_1 failed: simulated")

    monkeypatch.setattr(cnnlab.runtime.loader, "prepare_runtime_file", broken)
    result = bench_models(BenchConfig(data=demo, models=["squeezenet1_1"], measure=MeasureOptions(
        **{**FAST.to_dict(), "weights": "random"}), isolate=False, backends=["onnxruntime", "torch"]))
    failed, ok = result.models
    # named like a finished row (registry name with its weights tag), so the two rows of one model line up
    assert failed.name == "squeezenet1_1.IMAGENET1K_V1@onnxruntime" and "simulated" in str(failed.run.error)
    assert ok.ok and ok.name == "squeezenet1_1.IMAGENET1K_V1"


def test_missing_extra_stops_bench_before_any_work(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    out = tmp_path / "out"
    result = runner.invoke(app, ["bench", str(demo), "--models", "squeezenet1_1", "--random-weights",
                                 "--backend", "torch,openvino", "--out", str(out), "-q"])
    assert result.exit_code == 2 and "pip install 'cnnlab[openvino]'" in result.stderr
    assert not (out / "results.csv").exists()
