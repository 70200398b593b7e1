"""The measured defaults (batch size, loader workers, backend) stay in their bounds and are recorded; the
speed figures carry their spread and the machine's load. Not speed: no timed assertions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cnnlab.bench.config import MeasureOptions
from cnnlab.bench.machine import LoadSnapshot, busy_cores_now, busy_warning, machine_state
from cnnlab.bench.measure import time_repeated
from cnnlab.bench.protocol import RunResult
from cnnlab.errors import UsageError
from cnnlab.options import ModelSource, RuntimeChoice, RuntimeOptions
from cnnlab.runtime import autotune
from cnnlab.runtime.autotune import CANDIDATE_BATCHES, choose_batch_and_workers, choose_workers
from cnnlab.runtime.cores import available_cores
from cnnlab.runtime.threads import passive_openmp
from tests.helpers.images import make_image


class _Prep:
    crop_size = 8

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def load(self, path: str | Path, *, fast_decode: bool = True) -> torch.Tensor:
        self.loaded.append(str(path))
        if "bad" in str(path):
            raise ValueError("unreadable")
        return torch.zeros(3, 8, 8, dtype=torch.uint8)


class _Model:
    """Enough of a Runtime for the choice: a name, a device, preprocessing, and a call that records batches."""

    name = "fake"
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.preprocessing = _Prep()
        self.batches: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(batch))
        return torch.zeros(len(batch), 3)


def _paths(n: int) -> list[Path]:
    return [Path(f"img{i}.jpg") for i in range(n)]


def test_a_cpu_model_decodes_in_its_own_threads_and_a_gpu_model_in_processes() -> None:
    from cnnlab.runtime.cores import default_workers

    # however large decoding's share, a CPU model gets no loader process: its batches are decoded in threads
    for decode_s, model_s in ((0.09, 0.01), (0.001, 0.1)):
        for cores in (2, 8):
            workers, why = choose_workers(decode_s, model_s, cores=cores, device_type="cpu")
            assert workers == 0 and f"{cores} threads" in why and "%" in why
    assert "one core" in choose_workers(0.09, 0.01, cores=1, device_type="cpu")[1]
    assert choose_workers(None, 0.01, cores=2, device_type="cpu")[0] == 0
    # a GPU model leaves the cores to decoding processes
    assert choose_workers(0.09, 0.01, cores=2, device_type="cuda")[0] == default_workers("cuda")


def test_auto_batch_is_a_candidate_no_larger_than_needed_and_recorded() -> None:
    model = _Model()
    choice = choose_batch_and_workers(model, _paths(200), budget_s=5.0)  # type: ignore[arg-type]
    assert choice.batch_auto and choice.workers_auto
    assert choice.batch_size in CANDIDATE_BATCHES["cpu"]
    assert set(choice.model_s_per_image) <= {str(b) for b in CANDIDATE_BATCHES["cpu"]}
    assert str(choice.batch_size) in choice.model_s_per_image
    assert 0 <= choice.workers <= 2 * choice.cores
    assert choice.decoded_images == autotune.DECODE_SAMPLE  # the sample is bounded, not the whole set
    assert len(model.preprocessing.loaded) == autotune.DECODE_SAMPLE
    data = choice.to_dict()
    for key in ("batch_size", "workers", "decode_s_per_image", "model_s_per_image", "data_share", "reason", "seconds"):
        assert key in data
    # few images: no candidate larger than the smallest that holds them all
    small = choose_batch_and_workers(_Model(), _paths(5), budget_s=5.0)  # type: ignore[arg-type]
    assert small.batch_size == CANDIDATE_BATCHES["cpu"][0] and small.workers == 0


class _FlatThenFaster(_Model):
    """Seconds per image: 10 ms at batch 8 and 16 (no gain), 5 ms at 32 (AlexNet's shape on a small CPU)."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(len(batch) * (0.005 if len(batch) >= 32 else 0.010))
        return super().__call__(batch)


def test_a_candidate_that_does_not_gain_does_not_stop_the_search() -> None:
    choice = choose_batch_and_workers(_FlatThenFaster(), _paths(200), budget_s=10.0)  # type: ignore[arg-type]
    assert set(choice.model_s_per_image) == {"8", "16", "32"} and choice.batch_size == 32


def test_given_values_are_kept_and_only_they_are_measured() -> None:
    model = _Model()
    choice = choose_batch_and_workers(model, _paths(200), batch_size=5, workers=3)  # type: ignore[arg-type]
    assert (choice.batch_size, choice.workers) == (5, 3)
    assert not choice.batch_auto and not choice.workers_auto
    assert set(model.batches) == {5}


def test_a_spent_budget_stops_after_the_first_candidate() -> None:
    model = _Model()
    choice = choose_batch_and_workers(model, _paths(200), budget_s=0.0)  # type: ignore[arg-type]
    assert list(choice.model_s_per_image) == [str(CANDIDATE_BATCHES["cpu"][0])]


def test_undecodable_files_are_left_out_of_the_sample(tmp_path: Path) -> None:
    model = _Model()
    paths = [Path(f"bad{i}.jpg") for i in range(3)] + _paths(40)
    choice = choose_batch_and_workers(model, paths, budget_s=5.0)  # type: ignore[arg-type]
    assert choice.decoded_images == autotune.DECODE_SAMPLE


def test_timing_has_median_spread_and_respects_its_bound() -> None:
    rounds: list[int] = []
    timing = time_repeated(lambda: None, torch.device("cpu"), warmup=1, repeats=7,
                           on_round=lambda done, planned, s: rounds.append(done))
    assert timing.repeats == 7 and rounds == list(range(1, 8))
    assert timing.min_s <= timing.q1_s <= timing.median_s <= timing.q3_s <= timing.max_s
    assert timing.calls_per_round > 1  # a call too short to time alone is repeated within a round
    bounded = time_repeated(lambda: None, torch.device("cpu"), warmup=1, repeats=1000, max_seconds=0.0)
    assert bounded.repeats == 3 and bounded.budget_hit  # at least three rounds, then the bound
    assert {"q1_s", "q3_s", "max_s", "iqr_relative", "budget_hit"} <= set(timing.to_dict())


def test_machine_state_says_when_the_machine_was_busy() -> None:
    quiet = LoadSnapshot((0.1, 0.1, 0.1), (1000, 0))
    after = LoadSnapshot((1.5, 0.5, 0.2), (2000, 0))
    state = machine_state(quiet, after, cores_in_use=1)
    assert not state["busy"] and busy_warning(state) is None
    assert state["loadavg_start"] == [0.1, 0.1, 0.1] and state["steal_fraction"] == 0.0
    assert state["cpu_model"] and state["cores"] >= 1
    busy = machine_state(LoadSnapshot((9.0, 9.0, 9.0), (1000, 0)), LoadSnapshot((9.0, 9.0, 9.0), (2000, 500)),
                         cores_in_use=1)
    assert busy["busy"] and "stolen" in busy["busy_reason"] and "not reliable" in str(busy_warning(busy))
    blind = machine_state(LoadSnapshot(None, None), LoadSnapshot(None, None), cores_in_use=2)
    assert blind["steal_fraction"] is None and not blind["busy"]


def test_the_start_is_judged_on_the_cores_busy_now_not_the_lagging_load_average() -> None:
    # a minute's load average left by an install that has finished: the CPUs are idle now, so not busy
    after_install = machine_state(LoadSnapshot((1.9, 1.0, 0.5), (1000, 0), busy_cores=0.05),
                                  LoadSnapshot((1.2, 1.0, 0.5), (2000, 0)), cores_in_use=2)
    assert not after_install["busy"] and after_install["busy_cores_start"] == 0.05
    # another process on a core right now, with a load average that has not caught up yet
    competing = machine_state(LoadSnapshot((0.1, 0.1, 0.1), (1000, 0), busy_cores=1.0),
                              LoadSnapshot((0.3, 0.1, 0.1), (2000, 0)), cores_in_use=max(2, available_cores()))
    assert competing["busy"] and "cores busy when the run started" in competing["busy_reason"]


def test_busy_cores_now_measures_this_machine() -> None:
    measured = busy_cores_now(0.2)
    if measured is None:
        pytest.skip("no /proc/stat")
    assert 0.0 <= measured <= (os.cpu_count() or 1) + 1e-9
    assert busy_cores_now(0) is None


def test_speed_budget_and_auto_choice_travel_to_and_from_the_worker() -> None:
    m = MeasureOptions(batch_size=None, workers=None, speed_budget_s=7.5)
    back = MeasureOptions.from_dict(m.to_dict())
    assert back.speed_budget_s == 7.5 and back.runtime.batch_size is None and back.runtime.workers is None
    with pytest.raises(UsageError):
        MeasureOptions(speed_budget_s=0)
    run = RunResult(model="x", auto={"batch_size": 16, "workers": 1}, speed_s=3.0)
    again = RunResult.from_dict(run.to_dict())
    assert again.auto == {"batch_size": 16, "workers": 1} and again.speed_s == 3.0


def test_passive_openmp_keeps_what_the_user_set() -> None:
    assert passive_openmp({})["OMP_WAIT_POLICY"] == "PASSIVE"
    assert passive_openmp({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_auto_backend_falls_back_to_torch_without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.runtime import loader

    def missing(*args: object, **kwargs: object) -> None:
        raise UsageError("onnxruntime is not installed")

    monkeypatch.setattr(loader, "check_installed", missing)
    chosen, why = loader.choose_backend(ModelSource(name="resnet18"), RuntimeOptions(device="cpu"))
    assert chosen is RuntimeChoice.TORCH and "not installed" in why
    chosen, why = loader.choose_backend(ModelSource(name="resnet18"), RuntimeOptions(device="cpu", channels_last=True))
    assert chosen is RuntimeChoice.TORCH and "PyTorch" in why


def test_auto_backend_falls_back_to_torch_when_the_export_does_not_match(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.errors import ExportMismatchError
    from cnnlab.runtime import loader

    def mismatch(*args: object, **kwargs: object) -> None:
        raise ExportMismatchError("logits differ by 0.5")

    monkeypatch.setattr(loader, "check_installed", lambda *a, **k: None)
    monkeypatch.setattr(loader, "prepare_runtime_file", mismatch)
    chosen, why = loader.choose_backend(ModelSource(name="resnet18"), RuntimeOptions(device="cpu"))
    assert chosen is RuntimeChoice.TORCH and "does not reproduce" in why


def test_real_images_decode_in_the_sample(tmp_path: Path) -> None:
    from cnnlab.imagedata.preprocess import Preprocessing

    paths = [make_image(tmp_path / f"{i}.jpg", size=(64, 48)) for i in range(3)]
    model = _Model()
    model.preprocessing = Preprocessing(resize_size=32, crop_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # type: ignore[assignment]
    choice = choose_batch_and_workers(model, paths, budget_s=5.0)  # type: ignore[arg-type]
    assert choice.decoded_images == 3 and choice.decode_s_per_image is not None and choice.decode_s_per_image > 0
