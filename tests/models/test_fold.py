"""Batch-norm folding: same outputs, the module keeps its class, only safe pairs folded; load_torch's defaults."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from cnnlab.errors import UsageError
from cnnlab.models.fold import fold_batchnorm
from cnnlab.models.load import LoadedModel, load_torch
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy
from cnnlab.runtime.loader import load_model


def _with_statistics(module: nn.Module) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters (random init has 0/1)."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)  # type: ignore[union-attr]
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)  # type: ignore[union-attr]
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module.eval()


def test_a_resnet_folds_every_batch_norm_and_computes_the_same_logits() -> None:
    torch.manual_seed(0)
    model = _with_statistics(resnet18(num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == 20  # every BatchNorm2d of ResNet-18 follows its convolution
        after = model(x)
    assert type(model).__name__ == "ResNet" and hasattr(model, "fc")  # changed in place, methods kept
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)


class _BatchNormAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: a BatchNorm2d subclass that also applies an activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


class _Shared(nn.Module):
    """A convolution whose output is read twice, and a batch norm subclass: neither may fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn_act = _BatchNormAct(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y + self.bn_act(self.conv2(y))


def test_only_safe_pairs_fold() -> None:
    model = _with_statistics(_Shared())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == 0
        assert torch.equal(before, model(x))
    assert isinstance(model.bn, nn.BatchNorm2d) and isinstance(model.conv, nn.Conv2d)


class _Pair(nn.Module):
    """A convolution and its batch norm, whose forward may also read their tensors directly."""

    def __init__(self, extra: str = "") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.extra == "conv weight":
            y = y + nn.functional.conv2d(x, self.conv.weight, self.conv.bias, padding=1)
        elif self.extra == "bn buffer":
            y = y * self.bn.running_var.view(1, -1, 1, 1)  # type: ignore[union-attr]
        return y


def _hooked(m: _Pair) -> _Pair:
    m.bn.register_forward_hook(lambda _m, _a, out: out * 2)
    return m


def _weight_norm(m: _Pair) -> _Pair:
    nn.utils.parametrizations.weight_norm(m.conv)
    return m


def _bn_training(m: _Pair) -> _Pair:
    m.bn.train()  # the root stays in eval mode
    return m


@pytest.mark.parametrize("make", [lambda m: _Pair("conv weight"), lambda m: _Pair("bn buffer"), _hooked, _weight_norm,
                                  _bn_training],
                         ids=["conv weight read", "bn buffer read", "hooked bn", "weight norm", "bn training"])
def test_a_pair_whose_tensors_are_read_hooked_or_computed_stays_as_it_is(make: Callable[[_Pair], _Pair]) -> None:
    model = make(_with_statistics(_Pair()))
    if make is not _bn_training:
        _with_statistics(model)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == 0
        after = model(x)
    assert isinstance(model.bn, nn.BatchNorm2d) and isinstance(model.conv, nn.Conv2d)
    if make is not _bn_training:  # a training batch norm updates its statistics at every call
        assert torch.equal(before, after)
    assert not any(name.startswith("_tensor_constant") for name in vars(model))  # the tracer's leftovers removed


def test_a_module_in_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(resnet18(num_classes=2).train())


def test_a_model_loaded_to_run_is_folded_and_load_torch_keeps_a_trainable_module() -> None:
    source = ModelSource(name="resnet18", policy=WeightsPolicy.RANDOM)
    fast = load_model(source, RuntimeOptions(device="cpu"))
    kept = load_torch(source, RuntimeOptions(device="cpu"), progress=False)
    plain = load_torch(source, RuntimeOptions(device="cpu", channels_last=False, fold_bn=False), progress=False)
    assert isinstance(fast, LoadedModel) and fast.channels_last and fast.folded_bn == 20
    assert "bn-folded(20)" in fast.runtime_info()["provider"]
    assert kept.channels_last and kept.folded_bn == 0  # load_torch's module may be trained: batch norms kept
    assert not plain.channels_last and plain.folded_bn == 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in kept.module.modules()) == 20
    assert fast.params == kept.params == plain.params == sum(p.numel() for p in plain.module.parameters())
    batch = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.allclose(fast(batch), plain(batch), atol=1e-3, rtol=1e-3)
    with pytest.raises(UsageError, match="fold_bn"):
        RuntimeOptions(fold_bn="yes")  # type: ignore[arg-type]


def test_the_offline_model_folds_its_same_padding_convolutions_and_keeps_its_predictions(
        real_photos: dict[str, Path]) -> None:
    """efficientnet_lite0's convolutions are a padding subclass of Conv2d: each folded pair is checked on numbers."""
    folded = load_torch("efficientnet_lite0", RuntimeOptions(device="cpu", fold_bn=True), progress=False)
    plain = load_torch("efficientnet_lite0", RuntimeOptions(device="cpu", fold_bn=False), progress=False)
    assert folded.folded_bn == 49 and plain.folded_bn == 0
    batch = torch.stack([folded.preprocessing.load(p) for p in real_photos.values()])
    with torch.inference_mode():
        a, b = folded(batch).softmax(1), plain(batch).softmax(1)
    assert torch.equal(a.argmax(1), b.argmax(1)) and torch.allclose(a, b, atol=1e-4)


def test_timm_batch_norm_with_activation_folds_and_keeps_its_activation() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    model = _with_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), timm_layers.BatchNormAct2d(4, act_layer=nn.ReLU)))
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == 1
        after = model(x)
    assert isinstance(model[1], nn.Sequential) and isinstance(model[1][1], nn.ReLU)
    assert (after >= 0).all() and torch.allclose(before, after, atol=1e-5)
