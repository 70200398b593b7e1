"""The loop without PyTorch: an ONNX Runtime model on the CPU gives what the loop with loader workers gives, and
``predict`` on it never imports torch (the seconds a small run spent importing it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnlab.models.registry import OFFLINE_MODEL
from cnnlab.options import RuntimeOptions
from cnnlab.runtime.base import ExportedModel
from cnnlab.runtime.host_loop import run_host_inference
from cnnlab.runtime.inference import run_inference
from cnnlab.runtime.loader import load_model
from tests.helpers.images import make_image


@pytest.fixture(scope="module")
def lite0_ort() -> ExportedModel:
    model = load_model(OFFLINE_MODEL, RuntimeOptions(device="cpu", backend="onnxruntime"))
    assert isinstance(model, ExportedModel)
    return model


def _files(folder: Path, real_photos: dict[str, Path]) -> list[Path]:
    """Three real photos (linked into ``folder``), a broken file and a small made-up image."""
    linked = {}
    for name in ("coffee", "cat", "grace_hopper"):
        linked[name] = folder / f"{name}{real_photos[name].suffix}"
        linked[name].symlink_to(real_photos[name])
    broken = folder / "broken.jpg"
    broken.write_bytes(b"<html>not a photo</html>")
    return [linked["coffee"], broken, linked["cat"], make_image(folder / "small.png", (40, 30)), linked["grace_hopper"]]


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_same_batches_logits_and_skipped_files_as_the_loop_with_workers(
        tmp_path: Path, real_photos: dict[str, Path], lite0_ort: ExportedModel, threads: int) -> None:
    """Decoding in this thread or in threads ahead of the model: the same batches, in order."""
    files = _files(tmp_path, real_photos)
    host = list(run_host_inference(lite0_ort, files, batch_size=2, workers=threads))
    loop = list(run_inference(lite0_ort, files, batch_size=2, workers=0))
    assert [b.indices for b in host] == [b.indices for b in loop] == [[0], [2, 3], [4]]
    assert [[(s.path, s.reason) for s in b.skipped] for b in host] == \
        [[(s.path, s.reason) for s in b.skipped] for b in loop] == [[(str(files[1]), "not-an-image")], [], []]
    for h, t in zip(host, loop):
        assert isinstance(h.logits, np.ndarray) and h.logits.dtype == np.float32
        np.testing.assert_array_equal(h.logits, t.logits.numpy())  # same pixels, same graph: same numbers
        assert h.data_s > 0 and h.model_s > 0


def test_a_batch_of_only_broken_files_gives_no_rows(tmp_path: Path, lite0_ort: ExportedModel) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (batch,) = run_host_inference(lite0_ort, [tmp_path / "a.jpg"], batch_size=4)
    assert batch.indices == [] and batch.logits.shape == (0, 1000) and batch.skipped[0].reason == "empty"


PREDICT = """
import json, sys
import cnnlab
from cnnlab.options import RuntimeOptions
from cnnlab.runtime.cores import no_gpu_here
runtime = None if sys.argv[1] == "auto" else RuntimeOptions(device="cpu", backend="onnxruntime")
result = cnnlab.predict(sys.argv[2:], model="efficientnet_lite0", topk=3, runtime=runtime)
print(json.dumps({"result": result.to_dict(), "torch": "torch" in sys.modules, "no_gpu_here": no_gpu_here()}))
"""


@pytest.mark.parametrize(("runtime", "copies"), [("auto", 1), ("onnxruntime", 1), ("auto", 14)])
def test_predict_on_onnx_runtime_imports_no_torch_and_answers_as_pytorch(
        tmp_path: Path, real_photos: dict[str, Path], lite0_ort: ExportedModel, runtime: str, copies: int) -> None:
    """A handful of files, and 70 (more than predict measures a PyTorch model's batch size and workers on)."""
    import cnnlab

    files = []
    for copy in range(copies):
        folder = tmp_path / f"copy{copy}"
        folder.mkdir()
        files += [str(f) for f in _files(folder, real_photos)]
    # the export is cached and remembered (lite0_ort made it) in this test session's cache
    done = subprocess.run([sys.executable, "-c", PREDICT, runtime, *files], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    result = out["result"]
    assert result["runtime"]["backend"] == "onnxruntime" and "auto" not in result["runtime"]
    assert result["runtime"]["host_loop"]["batch_size"] == 16 and result["runtime"]["host_loop"]["decode_threads"] >= 1
    if runtime == "onnxruntime" or out["no_gpu_here"]:  # auto on a machine with a GPU driver asks torch
        assert out["torch"] is False
    eager = cnnlab.predict(files, model="efficientnet_lite0", topk=3, runtime=RuntimeOptions(device="cpu"))
    assert eager.runtime["backend"] == "torch"
    assert [p["path"] for p in result["predictions"]] == [p.path for p in eager.predictions]
    assert [s["reason"] for s in result["skipped"]] == [s.reason for s in eager.skipped] == ["not-an-image"] * copies
    for ours, theirs in zip(result["predictions"], eager.predictions):
        assert [c["index"] for c in ours["top"]][:1] == [theirs.top[0].index]
        assert ours["top"][0]["probability"] == pytest.approx(theirs.top[0].probability, abs=2e-3)


CHECKPOINT_PREDICT = """
import json, sys
import cnnlab
result = cnnlab.predict(sys.argv[2:], model=sys.argv[1], topk=1, unknown_threshold="auto")
print(json.dumps({"result": result.to_dict(), "torch": "torch" in sys.modules}))
"""


def test_a_checkpoints_cached_export_runs_without_torch_with_its_leakage_guard_and_threshold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cnnlab predict -m runs/x/best.pt``: once its export is cached, the checkpoint is never loaded (8 s of a
    small run on 2 cores went to importing torch and reading it); what predict needs of it, the record of the images
    it was trained on and its calibrated threshold, is kept with the export."""
    import shutil

    from typer.testing import CliRunner

    import cnnlab
    from cnnlab.cli import app
    from cnnlab.runtime.artifacts import CHECKPOINT_FACTS
    from cnnlab.runtime.cores import no_gpu_here
    from tests.helpers.images import make_two_colours
    from tests.helpers.runs import SMALL_TRAIN_ARGS

    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    data = make_two_colours(tmp_path / "data", per_class=10)
    trained = CliRunner().invoke(app, ["train", str(data), "-o", str(tmp_path / "run"), "--freeze", *SMALL_TRAIN_ARGS])
    assert trained.exit_code == 0, trained.output
    best = str(tmp_path / "run" / "best.pt")
    files = [*sorted((data / "red").iterdir())[:3], *sorted((data / "blue").iterdir())[:3]]
    new = tmp_path / "new.png"
    shutil.copy(files[0], new)
    with new.open("ab") as fh:
        fh.write(b"\0")  # the same picture, other bytes: not a file it was trained on
    files.append(new)
    eager = cnnlab.predict(files, model=best, topk=1, unknown_threshold="auto", runtime=cnnlab.RuntimeOptions())
    assert eager.runtime["backend"] == "torch" and eager.leakage is not None and eager.leakage["overlapping"] >= 1
    first = cnnlab.predict(files, model=best, topk=1, unknown_threshold="auto")  # makes the export
    assert first.runtime["backend"] == "onnxruntime"
    (facts,) = (tmp_path / "cache" / "exports").glob(f"*/{CHECKPOINT_FACTS}")

    def in_fresh_interpreter() -> dict:
        done = subprocess.run([sys.executable, "-c", CHECKPOINT_PREDICT, best, *map(str, files)], capture_output=True,
                              text=True, env=dict(os.environ), timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.splitlines()[-1])

    for run in (first.to_dict(), in_fresh_interpreter()):
        result = run.get("result", run)
        assert result["leakage"] == eager.leakage | {"source": best}
        assert result["unknown_threshold"] == eager.unknown_threshold is not None
        assert [p["top"][0]["index"] for p in result["predictions"]] == [p.top[0].index for p in eager.predictions]
        assert [p["unknown"] for p in result["predictions"]] == [p.unknown for p in eager.predictions]
    if no_gpu_here():
        assert in_fresh_interpreter()["torch"] is False

    def never(*args: object) -> None:
        raise AssertionError("the checkpoint was loaded")

    with monkeypatch.context() as patched:  # int8 is cached in a folder of its own: the facts are its fp32 export's
        patched.setattr("cnnlab.models.checkpoint.read_checkpoint", never)
        int8 = cnnlab.predict(files, model=best, topk=1, unknown_threshold="auto",
                              runtime=cnnlab.RuntimeOptions(backend="onnxruntime-int8"))
    assert int8.leakage == eager.leakage and int8.unknown_threshold == eager.unknown_threshold
    facts.write_text("{not json")  # damaged: the checkpoint is read instead, with the same answers
    damaged = in_fresh_interpreter()
    assert damaged["result"]["leakage"] == eager.leakage | {"source": best} and damaged["torch"] is True
    assert damaged["result"]["unknown_threshold"] == eager.unknown_threshold


def test_a_hand_made_checkpoint_whose_record_lacks_paths_still_exports_and_is_read_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by review: the checkpoint format allows a record without paths; its export failed on them."""
    import torch

    import cnnlab
    from cnnlab.runtime.artifacts import CHECKPOINT_FACTS
    from cnnlab.train import TrainConfig, fine_tune
    from tests.helpers.images import make_two_colours

    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    data = make_two_colours(tmp_path / "data", per_class=8)
    run = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "run"), model="squeezenet1_1", random_weights=True,
                                image_size=32, workers=0, freeze=True))
    ckpt = torch.load(run.best_path, weights_only=True)
    for split in ckpt["data_record"]["splits"].values():
        del split["paths"]
    made = tmp_path / "made.pt"
    torch.save(ckpt, made)
    files = sorted((data / "red").iterdir())[:4]
    result = cnnlab.predict(files, model=str(made), topk=1)
    assert result.runtime["backend"] == "onnxruntime", result.runtime.get("backend_choice")
    assert not list((tmp_path / "cache" / "exports").glob(f"*/{CHECKPOINT_FACTS}"))
    eager = cnnlab.predict(files, model=str(made), topk=1, runtime=cnnlab.RuntimeOptions())
    assert result.leakage == eager.leakage and result.leakage is not None and result.leakage["overlapping"] >= 1
