"""export: TorchScript and ONNX round trips of a training checkpoint, within a stated tolerance.

The checkpoint comes from a short run on generated colour images (SqueezeNet from random weights
at 32 px, whose head is a 1x1 convolution, so the rebuild of an unusual head is exercised too).
Stated tolerance: the exported file's logits differ from the checkpoint's in PyTorch by at most
1e-4 on the check batch (the exporter's default limit is 1e-3; fp32 exports measure ~1e-6).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import CnnlabError, ExportMismatchError, UsageError
from cnnlab.models import export as export_module
from cnnlab.models.export import export_model
from cnnlab.models.load import load_torch
from cnnlab.options import RuntimeOptions
from cnnlab.train import TrainConfig, fine_tune
from tests.helpers.images import make_shades

runner = CliRunner()
STATED_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_shades(tmp_path_factory.mktemp("shades"))
    result = fine_tune(TrainConfig(
        data=str(root), out=str(tmp_path_factory.mktemp("run") / "r"), model="squeezenet1_1", random_weights=True,
        image_size=32, freeze_epochs=0, epochs=1, batch_size=8, workers=0,
    ))
    return result.best_path


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_round_trip(checkpoint: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"model.{fmt}"
    result = export_model(checkpoint, fmt, out)
    assert result.ok and result.max_abs_diff <= STATED_TOLERANCE
    assert result.path == out and out.is_file() and result.check_batch == 3
    meta = json.loads(result.metadata_path.read_text())
    assert meta["classes"] == ["dark", "light"] and meta["input"]["dtype"] == "uint8"
    assert meta["preprocessing"]["crop_size"] == 32

    # the file on its own, on a batch size it was not exported with, agrees with the checkpoint
    loaded = load_torch(str(checkpoint), RuntimeOptions(device="cpu"))
    batch = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = loaded(batch)
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(batch)
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
    assert got.shape == (5, 2)
    assert float((got - expected).abs().max()) <= STATED_TOLERANCE


def test_export_cli_and_default_path(checkpoint: Path) -> None:
    result = runner.invoke(app, ["export", str(checkpoint), "--format", "torchscript", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] and data["path"] == str(checkpoint.with_name("best.torchscript.pt"))
    assert Path(data["path"]).is_file() and data["max_abs_diff"] <= STATED_TOLERANCE
    text = runner.invoke(app, ["export", str(checkpoint), "--format", "torchscript"])
    assert text.exit_code == 0 and "ok" in text.stdout


def test_export_mismatch_fails_clearly(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_module._run_exported
    monkeypatch.setattr(export_module, "_run_exported", lambda *a: real(*a) + 0.01)  # a subtly wrong export
    out = tmp_path / "bad.pt"
    with pytest.raises(ExportMismatchError, match=r"differs from the PyTorch model by up to 0\.01"):
        export_model(checkpoint, "torchscript", out)
    assert not out.exists()
    result = runner.invoke(app, ["export", str(checkpoint), "-f", "torchscript", "--out", str(out)])
    assert result.exit_code == 1 and "tolerance" in result.stderr
    passes = runner.invoke(app, ["export", str(checkpoint), "-f", "torchscript", "--out", str(out), "--tolerance", "0.1"])
    assert passes.exit_code == 0 and out.is_file()


@pytest.mark.parametrize("failure", ["none", "raises", "wrong graph", "refused", "both"])
def test_onnx_falls_back_to_the_dynamo_exporter(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                failure: str) -> None:
    """The TorchScript-based exporter goes first (faster to make); where it fails or its graph does not reproduce
    the model, the dynamo exporter's graph is the one written; where both fail, the error says so."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    real_write, real_run = export_module.write_onnx, export_module._run_exported
    used: list[str] = []

    def write(module: torch.nn.Module, example: torch.Tensor, path: Path, outputs: list[str], **kwargs: object) -> None:
        used.append(str(kwargs["exporter"]))
        if failure in ("raises", "both") and kwargs["exporter"] == "torchscript":
            raise RuntimeError("the exporter broke")
        real_write(module, example, path, outputs, **kwargs)  # type: ignore[arg-type]

    def run(*args: object) -> torch.Tensor:
        if failure == "refused" and used[-1] == "torchscript":  # found by review: escaped as ONNX Runtime's error
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got: 3 Expected: 2")
        wrong = failure == "both" or (failure == "wrong graph" and used[-1] == "torchscript")
        return real_run(*args) + (0.5 if wrong else 0.0)  # type: ignore[arg-type]

    monkeypatch.setattr(export_module, "write_onnx", write)
    monkeypatch.setattr(export_module, "_run_exported", run)
    out = tmp_path / "m.onnx"
    if failure == "both":
        with pytest.raises(ExportMismatchError, match="differs from the PyTorch model.*torchscript exporter: "):
            export_model(checkpoint, "onnx", out)
        assert used == ["torchscript", "dynamo"] and not out.exists()
        return
    result = export_model(checkpoint, "onnx", out)
    expected = ["torchscript"] if failure == "none" else ["torchscript", "dynamo"]
    assert used == expected and result.max_abs_diff < 1e-3
    assert json.loads(result.metadata_path.read_text())["exporter"] == expected[-1]


def test_export_refuses_unknown_formats(checkpoint: Path) -> None:
    with pytest.raises(CnnlabError, match="unknown export format"):
        export_model(checkpoint, "tflite")
    assert runner.invoke(app, ["export", str(checkpoint), "--format", "tflite"]).exit_code == 2


def test_sidecar_describes_the_source_model(tmp_path: Path) -> None:
    """What `predict`/`bench` need to run the file as a model: source, weights, published figures."""
    from cnnlab.models.load import load_torch
    from cnnlab.options import ModelSource, RuntimeOptions

    weights = tmp_path / "w.pth"
    source = ModelSource(name="squeezenet1_1", policy="random")
    torch.save(load_torch(source, RuntimeOptions(device="cpu")).module.state_dict(), weights)
    result = runner.invoke(app, ["export", "squeezenet1_1", "--weights", str(weights), "--out", str(tmp_path / "s.onnx")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "s.onnx.json").read_text())
    assert meta["source"] == "torchvision" and meta["weights_file"] == str(weights) and meta["random_weights"] is False
    assert meta["spec"]["num_params"] == 1_235_496 and meta["spec"]["acc1"] == 58.178
    assert meta["preprocessing"]["crop_mode"] == "center"


def test_export_never_overwrites_the_checkpoint_it_exports(checkpoint: Path, tmp_path: Path) -> None:
    """`export best.pt -o best.pt` replaced the trained model with the ONNX graph, exit 0 (issue 27, item 8)."""
    before = checkpoint.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(checkpoint)
    hard = tmp_path / "hard.pt"
    hard.hardlink_to(checkpoint)
    for same in (checkpoint, checkpoint.parent / "." / checkpoint.name, link, hard):
        result = runner.invoke(app, ["export", str(checkpoint), "-o", str(same)])
        assert result.exit_code == 2, result.output
        assert "is the model being exported" in result.stderr, result.stderr
    with pytest.raises(UsageError, match="is the model being exported"):
        export_model(checkpoint, "torchscript", checkpoint)
    assert checkpoint.read_bytes() == before
    assert not checkpoint.with_name(checkpoint.name + ".json").exists()


def test_export_refuses_an_output_that_is_not_a_regular_file(checkpoint: Path, tmp_path: Path) -> None:
    """An output that is a FIFO made the export wait for a reader forever (issue 27): refused before any work."""
    import os

    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that code that writes to it cannot hang this test
    try:
        result = runner.invoke(app, ["export", str(checkpoint), "-o", str(fifo)])
        assert result.exit_code == 2, result.output
        assert "not a regular file" in result.stderr, result.stderr
        sidecar = tmp_path / "other.onnx.json"  # the sidecar the export writes next to it counts too
        os.mkfifo(sidecar)
        with pytest.raises(UsageError, match="other.onnx.json exists and is not a regular file"):
            export_model(checkpoint, "onnx", tmp_path / "other.onnx")
        with pytest.raises(UsageError, match="not a regular file"):
            export_model(checkpoint, "onnx", "/dev/null")
    finally:
        os.close(reader)
    assert not (tmp_path / "other.onnx").exists()


def test_export_refuses_to_replace_a_file_it_did_not_write(checkpoint: Path, tmp_path: Path) -> None:
    """Found by review: ``export -o data/red/0.png`` replaced the user's image with an ONNX graph."""
    image = tmp_path / "data" / "red" / "0.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\x89PNG not really")
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(image)])
    assert result.exit_code == 2 and image.read_bytes() == b"\x89PNG not really", result.output
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes")
    refused = runner.invoke(app, ["export", str(checkpoint), "-o", str(notes)])
    assert refused.exit_code == 2 and "not an earlier export" in refused.stderr and "--overwrite" in refused.stderr
    assert notes.read_text() == "my notes"
    assert runner.invoke(app, ["export", str(checkpoint), "-o", str(notes), "--overwrite"]).exit_code == 0
    again = runner.invoke(app, ["export", str(checkpoint), "-o", str(notes)])  # an earlier export: replaced
    assert again.exit_code == 0, again.output
    with pytest.raises(UsageError, match="ends in .onnx"):
        export_model(checkpoint, "onnx", tmp_path / "model.pt")
