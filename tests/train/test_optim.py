"""Review of frozen early layers and smaller training crops (--frozen-stride, --train-size-ratio):
what broke when the change was tried on other architectures, odd values, continued runs and --find-lr."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.progress import Progress
from cnnlab.train import TrainConfig, fine_tune
from cnnlab.train.optim import early_layers
from tests.helpers.images import make_two_colours

runner = CliRunner()


def _frozen_parameters(model: nn.Module, layers: list[nn.Module]) -> set[str]:
    ids = {id(p) for m in layers for p in m.parameters(recurse=False)}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_sublayers_used_without_being_called_freeze_with_their_layer() -> None:
    """torchvision's Swin attention passes ``qkv.weight`` and ``proj.weight`` to a function: their forward
    hooks never fire, so the first stage was frozen except its attention weights (and the backward pass
    still went through the whole stage)."""
    from torchvision.models import swin_t

    net = swin_t().eval()
    frozen = _frozen_parameters(net, early_layers(net, 64, 4))
    stage1 = {n for n, _ in net.named_parameters() if n.startswith(("features.0.", "features.1."))}
    assert "features.1.0.attn.qkv.weight" in stage1
    assert frozen == stage1  # the patch embedding and the first stage, attention included; nothing later


def test_a_frozen_stride_beyond_the_coarsest_maps_keeps_every_layer_but_the_head() -> None:
    """--frozen-stride 16 froze nearly all of a ResNet, 32 (maps never coarser than 1/32) froze nothing:
    the help says the layers before the maps get coarser than 1/N keep their weights."""
    from torchvision.models import resnet18

    net = resnet18().eval()
    at16 = _frozen_parameters(net, early_layers(net, 64, 16))
    everything = _frozen_parameters(net, early_layers(net, 64, 4096, head=net.fc))
    assert at16 < everything
    assert everything == {n for n, _ in net.named_parameters() if not n.startswith("fc.")}
    assert _frozen_parameters(net, early_layers(net, 64, 4096)) == everything  # the head: the last layer to run


def test_a_network_that_cannot_train_on_smaller_crops_trains_on_the_evaluation_size() -> None:
    """A torchvision ViT takes only the size it was built for: with the default 0.8 training crops every
    SGD step failed ("Wrong image height"), so vit_b_16 could not be fine-tuned with the defaults."""
    from torchvision.models import VisionTransformer

    from cnnlab.models.load import LoadedModel
    from cnnlab.models.registry import get_spec
    from cnnlab.train.start import resolve_train_size

    vit = VisionTransformer(image_size=160, patch_size=32, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=16)
    spec = get_spec("vit_b_16")
    spec = dataclasses.replace(spec, preprocessing=dataclasses.replace(spec.preprocessing, crop_size=160, resize_size=182))
    model = LoadedModel(spec=spec, module=vit, device=torch.device("cpu"))
    vit.eval()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    size, note = resolve_train_size(model, TrainConfig())
    assert size == 160 and note is not None and "cannot train on 128 px" in note
    assert not vit.training and all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert resolve_train_size(model, TrainConfig(train_size_ratio=1.0)) == (160, None)


def test_crops_too_small_for_the_network_fall_back_or_are_refused(tmp_path: Path) -> None:
    """efficientnet_lite0's 5x5 convolutions (static same padding) need 32 px: --image-size 32, the size the
    tests and examples use, would train on 24 px crops and crash after the probe ("Kernel size can't be
    greater than actual input size"); crops are not shrunk below 128 px, so it trains on 32 px. AlexNet's pooling needs about 63 px: at --image-size 32 not
    even the evaluation crop passes, and the run died in the probe with a traceback; it is refused (exit 2)."""
    data = make_two_colours(tmp_path / "data", per_class=6)
    result = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "a"), model="efficientnet_lite0", image_size=32,
                                   epochs=1, workers=0, batch_size=4, min_phase_steps=2))
    assert result.resolved.train_size == 32 and len(result.history) == 2  # not shrunk below 128 px
    assert not any("cannot train" in w for w in result.warnings), result.warnings
    refused = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "b"), "--model", "alexnet",
                                  "--random-weights", "--image-size", "32", "--workers", "0", "--epochs", "1"])
    assert refused.exit_code == 2, refused.output
    assert "cannot train on 32 px inputs" in refused.stderr and not (tmp_path / "b" / "last.pt").exists()


def test_resume_of_a_run_continued_from_random_weights_keeps_its_layer_settings(tmp_path: Path) -> None:
    """A run started from a checkpoint of random weights resolves BatchNorm 'train' and frozen stride 1, but
    its train_args say random_weights False: resume re-resolved them as for pretrained weights (BatchNorm
    frozen, the early layers frozen), so the optimiser state no longer fitted its groups."""
    data = make_two_colours(tmp_path / "data", per_class=8)
    small = {"image_size": 32, "workers": 0, "batch_size": 8, "min_phase_steps": 2}
    parent = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "parent"), random_weights=True, epochs=1, **small))
    child = {"data": str(data), "model": str(parent.out / "best.pt"), "epochs": 2, **small}
    whole = fine_tune(TrainConfig(out=str(tmp_path / "whole"), **child))
    assert (whole.resolved.bn, whole.resolved.frozen_stride) == ("train", 1)

    class Interrupt(Exception):
        pass

    class StopAfterFirstEpoch(Progress):
        def finish(self, key: str, message: str | None = None) -> None:
            if key == "epoch":
                raise Interrupt

    out = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        fine_tune(TrainConfig(out=str(out), **child), progress=StopAfterFirstEpoch())
    resumed = fine_tune(TrainConfig(out=str(out), resume=True, workers=0))
    assert (resumed.bn, resumed.resolved.frozen_stride) == ("train", 1)
    a = torch.load(whole.out / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_find_lr_does_not_call_a_loss_that_ended_non_finite_flat() -> None:
    """The warning "the loss never rose" looked at the last finite loss: a test whose last rate broke
    training outright (loss inf or nan) was reported as having found nothing."""
    from cnnlab.train.lr_find import never_rose

    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    assert never_rose(lrs, [0.5, 0.5, 0.5, 0.5], 3)
    assert not never_rose(lrs, [0.5, 0.5, 0.5, math.inf], 3)
    assert not never_rose(lrs, [0.5, 0.5, 0.5, math.nan], 3)
    assert not never_rose(lrs, [0.5, 0.5, 0.5, 5.0], 3)  # rose at the last rate


def test_bench_train_variant_with_zero_epochs_runs_zero_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cnnlab+epochs=0`` (the probe alone) ran --epochs epochs: 0 was taken for "not given"."""
    import importlib.util

    path = Path(__file__).parents[2] / "benchmarks" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train_under_test", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls: list[tuple[int, dict[str, object]]] = []
    monkeypatch.setattr(bench, "run_cnnlab", lambda root, work, epochs, **settings: calls.append((epochs, settings)) or 0.0)
    bench.cnnlab_variant("cnnlab+epochs=0+frozen_stride=2")(Path("."), Path("."), 3)
    bench.cnnlab_variant("cnnlab+frozen_stride=1")(Path("."), Path("."), 3)
    assert calls == [(0, {"frozen_stride": 2}), (3, {"frozen_stride": 1})]
