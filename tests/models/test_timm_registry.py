"""timm's ImageNet-1k classifiers in the registry: the data file against the installed timm, weights
through files, folders, the Hugging Face cache (offline) and a fake hub on 127.0.0.1, and new heads."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import WeightsIntegrityError, WeightsNotFoundError
from cnnlab.models.checkpoint import find_head, replace_head
from cnnlab.models.load import load_torch
from cnnlab.models.registry import all_specs, get_spec, list_models
from cnnlab.models.weights import fetch_weights, locate_weights, resolve_weights
from cnnlab.options import ModelSource, RuntimeOptions

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")
runner = CliRunner()
SMALL = "timm/resnet18.a1_in1k"  # 11.7 M parameters, 224 px


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch and Hugging Face caches; no weights folder, mirror or hub endpoint from the environment."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    for name in ("CNNLAB_WEIGHTS_DIR", "CNNLAB_WEIGHTS_MIRROR", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "hf_cache"


def _timm_specs() -> list:  # type: ignore[type-arg]
    return [s for s in all_specs() if s.source == "timm"]


def test_every_timm_entry_is_an_imagenet_classifier_with_its_metadata() -> None:
    specs = _timm_specs()
    assert len(specs) > 1200  # 1,326 ImageNet-1k tags of the 1,832 in timm 1.0.31
    assert {s.categories for s in specs} == {get_spec("resnet50").categories}
    defaults: dict[str, int] = {}
    for s in specs:
        assert s.name == f"{s.arch}.{s.weights_tag}" and s.name.startswith("timm/"), s.name
        assert s.num_params > 0 and s.license, s.name
        assert s.hf_hub_id or (s.weights_url and s.weights_url.endswith(".pth")), s.name
        assert s.acc1 is None or 40 < s.acc1 < 92, s.name
        defaults[s.arch] = defaults.get(s.arch, 0) + s.is_default
    assert set(defaults.values()) == {1}
    published = sum(s.acc1 is not None for s in specs)
    assert published > 1200  # timm publishes ImageNet figures for nearly every tag
    tiny = get_spec("timm/convnext_tiny.fb_in1k")
    assert (tiny.acc1, tiny.acc5, tiny.num_params, tiny.license) == (82.066, 95.854, 28_589_128, "apache-2.0")
    assert tiny.preprocessing.resize_size == 256 and tiny.preprocessing.crop_size == 224


@pytest.mark.parametrize("name", ["timm/convnext_tiny.fb_in1k", "timm/convnext_tiny.fb_in22k_ft_in1k_384",
                                  "timm/vit_small_patch16_224.augreg_in21k_ft_in1k", "timm/resnet50.a1_in1k",
                                  "timm/efficientnet_b0.ra_in1k", "timm/deit_tiny_distilled_patch16_224.fb_in1k"])
def test_preprocessing_computes_what_timms_eval_transform_computes(name: str, real_photos: dict[str, Path]) -> None:
    """Centre and squash crops, crop_pct, interpolation and mean/std as timm's own transform does them."""
    from PIL import Image

    spec = get_spec(name)
    config = timm.data.resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(name[5:]).to_dict())
    transform = timm.data.create_transform(**config)
    img = Image.open(real_photos["grace_hopper"]).convert("RGB")
    pp = spec.preprocessing
    ours = pp.normalize(pp.to_uint8(img)[None])[0]
    theirs = transform(img)
    assert ours.shape == theirs.shape
    # ours rounds to uint8 before normalising; timm normalises the resized floats: 1/255 / std apart at most
    assert float((ours - theirs).abs().max()) <= 1.01 / 255 / min(pp.std)


def test_models_lists_timm_with_wildcards() -> None:
    assert {s.arch for s in list_models("timm/convnext_t*", defaults_only=True)} >= {"timm/convnext_tiny"}
    assert not any(s.source == "timm" for s in list_models("resnet*"))
    result = runner.invoke(app, ["models", "timm/convnext_tiny*", "--all", "--wide"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "timm/convnext_tiny.fb_in1k" in result.output and "82.07" in result.output
    assert "apache-2.0" in result.output


def _save_random(name: str, path: Path) -> dict[str, torch.Tensor]:
    state = {k: v.contiguous() for k, v in get_spec(name).build().state_dict().items()}
    safetensors_torch.save_file(state, str(path))
    return state


def test_local_weights_file_and_folder(tmp_path: Path) -> None:
    state = _save_random(SMALL, tmp_path / "mine.safetensors")
    loaded = load_torch(ModelSource(name=SMALL, weights=tmp_path / "mine.safetensors"), RuntimeOptions(device="cpu"))
    assert torch.equal(loaded.module.state_dict()["fc.weight"], state["fc.weight"])
    folder = tmp_path / "weights"
    folder.mkdir()
    (tmp_path / "mine.safetensors").rename(folder / "resnet18.a1_in1k.safetensors")
    assert locate_weights(get_spec(SMALL), folder).found == folder / "resnet18.a1_in1k.safetensors"
    torch.save(state, tmp_path / "mine.pth")  # a PyTorch file works too (read with weights_only)
    assert torch.equal(load_torch(ModelSource(name=SMALL, weights=tmp_path / "mine.pth"), RuntimeOptions(device="cpu")).module.state_dict()["fc.weight"],
                       state["fc.weight"])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsIntegrityError, match="not safetensors"):
        load_torch(ModelSource(name=SMALL, weights=tmp_path / "bad.safetensors"), RuntimeOptions(device="cpu"))


def _populate_hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """The layout huggingface_hub writes: refs/main names a snapshot that holds the file."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    target = snapshot / "model.safetensors"
    target.write_bytes(source.read_bytes())
    return target


def test_hub_cache_in_offline_mode(tmp_path: Path, isolated_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_spec(SMALL)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_weights(spec)
    _save_random(SMALL, tmp_path / "w.safetensors")
    cached = _populate_hub_cache(isolated_caches, "timm/resnet18.a1_in1k", tmp_path / "w.safetensors")
    assert resolve_weights(spec) == cached
    assert load_torch(SMALL, RuntimeOptions(device="cpu")).weights_path == cached
    result = runner.invoke(app, ["weights", "where", SMALL])
    assert result.exit_code == 0 and str(cached) in result.output


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers huggingface_hub's HEAD and GET for ``/<repo>/resolve/main/<file>`` from a dict of files."""

    files: dict[str, bytes] = {}

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        data = self.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "89abcdef0123456789abcdef0123456789abcdef")
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bytes]]:
    files: dict[str, bytes] = {}
    handler = type("Handler", (_FakeHub,), {"files": files})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield files
    finally:
        server.shutdown()
        server.server_close()


def test_download_through_huggingface_hub_from_a_local_server(fake_hub: dict[str, bytes], tmp_path: Path,
                                                               isolated_caches: Path) -> None:
    state = _save_random(SMALL, tmp_path / "w.safetensors")
    fake_hub["/timm/resnet18.a1_in1k/resolve/main/model.safetensors"] = (tmp_path / "w.safetensors").read_bytes()
    spec = get_spec(SMALL)
    assert locate_weights(spec).url.startswith("http://127.0.0.1:")  # type: ignore[union-attr]
    path = resolve_weights(spec)
    assert path.is_relative_to(isolated_caches) and path.name == "model.safetensors"
    loaded = load_torch(SMALL, RuntimeOptions(device="cpu"))
    assert torch.equal(loaded.module.state_dict()["fc.weight"], state["fc.weight"])
    copied = fetch_weights(spec, tmp_path / "dest", progress=False)  # found in the cache, copied under its own name
    assert copied == tmp_path / "dest" / "resnet18.a1_in1k.safetensors" and copied.read_bytes() == path.read_bytes()
    with pytest.raises(WeightsNotFoundError, match="has none of model.safetensors, pytorch_model.bin"):
        resolve_weights(get_spec("timm/resnet34.a1_in1k"))  # the server has no such repository file


@pytest.mark.parametrize("arch", ["resnet18", "convnext_atto", "deit_tiny_distilled_patch16_224", "levit_128s",
                                  "dla34", "repvit_m1"])
def test_new_heads_for_timm_classifiers(arch: str) -> None:
    """Linear, MLP-norm, 1x1-convolution, NormLinear and distilled (two-token) heads: one new head each."""
    module = timm.create_model(arch).eval()
    info = replace_head(module, 3)
    head = module.get_submodule(info.path)
    assert find_head(module, 3) == (info.path, head)
    with torch.inference_mode():
        assert module(torch.zeros(2, 3, 224, 224)).shape == (2, 3)
    trainable = {id(p) for p in head.parameters()}
    outputs = [m for m in module.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
               and (getattr(m, "out_features", None) == 3 or getattr(m, "out_channels", None) == 3)]
    assert outputs and all(id(m.weight) in trainable for m in outputs)  # training the head trains every new output
    rebuilt = timm.create_model(arch)
    replace_head(rebuilt, 3)
    rebuilt.load_state_dict(module.state_dict())  # a checkpoint of the new architecture loads strictly


def test_listing_timm_models_imports_neither_timm_nor_huggingface_hub() -> None:
    import subprocess
    import sys

    code = ("import sys; from cnnlab.models.registry import list_models; from cnnlab.models.weights import locate_weights; "
            "specs = list_models('timm/convnext*'); [locate_weights(s) for s in specs]; "
            "print(len(specs), [m for m in ('timm', 'huggingface_hub', 'safetensors') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    count, loaded = proc.stdout.split(" ", 1)
    assert int(count) > 10 and loaded.strip() == "[]"


def test_squash_preprocessing_survives_a_checkpoint() -> None:
    from cnnlab.models.checkpoint import checkpoint_preprocessing

    pp = get_spec("timm/convnext_tiny.fb_in22k_ft_in1k_384").preprocessing
    assert pp.crop_mode == "squash"
    assert checkpoint_preprocessing({"preprocessing": pp.to_dict()}) == pp
    legacy = {k: v for k, v in pp.to_dict().items() if k != "crop_mode"}  # written before crop_mode existed
    assert checkpoint_preprocessing({"preprocessing": legacy}).crop_mode == "center"
