"""A model whose outputs are not finite (NaN or infinite weights) is an error for that model (issue 27): predict
fails clearly instead of printing ``nan`` with exit 0, bench reports an error row instead of crashing in scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnlab.bench import BenchConfig, MeasureOptions, bench_models
from cnnlab.cli import app
from cnnlab.models.checkpoint import make_checkpoint, replace_head, save_checkpoint
from cnnlab.models.registry import get_spec
from cnnlab.runtime.finite import NonFiniteOutputError, require_finite
from tests.helpers.images import make_shades

runner = CliRunner()


@pytest.mark.parametrize("kind", ["tensor", "array"])
def test_finite_logits_pass_and_others_name_the_images(kind: str) -> None:
    """The same check and message for tensors and for the arrays of the loop without PyTorch."""
    def as_kind(t: torch.Tensor) -> torch.Tensor | np.ndarray:
        return t if kind == "tensor" else t.numpy()

    require_finite(as_kind(torch.zeros(2, 3)), "m")
    require_finite(as_kind(torch.zeros(0, 3)), "m")
    logits = torch.zeros(3, 2)
    logits[1, 0] = float("nan")
    with pytest.raises(NonFiniteOutputError, match=r"m gives NaN outputs for 1 of 3 images .*b\.png"):
        require_finite(as_kind(logits), "m", ["a.png", "b.png", "c.png"])
    with pytest.raises(NonFiniteOutputError, match="infinite"):
        require_finite(as_kind(torch.tensor([[float("inf"), 0.0]])), "m")
    assert NonFiniteOutputError("x").exit_code == 3


def _broken_checkpoint(path: Path, value: float) -> Path:
    """A two-class squeezenet checkpoint whose new head holds ``value`` (NaN or inf) in every weight."""
    base = get_spec("squeezenet1_1")
    torch.manual_seed(0)
    module = base.build(None)
    head = replace_head(module, 2)
    state = module.state_dict()
    state[f"{head.path}.weight"] = torch.full_like(state[f"{head.path}.weight"], value)
    ckpt = make_checkpoint(arch=base.name, head=head, classes=["dark", "light"], preprocessing=base.preprocessing,
                           state_dict=state, train_args={}, metrics={})
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shades(tmp_path_factory.mktemp("shades") / "data")


def test_predict_with_nan_weights_is_an_error_not_nan(tmp_path: Path, data: Path) -> None:
    """Before: exit 0 and `nan` probabilities."""
    ckpt = _broken_checkpoint(tmp_path / "nan.pt", float("nan"))
    result = runner.invoke(app, ["predict", str(data / "dark" / "0.png"), "-m", str(ckpt), "-q", "--workers", "0"])
    assert result.exit_code == 3, result.output
    assert "NaN outputs" in result.stderr and "nan" not in result.stdout.lower()


def test_bench_reports_a_model_with_infinite_outputs_as_an_error_row(tmp_path: Path, data: Path) -> None:
    """Before: the scoring of NaN probabilities crashed the whole run (or scored garbage)."""
    ckpt = _broken_checkpoint(tmp_path / "inf.pt", float("inf"))
    measure = MeasureOptions(latency_repeats=1, throughput_repeats=1, warmup=0, batch_size=4, workers=0)
    result = bench_models(BenchConfig(data=data, models=[str(ckpt)], measure=measure, isolate=False))
    (model,) = result.models
    assert not model.ok and model.accuracy is None
    assert "outputs" in str(model.run.error) and "broken" in str(model.run.error)


def test_bench_cli_exits_4_for_a_model_with_nan_outputs(tmp_path: Path, data: Path) -> None:
    ckpt = _broken_checkpoint(tmp_path / "nan.pt", float("nan"))
    result = runner.invoke(app, ["bench", str(data), "-m", str(ckpt), "-o", str(tmp_path / "out"), "--in-process",
                                 "--repeats", "3", "--workers", "0", "-q"])
    assert result.exit_code == 4, result.output
    assert "NaN outputs" in result.stderr
