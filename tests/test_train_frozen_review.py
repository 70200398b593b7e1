"""Review of frozen early layers and smaller training crops (--frozen-stride, --train-size-ratio):
what broke when the change was tried on other architectures, odd values, continued runs and --find-lr."""

from __future__ import annotations

from torch import nn

from cnnlab.finetune.optim import early_layers


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
