"""cnnlab review's embeddings in ONNX Runtime: the same features as PyTorch, the same findings, caches kept apart."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli.app import app
from cnnlab.models.load import load_torch
from cnnlab.options import RuntimeOptions
from cnnlab.review import ReviewConfig, review
from cnnlab.review.model import choose_backend, load_review_model
from cnnlab.review.onnx_features import load_feature_model
from cnnlab.runtime.inference import run_inference

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
runner = CliRunner()
OFFLINE = "efficientnet_lite0"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One export cache for the session's tests (exports are reused, as on a user's machine)."""
    root = tmp_path_factory.getbasetemp() / "cnnlab-cache"
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(root))
    return root


def _features(model: object, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    batches = list(run_inference(model, paths, batch_size=2, workers=0, features=True))  # type: ignore[arg-type]
    return (torch.cat([b.features for b in batches if b.features is not None]).numpy(),
            torch.cat([b.logits for b in batches]).numpy())


def test_onnxruntime_features_equal_pytorchs_on_real_photos(real_photos: dict[str, Path], cache: Path) -> None:
    paths = list(real_photos.values())
    exported = load_feature_model(OFFLINE, device="cpu", threads=1)
    info = exported.runtime_info()
    assert (info["backend"], info["threads"], exported.name) == ("onnxruntime", 1, "efficientnet_lite0.IMAGENET1K")
    assert "-features-" in exported.file.parent.name and exported.file.is_relative_to(cache)
    feats, logits = _features(exported, paths)
    ref_feats, ref_logits = _features(load_torch(OFFLINE, RuntimeOptions(device="cpu", channels_last=True)), paths)
    assert feats.shape == ref_feats.shape == (3, 1280) and logits.shape == ref_logits.shape == (3, 1000)
    cosine = (feats * ref_feats).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(ref_feats, axis=1))
    assert cosine.min() >= 0.9999
    assert float(np.abs(logits - ref_logits).max()) < 1e-3
    assert logits.argmax(1).tolist() == ref_logits.argmax(1).tolist()
    again = load_feature_model(OFFLINE, device="cpu", threads=1)  # from the export cache, not exported again
    assert again.file == exported.file


def test_both_backends_find_the_same_problems_and_cache_apart(planted: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(planted, data, ignore=shutil.ignore_patterns(".cnnlab"))
    fast = review(data, ReviewConfig(device="cpu", backend="onnxruntime"))  # a decoding process beside the model
    slow = review(data, ReviewConfig(device="cpu", workers=0, backend="torch"))
    assert fast.settings["runtime"]["backend"] == "onnxruntime" and slow.settings["runtime"]["backend"] == "torch"
    assert (fast.embedded, slow.embedded, slow.from_cache) == (26, 26, 0)  # torch does not reuse onnxruntime's rows
    assert [(f.path, f.issue, f.suggested_label) for f in fast.findings] == \
           [(f.path, f.issue, f.suggested_label) for f in slow.findings]
    assert ("cat/rocket7.jpg", "mislabel") in {(f.path, f.issue.value) for f in fast.findings}
    caches = sorted(p.name for p in (data / ".cnnlab").glob("embeddings-*.npz"))
    assert caches == ["embeddings-efficientnet_lite0.IMAGENET1K.npz",
                      "embeddings-efficientnet_lite0.IMAGENET1K.onnxruntime.npz"]
    again = review(data, ReviewConfig(device="cpu", workers=0, backend="onnxruntime"))
    assert (again.embedded, again.from_cache) == (0, 26)
    assert [f.path for f in again.findings] == [f.path for f in fast.findings]


def test_auto_is_onnxruntime_when_installed_and_torch_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_backend("auto", "cpu") == "onnxruntime"
    assert choose_backend("torch", "cpu") == "torch"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the onnx extra were not installed
    assert choose_backend("auto", "cpu") == "torch"
    model, workers, notes = load_review_model(ReviewConfig(device="cpu"))
    assert model.backend.value == "torch" and workers is None and notes == []
    from cnnlab.errors import UsageError

    with pytest.raises(UsageError, match=r"cnnlab\[onnx\]"):
        load_review_model(ReviewConfig(device="cpu", backend="onnxruntime"))


def test_onnxruntime_decodes_beside_the_model_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    model, workers, _ = load_review_model(ReviewConfig(device="cpu"))
    assert model.backend.value == "onnxruntime" and workers is not None and workers >= 1
    model, workers, _ = load_review_model(ReviewConfig(device="cpu", workers=0, threads=1))
    assert workers == 0 and model.runtime_info()["threads"] == 1


def test_cli_backend_choice(planted: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(planted, data, ignore=shutil.ignore_patterns(".cnnlab"))
    bad = runner.invoke(app, ["review", str(data), "--backend", "openvino"])
    assert bad.exit_code == 2 and "'openvino' is not one of 'auto', 'torch', 'onnxruntime'" in bad.output
    assert not (data / ".cnnlab").exists()
    ok = runner.invoke(app, ["review", str(data), "--backend", "onnxruntime", "--device", "cpu", "--workers", "0",
                             "--threads", "1", "-q", "--json"])
    assert ok.exit_code == 0, ok.output
    import json

    payload = json.loads(ok.stdout)
    runtime = payload["review"]["settings"]["runtime"]
    assert (runtime["backend"], runtime["threads"]) == ("onnxruntime", 1)
    assert payload["review"]["settings"]["backend"] == "onnxruntime"


def test_a_later_process_finds_the_export_without_the_model_registry(cache: Path) -> None:
    import os
    import subprocess

    first = load_feature_model(OFFLINE, device="cpu", threads=1)
    code = ("import sys; from cnnlab.review.onnx_features import load_feature_model; "
            f"m = load_feature_model({OFFLINE!r}, device='cpu', threads=1); "
            "print(m.file, [k for k in ('torchvision', 'onnxscript') if k in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CNNLAB_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(first.file), "[]"]


def test_new_weights_in_the_search_path_make_a_new_export(tmp_path: Path) -> None:
    from cnnlab.models.registry import get_spec
    from cnnlab.models.weights import torch_load_plain

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    packaged = load_feature_model(OFFLINE, weights_dir=weights_dir, device="cpu", threads=1)
    spec = get_spec(OFFLINE)
    state = torch_load_plain(packaged.weights_path)
    state["_fc.bias"] = state["_fc.bias"] + 1.0  # other weights, found first now
    torch.save(state, weights_dir / str(spec.weights_file))
    changed = load_feature_model(OFFLINE, weights_dir=weights_dir, device="cpu", threads=1)
    assert changed.file != packaged.file and changed.weights_path == weights_dir / str(spec.weights_file)
    black = torch.zeros(1, 3, 224, 224, dtype=torch.uint8)
    assert float((changed(black) - packaged(black)).mean()) == pytest.approx(1.0, abs=1e-3)


def test_an_edited_index_naming_another_export_is_not_followed(cache: Path) -> None:
    import json

    from cnnlab.runtime.export_index import INDEX_FILE

    real = load_feature_model(OFFLINE, device="cpu", threads=1)
    other = load_feature_model(OFFLINE, random_weights=True, device="cpu", threads=1)  # a whole export, other weights
    assert other.file != real.file
    index_file = cache / "exports" / INDEX_FILE
    index = json.loads(index_file.read_text())
    ours = [k for k, record in index.items() if record["folder"] == real.file.parent.name]
    for key in ours:
        index[key]["folder"] = other.file.parent.name
    index_file.write_text(json.dumps(index))
    again = load_feature_model(OFFLINE, device="cpu", threads=1)
    assert again.file == real.file and not again.random_weights
    healed = json.loads(index_file.read_text())
    assert ours and any(healed[k]["folder"] == real.file.parent.name for k in ours)


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_damaged_weights_are_exported_again(cache: Path, damage: str) -> None:
    first = load_feature_model(OFFLINE, device="cpu", threads=1)
    black = torch.zeros(1, 3, 224, 224, dtype=torch.uint8)
    want = first(black)
    data = first.file.with_name(first.file.name + ".data")  # the weights, when written outside model.onnx
    if not data.exists():
        data = first.file  # else they are most of its bytes
    size = data.stat().st_size
    if damage == "truncated":
        with data.open("r+b") as f:
            f.truncate(size // 2)
    else:  # the same size, so the cache's size record cannot tell
        with data.open("r+b") as f:
            f.seek(size // 2)
            f.write(bytes(size // 8))  # an eighth of the weights: far beyond the export tolerance
    again = load_feature_model(OFFLINE, device="cpu", threads=1)
    assert data.stat().st_size == size
    assert torch.allclose(again(black), want, atol=1e-4)
