"""The registry, tested against itself in the style of torchvision's test_extended_models.py."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import get_model_weights

from cnnlab.errors import UnknownModelError
from cnnlab.models.registry import LAB_MODELS, OFFLINE_MODEL, all_specs, get_spec, list_models


def test_every_entry_is_complete() -> None:
    everything = all_specs()
    names = [s.name for s in everything]
    assert len(names) == len(set(names))
    specs = [s for s in everything if s.source != "timm"]  # timm's entries: tests/test_timm_zoo.py
    assert len(specs) > 100  # every torchvision classifier weights entry, plus the offline model
    for spec in specs:
        assert spec.num_classes == 1000 and len(set(spec.categories)) >= 998, spec.name
        assert spec.num_params > 0 and spec.gmacs and spec.gmacs > 0, spec.name
        assert spec.acc1 and 40 < spec.acc1 < 92, spec.name
        pre = spec.preprocessing
        assert pre.crop_size <= pre.resize_size and len(pre.mean) == 3 and len(pre.std) == 3, spec.name
        assert spec.weights_file, spec.name


def test_each_architecture_has_exactly_one_default() -> None:
    defaults: dict[str, int] = {}
    for spec in all_specs():
        defaults[spec.arch] = defaults.get(spec.arch, 0) + spec.is_default
    assert set(defaults.values()) == {1}


def test_lab_models_carry_torchvision_metadata() -> None:
    r1 = get_spec("resnet50.IMAGENET1K_V1")
    assert (r1.acc1, r1.acc5, r1.num_params) == (76.13, 92.862, 25_557_032)
    assert r1.weights_file == "resnet50-0676ba61.pth"
    assert r1.preprocessing.resize_size == 256
    assert get_spec("resnet50").weights_tag == "IMAGENET1K_V2"
    assert get_spec("resnet50").preprocessing.resize_size == 232
    assert get_spec("alexnet").weights_file == "alexnet-owt-7be5be79.pth"
    assert get_spec("googlenet").gmacs == pytest.approx(1.498)
    assert [get_spec(n).arch for n in LAB_MODELS] == ["resnet50", "alexnet", "googlenet"]


@pytest.mark.parametrize("name", ["efficientnet_b3", "vit_b_16", "regnet_y_400mf", "inception_v3"])
def test_preprocessing_computes_what_the_weights_own_transforms_compute(name: str, real_photos) -> None:  # type: ignore[no-untyped-def]
    """Sizes, interpolation and mean/std differ between these weights; each must come out as torchvision's preset."""
    from PIL import Image

    spec = get_spec(name)
    preset = get_model_weights(spec.arch)[spec.weights_tag].transforms()
    img = Image.open(real_photos["coffee"]).convert("RGB")
    ours = spec.preprocessing.normalize(spec.preprocessing.to_uint8(img)[None])[0]
    theirs = preset(img)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert get_spec("efficientnet_b3").preprocessing.crop_size == 300


@pytest.mark.parametrize("name", ["alexnet", "googlenet", "resnet18", "mobilenet_v3_small", OFFLINE_MODEL])
def test_params_recounted_from_built_model(name: str) -> None:
    spec = get_spec(name)
    model = spec.build()
    assert sum(p.numel() for p in model.parameters()) == spec.num_params
    with torch.inference_mode():
        out = model.eval()(torch.zeros(1, 3, spec.preprocessing.crop_size, spec.preprocessing.crop_size))
    assert out.shape == (1, 1000)


def test_wildcards_and_defaults() -> None:
    res = list_models("res*", defaults_only=True)
    assert {"resnet18", "resnet50", "resnext50_32x4d"} <= {s.arch for s in res}
    assert all(s.arch.startswith("res") for s in res)
    all_res50 = list_models("resnet50")
    assert {s.weights_tag for s in all_res50} == {"IMAGENET1K_V1", "IMAGENET1K_V2"}
    assert list_models("no_such_thing*") == []


def test_offline_model_uses_its_own_preprocessing() -> None:
    spec = get_spec(OFFLINE_MODEL)
    assert spec.packaged_weights is not None and spec.packaged_weights.is_file()
    assert spec.preprocessing.interpolation == "bicubic"
    assert spec.preprocessing.mean == pytest.approx((127 / 255,) * 3)
    assert spec.categories == get_spec("resnet50").categories


def test_unknown_names_get_a_helpful_error() -> None:
    with pytest.raises(UnknownModelError, match="Did you mean"):
        get_spec("resnet5000")
    with pytest.raises(UnknownModelError, match="IMAGENET1K_V1"):
        get_spec("resnet50.IMAGENET1K_V9")
