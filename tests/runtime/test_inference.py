"""The one inference loop: order, skipped files, timings, and the penultimate features it can return."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.models.checkpoint import find_head
from cnnlab.models.load import load_torch
from cnnlab.options import RuntimeOptions
from cnnlab.progress import Progress
from cnnlab.runtime.inference import run_inference
from tests.helpers.images import make_image


class Recorder(Progress):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def start(self, key: str, description: str, *, total: float | None = None, completed: float = 0) -> None:
        self.calls.append(("start", f"{key}:{total}"))

    def update(self, key: str, *, advance: float = 0, **kwargs: object) -> None:
        self.calls.append(("update", f"{key}:{advance}"))

    def finish(self, key: str, message: str | None = None) -> None:
        self.calls.append(("finish", key))


@pytest.fixture(scope="module")
def lite0():  # type: ignore[no-untyped-def]
    return load_torch("efficientnet_lite0", RuntimeOptions(device="cpu"))


def test_order_skips_timings_and_progress(tmp_path: Path, real_photos: dict[str, Path], lite0) -> None:  # type: ignore[no-untyped-def]
    paths = [real_photos["cat"], tmp_path / "bad.jpg", make_image(tmp_path / "a.png", (90, 70)), real_photos["coffee"]]
    paths[1].write_bytes(b"not an image")
    recorder = Recorder()
    batches = list(run_inference(lite0, paths, batch_size=3, workers=0, labels=["cat", "x", "y", "coffee"],
                                 progress=recorder, task="t"))
    assert [i for b in batches for i in b.indices] == [0, 2, 3]
    assert [(Path(s.path).name, s.reason, s.label) for b in batches for s in b.skipped] == [("bad.jpg", "not-an-image", "x")]
    assert all(b.logits.shape == (len(b.indices), 1000) and b.logits.dtype == torch.float32 for b in batches)
    assert all(b.model_s > 0 and b.data_s >= 0 for b in batches)
    assert recorder.calls[0] == ("start", "t:4") and recorder.calls[-1] == ("finish", "t")
    assert sum(float(c[1].split(":")[1]) for c in recorder.calls if c[0] == "update") == 4


def test_features_are_what_the_head_receives(real_photos: dict[str, Path], lite0) -> None:  # type: ignore[no-untyped-def]
    paths = list(real_photos.values())
    (batch,) = list(run_inference(lite0, paths, batch_size=8, workers=0, features=True))
    assert batch.features is not None and batch.features.shape == (3, 1280)
    _, head = find_head(lite0.module)
    with torch.inference_mode():
        again = head(batch.features)
    torch.testing.assert_close(again, batch.logits, rtol=1e-4, atol=1e-4)
    # without the flag no hook stays behind and no features are returned
    (plain,) = list(run_inference(lite0, paths, batch_size=8, workers=0))
    assert plain.features is None and not head._forward_pre_hooks


def test_stopping_early_removes_the_hook_and_leaves_inference_mode_off(real_photos: dict[str, Path],
                                                                        lite0) -> None:  # type: ignore[no-untyped-def]
    _, head = find_head(lite0.module, lite0.spec.num_classes)
    paths = [real_photos["cat"], real_photos["coffee"]]
    batches = run_inference(lite0, paths, batch_size=1, workers=0, features=True)
    first = next(batches)
    assert first.features is not None and len(head._forward_pre_hooks) == 1
    assert not torch.is_inference_mode_enabled()  # the caller's code between batches runs as it normally would
    batches.close()  # the caller stops after one batch
    assert len(head._forward_pre_hooks) == 0
    assert not torch.is_inference_mode_enabled()


def test_decoding_threads_give_what_a_loader_process_gives_and_stop_with_the_loop(
        tmp_path: Path, real_photos: dict[str, Path], lite0) -> None:  # type: ignore[no-untyped-def]
    import threading

    from cnnlab.runtime.cores import available_cores

    if available_cores() < 2:
        pytest.skip("decoding threads are for several cores")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [real_photos["cat"], bad, make_image(tmp_path / "a.png", (90, 70)), real_photos["coffee"],
             real_photos["astronaut"] if "astronaut" in real_photos else real_photos["cat"]]
    threaded = list(run_inference(lite0, paths, batch_size=2, workers=0))
    in_process = list(run_inference(lite0, paths, batch_size=2, workers=1))
    assert [b.indices for b in threaded] == [b.indices for b in in_process] == [[0], [2, 3], [4]]
    assert [[s.reason for s in b.skipped] for b in threaded] == [["not-an-image"], [], []]
    for a, b in zip(threaded, in_process):
        assert torch.equal(a.logits, b.logits)

    def decoding_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("cnnlab-decode")]

    batches = run_inference(lite0, paths, batch_size=2, workers=0)
    next(batches)
    assert decoding_threads()  # the pool lives while the caller iterates
    batches.close()  # the caller stops early: the pool goes with the loop
    assert not decoding_threads()


def test_more_decoding_processes_than_the_cores_can_use_are_capped_with_a_warning(tmp_path: Path) -> None:
    """Issue 27: ``--workers 64`` on 2 cores ran into the memory limit at 6 GB."""
    from cnnlab.imagedata.preprocess import Preprocessing
    from cnnlab.runtime.cores import available_cores
    from cnnlab.runtime.inference import MAX_WORKERS_PER_CORE, make_loader

    pp = Preprocessing(resize_size=32, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    paths = [make_image(tmp_path / f"{i}.png") for i in range(2)]
    most = MAX_WORKERS_PER_CORE * available_cores()
    with pytest.warns(UserWarning, match="would only cost memory"):
        loader = make_loader(paths, pp, workers=most + 50)
    assert loader.num_workers == most
    assert make_loader(paths, pp, workers=1).num_workers == 1
