"""load_model: one public call for registry names, checkpoints and .onnx files; TF32 set in one place."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import cnnlab
from cnnlab.errors import WeightsIntegrityError
from cnnlab.models.load import LoadedModel, load_torch, set_tf32
from cnnlab.options import ModelSource, Precision, RuntimeOptions, WeightsPolicy
from cnnlab.runtime.loader import load_model

SMALL = "squeezenet1_1"


def test_a_registry_name_loads_in_pytorch_with_its_runtime_options() -> None:
    model = load_model(ModelSource(name=SMALL, policy=WeightsPolicy.RANDOM),
                       RuntimeOptions(device="cpu", channels_last=True, threads=1))
    assert isinstance(model, LoadedModel) and model.random_weights and model.channels_last
    assert model.device == torch.device("cpu") and torch.get_num_threads() == 1
    logits = model(torch.zeros(2, 3, 224, 224, dtype=torch.uint8))
    assert logits.shape == (2, 1000) and logits.dtype == torch.float32


def test_random_weights_are_seeded_and_a_name_is_a_model_source() -> None:
    one = load_torch(ModelSource(name=SMALL, policy=WeightsPolicy.RANDOM), RuntimeOptions(device="cpu"))
    two = load_torch(ModelSource(name=SMALL, policy="random"), RuntimeOptions(device="cpu"))
    for x, y in zip(one.module.state_dict().values(), two.module.state_dict().values()):
        assert torch.equal(x, y)
    with pytest.raises(TypeError):
        load_torch(SMALL, device="cpu")  # type: ignore[call-arg]  # the keyword form of 0.2 is gone: one way


def test_an_onnx_file_loads_where_a_name_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22: ``cnnlab.load_model("x.onnx")`` refused the file predict accepted."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from cnnlab.models.export import export_model

    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "small.onnx"
    eager = load_torch(ModelSource(name=SMALL, policy=WeightsPolicy.RANDOM), RuntimeOptions(device="cpu"))
    export_model(eager, "onnx", path)
    model = cnnlab.load_model(str(path))
    assert model.backend.value == "onnxruntime" and model.name == str(path)
    batch = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.allclose(model(batch), eager(batch), atol=1e-3)
    if importlib.util.find_spec("openvino") is not None:
        assert cnnlab.load_model(path, RuntimeOptions(backend="openvino")).backend.value == "openvino"


def test_a_checkpoint_that_is_not_a_regular_file_is_named_as_such(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "best.pt"
    os.mkfifo(fifo)
    with pytest.raises(WeightsIntegrityError, match="not a regular file"):
        load_model(str(fifo))


def test_tf32_is_set_only_for_cuda_and_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tf32(Precision.TF32, torch.device("cpu"))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
        set_tf32(Precision.TF32, torch.device("cuda"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(Precision.FP32, torch.device("cuda"))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
