"""The export index: a cached classifier export is found again without torchvision or onnx, and only while it holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.models.registry import OFFLINE_MODEL

PROBE = """
import json, sys
from cnnlab.options import ModelSource
from cnnlab.runtime.loader import choose_backend, prepare_runtime_file
from cnnlab.options import RuntimeOptions
source = ModelSource(name=sys.argv[1], weights_dir=sys.argv[2] if len(sys.argv) > 2 else None)
choice, why = choose_backend(source, RuntimeOptions())
path = prepare_runtime_file(source, choice)
from cnnlab.runtime.cores import no_gpu_here
from cnnlab.runtime.artifacts import torch_version
version = torch_version()
torch_imported = "torch" in sys.modules
import torch
print(json.dumps({"choice": choice.value, "path": str(path),
                  "imported": sorted(m for m in ("torchvision", "onnx", "onnxscript") if m in sys.modules),
                  "torch": torch_imported, "no_gpu_here": no_gpu_here(), "version": [version, str(torch.__version__)]}))
"""


def probe(cache: Path, weights_dir: Path | None = None, cwd: Path | None = None) -> dict[str, object]:
    env = {**os.environ, "CNNLAB_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", PROBE, OFFLINE_MODEL, *([str(weights_dir)] if weights_dir else [])],
                          capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def resolve_here(cache: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """What :data:`PROBE` prints as ``path``, resolved in this process (where the registry is loaded already)."""
    from cnnlab.options import ModelSource, RuntimeOptions
    from cnnlab.runtime.loader import choose_backend, prepare_runtime_file

    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(cache))
    choice, _ = choose_backend(ModelSource(name=OFFLINE_MODEL), RuntimeOptions())
    return str(prepare_runtime_file(ModelSource(name=OFFLINE_MODEL), choice))


def test_a_cached_export_is_found_again_without_the_registry_and_only_while_it_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.runtime.export_index import INDEX_FILE

    cache = tmp_path / "cache"
    first = probe(cache)
    assert first["choice"] == "onnxruntime" and "torchvision" in first["imported"]  # exported: the slow way
    again = probe(cache)
    assert again["path"] == first["path"] and again["imported"] == []
    if again["no_gpu_here"]:  # auto on a machine with a GPU driver asks torch whether it sees the GPU
        assert again["torch"] is False
    assert again["version"][0] == again["version"][1]  # the key's torch version, read without importing torch
    index_file = cache / "exports" / INDEX_FILE
    index = json.loads(index_file.read_text())
    assert len(index) == 1
    record = next(iter(index.values()))
    # the weights file the name resolved to changed (size or time): the record no longer holds
    record["mtime_ns"] += 1
    index_file.write_text(json.dumps(index))
    healed = probe(cache)
    assert healed["path"] == first["path"] and "torchvision" in healed["imported"]
    assert next(iter(json.loads(index_file.read_text()).values()))["mtime_ns"] == record["mtime_ns"] - 1
    # an index naming a folder outside the cache, or garbage, is not followed (a fresh process would only add
    # the imports the probes above count)
    for bad in ({k: {**v, "folder": "../../elsewhere"} for k, v in json.loads(index_file.read_text()).items()},
                ["not", "a", "dict"]):
        index_file.write_text(json.dumps(bad))
        assert resolve_here(cache, monkeypatch) == first["path"]


@pytest.mark.parametrize("weights", ["random", "file"])
def test_random_or_given_weights_are_never_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      weights: str) -> None:
    from cnnlab.options import ModelSource, WeightsPolicy
    from cnnlab.runtime.loader import remembered_runtime_file

    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    source = (ModelSource(name=OFFLINE_MODEL, policy=WeightsPolicy.RANDOM) if weights == "random"
              else ModelSource(name=OFFLINE_MODEL, weights=tmp_path / "w.pth"))
    assert remembered_runtime_file(source) is None


def test_the_same_weights_in_another_folder_find_their_export_again(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The export is cached by the weights' digest: a copy of the file elsewhere (another weights folder, a moved
    cache) reuses it, and after one slow lookup the index vouches for the new place too; never for weights that
    changed behind an unchanged size and time, nor for an export of other weights that an edited index names."""
    import shutil

    from cnnlab.models.registry import get_spec
    from cnnlab.runtime.artifacts import export_key
    from cnnlab.runtime.export_index import INDEX_FILE, remembered_export

    spec = get_spec(OFFLINE_MODEL)
    assert spec.packaged_weights is not None and spec.weights_file
    cache, first, second = tmp_path / "cache", tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        shutil.copyfile(spec.packaged_weights, folder / spec.weights_file)
    made = probe(cache, first)
    assert "onnx" in made["imported"]  # exported
    moved = probe(cache, second)
    assert moved["path"] == made["path"] and "torchvision" in moved["imported"]  # found by digest: no new export
    assert len([p for p in (cache / "exports").iterdir() if p.is_dir()]) == 1
    again = probe(cache, second)
    assert again["path"] == made["path"] and again["imported"] == []

    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(cache))
    assert str(remembered_export(OFFLINE_MODEL, second, format="onnx")) == made["path"]
    weights = second / spec.weights_file
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # other weights, same size, same modification time
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert remembered_export(OFFLINE_MODEL, second, format="onnx") is None
    shutil.copyfile(first / spec.weights_file, weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert str(remembered_export(OFFLINE_MODEL, second, format="onnx")) == made["path"]
    # an edited index naming the export of other weights (a folder whose name carries another digest)
    export = Path(str(made["path"])).parent
    model = json.loads((export / "model.onnx.json").read_text())["model"]
    other = export.with_name(export.name.rsplit("-", 1)[0] + "-" + export_key(model, "0" * 64, "onnx"))
    shutil.copytree(export, other)
    index_file = cache / "exports" / INDEX_FILE
    index = json.loads(index_file.read_text())
    for record in index.values():
        record["folder"] = other.name
    index_file.write_text(json.dumps(index))
    assert remembered_export(OFFLINE_MODEL, second, format="onnx") is None


def test_a_weights_folder_given_relative_or_absolute_is_one_record(tmp_path: Path) -> None:
    """``--weights-dir w``, ``--weights-dir /abs/w`` and a link to it name one folder: each finds what another remembered
    (the record held the relative paths, so the two rewrote it in turn and every other run went the slow way)."""
    import shutil

    from cnnlab.models.registry import get_spec

    spec = get_spec(OFFLINE_MODEL)
    assert spec.packaged_weights is not None and spec.weights_file
    cache, folder = tmp_path / "cache", tmp_path / "w"
    folder.mkdir()
    shutil.copyfile(spec.packaged_weights, folder / spec.weights_file)
    made = probe(cache, Path("w"), cwd=tmp_path)
    assert "onnx" in made["imported"]  # exported
    (tmp_path / "link").symlink_to(folder)  # found by review: a link to the folder alternated with it
    for weights_dir in (folder, Path("w"), tmp_path / "link", folder, Path("link")):
        again = probe(cache, weights_dir, cwd=tmp_path)
        assert again["path"] == made["path"] and again["imported"] == [], weights_dir
