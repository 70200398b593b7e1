"""The classifier of a timm model, and replacing it: what :func:`cnnlab.models.checkpoint.replace_head` does for timm.

A timm model names its classifier itself (``get_classifier``: ``fc``, ``head.fc``, ``classifier``,
LeViT's ``NormLinear``, RepViT's classifier module) and makes a new one with ``reset_classifier``.
A distilled model (DeiT, LeViT) has two heads, for the class and the distillation token, whose
outputs are averaged; after the reset the second is tied to the first, so one new head serves both
tokens and training the head trains all of it.
"""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError


def timm_classifier(module: nn.Module) -> tuple[str, nn.Module] | None:
    """``(path, classifier)`` of a timm model (one with ``get_classifier``/``reset_classifier``), else ``None``;
    of a distilled model's two heads, the first."""
    get = getattr(module, "get_classifier", None)
    if not callable(get) or not callable(getattr(module, "reset_classifier", None)):
        return None
    head = get()
    if isinstance(head, tuple):  # distilled models: (head, head_dist)
        head = head[0]
    if not isinstance(head, nn.Module):
        return None
    path = next((name for name, layer in module.named_modules() if layer is head), "")
    return (path, head) if path else None


def _last_layer(head: nn.Module) -> nn.Linear | nn.Conv2d | None:
    layers = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1] if layers else None


def outputs_of(head: nn.Module) -> int | None:
    """Outputs of a classifier module: those of its last linear layer or convolution."""
    last = _last_layer(head)
    if last is None:
        return None
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def replace_timm_head(module: nn.Module, num_classes: int, old: nn.Module) -> tuple[str, str, int]:
    """``module.reset_classifier(num_classes)`` on the old head's device and dtype, a distillation head
    tied to the class head; returns the new head's ``(path, kind, in_features)``."""
    reference = next(old.parameters())
    module.reset_classifier(num_classes)  # type: ignore[operator]
    heads = module.get_classifier()  # type: ignore[operator]
    if isinstance(heads, tuple):
        first, second = heads
        second_path = next(name for name, layer in module.named_modules() if layer is second)
        parent_path, _, attr = second_path.rpartition(".")
        setattr(module.get_submodule(parent_path) if parent_path else module, attr, first)
    found = timm_classifier(module)
    last = _last_layer(found[1]) if found is not None else None
    if found is None or last is None:
        raise CnnlabError(f"{type(module).__name__}.reset_classifier left no classifier layer")
    path, head = found
    head.to(device=reference.device, dtype=reference.dtype)
    kind = {nn.Linear: "linear", nn.Conv2d: "conv1x1"}.get(type(head), type(head).__name__.lower())
    in_features = last.in_features if isinstance(last, nn.Linear) else last.in_channels
    return path, kind, in_features
