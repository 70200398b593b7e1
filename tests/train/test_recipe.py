"""finetune's default recipe on small data: batch and phase plans, the probe, the 3-colour acceptance run, warnings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.options import RuntimeOptions
from cnnlab.prediction import predict
from cnnlab.train import TrainConfig, fine_tune, fit_logistic, make_batch_mix, plan_batches, plan_phases
from cnnlab.train.config import MIN_BATCH
from cnnlab.train.session import ema_decay
from tests.helpers.images import make_colours


@pytest.mark.parametrize(
    ("n_train", "epochs", "expected"),
    [
        (57, 3, (8, 7, True)),  # 3-colour set: batch lowered from 32 to 8, only a 1-image remainder dropped
        (100_000, 5, (32, 3125, False)),  # large data: the requested batch, nothing dropped
        (10, 1, (5, 2, False)),  # too few for 24 steps: two equal batches (and a warning, see below)
        (200, 5, (29, 7, False)),  # 200 / 32 would leave 8 images over: 6 batches of 29 and one of 26
    ],
)
def test_batches_are_planned_for_steps_and_never_drop_a_share(n_train: int, epochs: int, expected: tuple) -> None:
    plan = plan_batches(n_train, epochs, batch_size=32, min_steps=24)
    assert (plan.batch_size, plan.steps_per_epoch, plan.drop_last) == expected


def test_batch_plan_properties() -> None:
    for n in range(1, 400, 7):
        for epochs in (1, 2, 3, 5, 10):
            plan = plan_batches(n, epochs, batch_size=32, min_steps=24)
            used = n - 1 if plan.drop_last else n
            batches = plan.steps_per_epoch + plan.drop_last
            assert plan.batch_size <= 32 and (plan.batch_size >= MIN_BATCH or plan.batch_size == n or batches >= 2)
            assert (batches - 1) * plan.batch_size < n <= batches * plan.batch_size  # every image has a batch
            assert used >= n - 1  # at most one image per epoch is left out
            if n >= MIN_BATCH * 24:
                assert plan.steps(epochs) >= 24


def test_phases_of_the_recipe() -> None:
    assert plan_phases(TrainConfig()) == [("probe", 1), ("full", TrainConfig().epochs)]
    assert plan_phases(TrainConfig(freeze=True, epochs=9)) == [("probe", 1)]  # the probe alone
    assert plan_phases(TrainConfig(probe=False, freeze_epochs=1, epochs=2)) == [("head", 1), ("full", 2)]
    assert plan_phases(TrainConfig(epochs=2), probe=False) == [("full", 2)]  # a continued run keeping its head


def test_probe_is_scikit_learns_default_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 16)).astype(np.float32)
    y = rng.integers(0, 3, 90)
    x[np.arange(90), y] += 1.5  # learnable but not separable
    weight, bias = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3)
    reference = LogisticRegression(C=1.0, max_iter=2000, tol=1e-8).fit(x, y)
    assert bias is not None
    assert np.allclose(weight.numpy(), reference.coef_, atol=2e-3)
    assert np.allclose(bias.numpy(), reference.intercept_, atol=2e-3)


def test_mixup_cutmix_and_ema_decay() -> None:
    assert make_batch_mix(3) is None
    mix = make_batch_mix(3, mixup=0.4, cutmix=1.0)
    assert mix is not None
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mixed, soft = mix(images, torch.tensor([0, 1, 2, 0]))
    assert mixed.dtype == torch.float32 and mixed.shape == images.shape and 0 <= mixed.min() <= mixed.max() <= 255
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))
    assert ema_decay(12) == 0.5 and ema_decay(1000) == pytest.approx(0.99) and ema_decay(10**7) == 0.9998
    assert ema_decay(24, 0.9) == 0.9


@pytest.mark.slow
def test_three_colours_with_the_defaults_reach_90_percent_on_unseen_images(tmp_path: Path) -> None:
    """The acceptance run: 24 images per class, 3 epochs, every other setting at its default (the
    reduced image size and in-process decoding only make it fast), scored on images it never saw."""
    data = make_colours(tmp_path / "data", per_class=24)
    unseen = make_colours(tmp_path / "unseen", per_class=20, seed=1)
    (unseen / "red" / "broken.jpg").unlink()
    result = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=3, image_size=64, workers=0))
    assert [h.phase for h in result.history] == ["probe", "full", "full", "full"]
    full = result.history[1:]
    assert all(h.images >= result.n_train - 2 for h in full)  # no share of the images dropped (1 broken file)
    assert not any("optimiser steps" in w for w in result.warnings)  # 3 epochs x 8 steps: enough
    preds = predict([unseen], model=str(result.best_path), runtime=RuntimeOptions(device="cpu", workers=0)).predictions
    accuracy = np.mean([Path(p.path).parent.name == p.top[0].label for p in preds])
    assert len(preds) == 60 and accuracy >= 0.9


def test_too_few_images_for_the_run_are_warned_about(tmp_path: Path) -> None:
    data = make_colours(tmp_path / "tiny", per_class=4)
    result = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "run"), model="squeezenet1_1", random_weights=True,
                                   image_size=32, epochs=1, workers=0, val_fraction=0.0))
    assert any("full phase has only 2 optimiser steps" in w for w in result.warnings), result.warnings
    assert result.resolved is not None and result.resolved.frozen_stride == 1  # random weights: every layer trains


@pytest.mark.parametrize("case", ["a batch shrunk to one image by an unreadable file", "--batch-size 1"])
def test_batchnorm_never_trains_on_a_single_image(case: str, tmp_path: Path) -> None:
    """BatchNorm in training mode cannot normalise one image ("Expected more than 1 value per channel").
    The planner drops a one-image remainder (see above); a batch that an unreadable file shrinks to one
    image is skipped, and --batch-size 1 trains in pairs."""
    from PIL import Image

    root = tmp_path / "data"
    for label, rgb, count in (("a", (200, 30, 30), 2), ("b", (30, 30, 200), 1 if case.startswith("a batch") else 2)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (24, 24), rgb).save(root / label / f"{i}.png")
    batch_size = 2
    if case.startswith("a batch"):
        (root / "b" / "broken.png").write_bytes(b"")  # 4 files: two batches of 2, one of them holds the broken one
    else:
        batch_size = 1
    result = fine_tune(TrainConfig(data=str(root), out=str(tmp_path / "run"), model="efficientnet_lite0",
                                   random_weights=True, bn="train", probe=False, freeze_epochs=0, epochs=2,
                                   batch_size=batch_size, min_phase_steps=1, val_fraction=0.0, image_size=32,
                                   workers=0, patience=None))
    assert [r.phase for r in result.history] == ["full", "full"]
    assert all(r.images >= 2 and math.isfinite(r.train_loss) for r in result.history)


def _names(model: torch.nn.Module, layers: list[torch.nn.Module]) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    return [names[m] for m in layers]


def test_early_layers_end_where_the_maps_first_get_coarser() -> None:
    """The stem and first stage at stride 4 (torchvision's detection backbones freeze the same for
    ResNets); the block that first gets coarser trains whole; 1x1 maps (squeeze-excitation) and
    vectors do not end the early layers; a network that is coarse from its first layer has none."""
    from torch import nn
    from torchvision.models import resnet18

    from cnnlab.train.optim import early_layers

    net = resnet18().train()
    at4 = _names(net, early_layers(net, 64, 4))
    assert at4[:2] == ["conv1", "bn1"] and at4[-1] == "layer1.1.bn2"
    assert not any(n.startswith(("layer2", "layer3", "fc")) for n in at4)
    at8 = _names(net, early_layers(net, 64, 8))
    assert at8[-1] == "layer2.1.bn2" and not any(n.startswith("layer3") for n in at8)
    assert early_layers(net, 64, 1) == [] and all(m.training for m in net.modules())  # modes restored

    class SqueezeExcite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.fc(x.mean((2, 3), keepdim=True)).sigmoid()

    se_net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), SqueezeExcite(), nn.Conv2d(8, 8, 3, 2, 1),
                           nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, 2, 1)), nn.Flatten(), nn.LazyLinear(2))
    se_net(torch.zeros(1, 3, 32, 32))
    assert _names(se_net, early_layers(se_net, 32, 4)) == ["0", "1.fc", "2"]  # "3.0" is in the coarser block
    patches = nn.Sequential(nn.Conv2d(3, 8, 16, 16), nn.Flatten(), nn.LazyLinear(2))  # like a ViT's patch embedding
    patches(torch.zeros(1, 3, 32, 32))
    assert early_layers(patches, 32, 4) == []


def test_frozen_early_layers_keep_their_weights(tmp_path: Path) -> None:
    """Pretrained weights: the stem and first stage (stride 4) keep their weights and get no gradient,
    the later layers train; --frozen-stride 1 trains them all; random weights freeze nothing."""
    from cnnlab.models.load import load_torch

    data = make_colours(tmp_path / "data", per_class=8)
    pretrained = load_torch("efficientnet_lite0", RuntimeOptions(device="cpu")).module.state_dict()

    def trained(**settings: object) -> tuple[dict[str, torch.Tensor], dict[str, object]]:  # the weights, resolved
        config = TrainConfig(data=str(data), out=str(tmp_path / f"run{len(settings)}"), epochs=1, image_size=64,
                             workers=0, min_phase_steps=4, **settings)  # type: ignore[arg-type]
        result = fine_tune(config)
        last = torch.load(result.out / "last.pt", weights_only=False)
        return last["state_dict"], last["resolved"]

    weights, args = trained()
    assert args["frozen_stride"] == 4
    assert torch.equal(weights["_conv_stem.weight"], pretrained["_conv_stem.weight"])
    assert torch.equal(weights["_blocks.2._project_conv.weight"], pretrained["_blocks.2._project_conv.weight"])
    assert not torch.equal(weights["_blocks.3._expand_conv.weight"], pretrained["_blocks.3._expand_conv.weight"])
    weights, args = trained(frozen_stride=1)
    assert args["frozen_stride"] == 1
    assert not torch.equal(weights["_conv_stem.weight"], pretrained["_conv_stem.weight"])


def test_training_crops_are_smaller_than_the_evaluation_crops() -> None:
    from cnnlab.models.load import load_torch
    from cnnlab.train.augment import TrainTransform
    from cnnlab.train.config import train_crop_size

    assert TrainConfig().train_size_ratio == 0.8
    assert train_crop_size(224, 0.8) == 176 and train_crop_size(299, 1.0) == 299 and train_crop_size(160, 0.5) == 128
    assert train_crop_size(64, 0.8) == 64 and train_crop_size(100, 1.5) == 152  # small images are not shrunk
    pp = load_torch("efficientnet_lite0", RuntimeOptions(device="cpu")).preprocessing
    photo = Path(__import__("skimage").__file__).parent / "data" / "chelsea.png"
    assert TrainTransform(pp, crop_size=train_crop_size(pp.crop_size, 0.8)).load(photo).shape == (3, 176, 176)
    with pytest.raises(Exception, match="train_size_ratio"):
        TrainConfig(train_size_ratio=0.01).validate()


def test_runs_stored_before_frozen_layers_and_small_crops_resume_as_they_were() -> None:
    from cnnlab.train.config import resumed_config

    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("frozen_stride", "train_size_ratio")}
    config, _ = resumed_config(TrainConfig(resume=True), old)
    assert (config.frozen_stride, config.train_size_ratio) == (1, 1.0)
    config, _ = resumed_config(TrainConfig(resume=True), TrainConfig().to_dict())
    assert (config.frozen_stride, config.train_size_ratio) == (None, 0.8)
