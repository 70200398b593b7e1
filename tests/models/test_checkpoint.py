"""Checkpoints from elsewhere (issue 27, untrusted model metadata): a record of the wrong shape is one clear
error naming the file and the field (:mod:`cnnlab.models.metadata`), never a traceback or a model that runs
with nonsense preprocessing; what ``cnnlab train`` writes still loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cnnlab.errors import WeightsIntegrityError
from cnnlab.imagedata.preprocess import Preprocessing
from cnnlab.models.checkpoint import HeadInfo, make_checkpoint, read_checkpoint, save_checkpoint
from cnnlab.models.metadata import MAX_DEPTH

PREPROCESSING = Preprocessing(resize_size=256, crop_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _checkpoint(path: Path, **edits: Any) -> Path:
    """A small well-formed checkpoint (its weights fit no network: only the record is read), then ``edits``."""
    ckpt = make_checkpoint(arch="squeezenet1_1", head=HeadInfo("classifier.1", "conv1x1", 512, 1000, 2),
                           classes=["cat", "dog"], preprocessing=PREPROCESSING,
                           state_dict={"w": torch.zeros(2)}, train_args={"lr": 0.1}, metrics={"val_acc": 0.5})
    for key, value in edits.items():
        if isinstance(value, dict) and isinstance(ckpt.get(key), dict) and key == "preprocessing":
            ckpt[key] = {**ckpt[key], **value}
        else:
            ckpt[key] = value
    return save_checkpoint(ckpt, path)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def _record(digests: Any) -> dict[str, Any]:
    return {"hash": "sha256[:8]", "splits": {"train": {"count": 1, "root": "/d", "digests": digests,
                                                     "paths": torch.zeros(0, dtype=torch.uint8)}}}


def test_a_well_formed_checkpoint_is_read(tmp_path: Path) -> None:
    digests = torch.tensor([1, 2], dtype=torch.int64)
    path = _checkpoint(tmp_path / "best.pt", data_record=_record(digests))
    assert read_checkpoint(path)["classes"] == ["cat", "dog"]


HOSTILE = {
    "head-is-text": ({"head": "linear"}, "'head' must be a mapping"),
    "train-args-is-text": ({"train_args": "lr=0.1"}, "'train_args' must be a mapping"),
    "metrics-is-a-list": ({"metrics": [1, 2]}, "'metrics' must be a mapping"),
    "record-is-text": ({"data_record": "abc"}, "'data_record' must be a mapping"),
    "deep-nesting": ({"train_args": _nested(MAX_DEPTH + 5)}, "'train_args' is nested more than"),
    "digests-are-text": ({"data_record": _record(["zz-not-hex"])}, "'data_record.splits.train.digests'"),
    "digests-are-floats": ({"data_record": _record(torch.zeros(2))}, "int64 tensor"),
    "split-is-text": ({"data_record": {"splits": {"train": "x"}}}, "'data_record.splits.train' must be a mapping"),
    "parent-is-text": ({"data_record": {"splits": {}, "inherited": {"record": "x"}}},
                       "'data_record.inherited.record' must be a mapping"),
    "crop-far-above-resize": ({"preprocessing": {"resize_size": 32, "crop_size": 224}}, "padding"),
    "tiny-std": ({"preprocessing": {"std": [1e-30, 0.2, 0.2]}}, "'preprocessing.std'"),
    "huge-mean": ({"preprocessing": {"mean": [1e30, 0.4, 0.4]}}, "'preprocessing.mean'"),
    "true-as-size": ({"preprocessing": {"crop_size": True}}, "'preprocessing.crop_size'"),
    "text-as-size": ({"preprocessing": {"resize_size": "256"}}, "'preprocessing.resize_size'"),
    "preprocessing-is-text": ({"preprocessing": "imagenet"}, "'preprocessing' must be a mapping"),
    "classes-are-numbers": ({"classes": [1, 2]}, "'classes'"),
    "head-features-true": ({"head": {"in_features": True}}, "'head.in_features'"),
}


@pytest.mark.parametrize("edits,expected", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_records_are_refused_naming_file_and_field(tmp_path: Path, edits: dict[str, Any],
                                                           expected: str) -> None:
    """Before: `True` was read as size 1, a 1e-30 std made every logit inf, a text `head` or `train_args`
    crashed with AttributeError in bench, deep nesting overflowed the stack when results were written."""
    path = _checkpoint(tmp_path / "best.pt", **edits)
    with pytest.raises(WeightsIntegrityError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and expected in message, message
    assert len(message) < 600


def test_a_long_chain_of_continued_runs_is_read(tmp_path: Path) -> None:
    """The nesting limit leaves room for the data records of runs continued from runs (two levels a generation)."""
    record: dict[str, Any] = _record(torch.tensor([1], dtype=torch.int64))
    for _ in range(20):
        record = {**_record(torch.tensor([2], dtype=torch.int64)), "inherited": {"from": "p.pt", "record": record}}
    path = _checkpoint(tmp_path / "best.pt", data_record=record)
    assert read_checkpoint(path)["data_record"]["inherited"]["from"] == "p.pt"


def test_a_published_crop_above_the_resize_is_kept(tmp_path: Path) -> None:
    """timm's VOLO tags crop 1.15 times their resize: checkpoints trained from them must still load."""
    path = _checkpoint(tmp_path / "best.pt", preprocessing={"resize_size": 389, "crop_size": 448})
    assert read_checkpoint(path)["preprocessing"]["crop_size"] == 448
