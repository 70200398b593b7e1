"""Where weights come from, and loading them safely.

Resolution order for a model's weights:

1. an explicit file (``--weights PATH``);
2. a weights directory (``--weights-dir`` or ``$CNNLAB_WEIGHTS_DIR``);
3. the torch hub cache, ``$TORCH_HOME/hub/checkpoints`` (where torchvision itself puts them);
4. weights shipped inside an installed package (the offline model); for timm models, the Hugging
   Face hub cache (:mod:`cnnlab.models.hub`);
5. a download from the publisher's URL (or ``$CNNLAB_WEIGHTS_MIRROR``, a base URL that replaces
   everything before the file name) with a progress bar and a check of the sha256 prefix that
   torchvision's file names carry (``resnet50-11ad3fa6.pth``); for timm models on the hub, a
   download through huggingface_hub (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``).

``.safetensors`` files are read with safetensors; every other file with
``torch.load(..., weights_only=True)``: a pickle that would run code is refused with
:class:`~cnnlab.errors.UnsafeWeightsError`.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import urllib.error
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import OutputError, UnsafeWeightsError, UsageError, WeightsIntegrityError, WeightsNotFoundError
from cnnlab.models.spec import ModelSpec, StateDict

if TYPE_CHECKING:  # imported where tensors are loaded: finding a file needs no torch (predict's ONNX path)
    import torch

WEIGHTS_DIR_ENV = "CNNLAB_WEIGHTS_DIR"
MIRROR_ENV = "CNNLAB_WEIGHTS_MIRROR"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


@dataclass(frozen=True)
class WeightsLocation:
    """Where a model's weights file is, or would be, found."""

    model: str
    file: str | None
    url: str | None
    searched: tuple[Path, ...]
    found: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "file": self.file,
            "url": self.url,
            "searched": [str(p) for p in self.searched],
            "found": str(self.found) if self.found else None,
        }


def hub_checkpoints_dir() -> Path:
    """torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``).

    Asked of torch when it is imported (a ``torch.hub.set_dir`` of the caller applies); otherwise found from
    the environment as ``torch.hub.get_dir`` finds it, so that looking for a file imports no torch."""
    import sys

    if "torch" in sys.modules:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints"
    torch_home = os.environ.get("TORCH_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(torch_home), "hub", "checkpoints")


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """The directories searched, in order."""
    dirs: list[Path] = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir))
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if env_dir:
        dirs.append(Path(env_dir))
    dirs.append(hub_checkpoints_dir())
    return dirs


def download_url(spec: ModelSpec) -> str | None:
    """The URL a download would use: the publisher's, or the same file under ``$CNNLAB_WEIGHTS_MIRROR``
    (for a Hugging Face repository: its file under ``$HF_ENDPOINT``)."""
    if spec.hf_hub_id is not None:
        from cnnlab.models import hub

        return f"{hub.endpoint()}/{spec.hf_hub_id}/resolve/main/{hub.HUB_FILENAMES[0]}"
    if spec.weights_url is None:
        return None
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and spec.weights_file:
        return mirror.rstrip("/") + "/" + spec.weights_file
    return spec.weights_url


def locate_weights(spec: ModelSpec, weights_dir: str | Path | None = None) -> WeightsLocation:
    """Find ``spec``'s weights on disk without downloading anything."""
    dirs = search_dirs(weights_dir)
    found: Path | None = None
    if spec.weights_file:
        found = next((d / spec.weights_file for d in dirs if (d / spec.weights_file).is_file()), None)
    if found is None and spec.packaged_weights is not None and spec.packaged_weights.is_file():
        found = spec.packaged_weights
    if spec.hf_hub_id is not None:
        from cnnlab.models import hub

        dirs.append(hub.cache_dir())
        found = found or hub.cached_file(spec.hf_hub_id)
    return WeightsLocation(spec.name, spec.weights_file, download_url(spec), tuple(dirs), found)


def fetch_weights(
    spec: ModelSpec, dest_dir: str | Path | None = None, *, progress: bool = True
) -> Path:
    """Download ``spec``'s weights into ``dest_dir`` (default: the hub cache) and check their hash.

    Returns the path at once if the file is already there.

    Raises:
        UsageError: ``dest_dir`` is a file.
    """
    check_dest_dir(dest_dir)
    location = locate_weights(spec, dest_dir)
    target_dir = Path(dest_dir) if dest_dir is not None else hub_checkpoints_dir()
    if location.found is None:
        return _download(spec, location, target_dir, progress)
    if dest_dir is None or location.found.parent == target_dir:
        return location.found
    # found elsewhere (hub cache, package): copy it into dest_dir, checking its hash on the way
    target = target_dir / _copy_name(spec, location.found)
    _check_hash(location.found)
    target_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(location.found, target)
    return target


def check_dest_dir(dest_dir: str | Path | None) -> None:
    """Refuse a destination that exists and is not a folder, before anything is downloaded."""
    if dest_dir is not None and Path(dest_dir).exists() and not Path(dest_dir).is_dir():
        raise UsageError(f"download folder {dest_dir} is a file; give a folder to download into (it is made if missing)")


def _check_hash(path: Path) -> None:
    """Compare a file with the sha256 prefix in its name (torchvision's ``name-<prefix>.pth``)."""
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return
    from cnnlab.imagedata.hashes import file_sha256

    if not file_sha256(path).startswith(match.group(1)):
        raise WeightsIntegrityError(f"{path} does not match the sha256 prefix {match.group(1)} in its name")


def _download(spec: ModelSpec, location: WeightsLocation, target_dir: Path, progress: bool) -> Path:
    if spec.hf_hub_id is not None:
        return _download_from_hub(spec, location, target_dir)
    url = location.url
    if url is None or spec.weights_file is None:
        raise WeightsNotFoundError(f"{spec.name} has no download URL and no weights on disk")
    target = target_dir / spec.weights_file
    match = _HASH_IN_NAME.search(spec.weights_file)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        import torch

        torch.hub.download_url_to_file(url, str(target), hash_prefix=match.group(1) if match else None, progress=progress)
    except RuntimeError as exc:
        if "invalid hash" in str(exc):
            raise WeightsIntegrityError(
                f"the download of {spec.weights_file} from {url} does not match its sha256 prefix "
                f"{match.group(1) if match else '?'}; nothing was saved ({exc})"
            ) from None
        raise _not_found(spec, location, exc) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _not_found(spec, location, exc) from None
    return target


def _download_from_hub(spec: ModelSpec, location: WeightsLocation, target_dir: Path) -> Path:
    """The repository's file through huggingface_hub into its cache; copied into ``target_dir`` unless
    that is the torch hub cache (``resolve_weights`` reads it where huggingface_hub keeps it)."""
    from cnnlab.models import hub

    assert spec.hf_hub_id is not None and spec.weights_file is not None
    try:
        path = hub.download(spec.hf_hub_id)
    except LookupError as exc:
        raise _not_found(spec, location, exc) from None
    if target_dir == hub_checkpoints_dir():
        return path
    target = target_dir / _copy_name(spec, path)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    except OSError as exc:
        raise OutputError(f"cannot copy {path} to {target}: {exc.strerror or exc}") from None
    return target


def _copy_name(spec: ModelSpec, path: Path) -> str:
    """The name of a copy of ``path`` in a weights folder: a hub file (``model.safetensors``) gets the
    model's file name (``convnext_tiny.fb_in1k.safetensors``), which the folder search looks for."""
    if spec.hf_hub_id is None or spec.weights_file is None:
        return path.name
    return spec.weights_file if path.suffix == ".safetensors" else f"{Path(spec.weights_file).stem}{path.suffix}"


def _not_found(spec: ModelSpec, location: WeightsLocation, cause: BaseException | None) -> WeightsNotFoundError:
    searched = ", ".join(str(p) for p in location.searched)
    lines = [
        f"weights for {spec.name} not found: file {location.file or '?'}",
        f"  searched: {searched}",
    ]
    if location.url:
        reason = getattr(cause, "reason", None) or cause
        lines.append(f"  download from {location.url} failed: {reason}" if cause else f"  url: {location.url}")
    lines.append(
        "  fix: put the file into one of those directories (or pass --weights PATH / --weights-dir DIR), "
        f"or run `cnnlab weights fetch {spec.arch if spec.is_default else spec.name}` on a machine with internet; "
        "in bench and train, `--random-weights` runs without them (speed and memory only)"
    )
    return WeightsNotFoundError("\n".join(lines))


def resolve_weights(
    spec: ModelSpec,
    *,
    weights: str | Path | None = None,
    weights_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Return the path of ``spec``'s weights, following the documented resolution order."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} does not exist")
        return path
    location = locate_weights(spec, weights_dir)
    if location.found is not None:
        return location.found
    if not download or location.url is None:
        raise _not_found(spec, location, None)
    return _download(spec, location, hub_checkpoints_dir(), progress)


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive; old files and plain pickles start with the pickle protocol byte."""
    try:
        if zipfile.is_zipfile(path):
            return True
        with path.open("rb") as fh:
            return fh.read(1) == b"\x80"
    except OSError:
        return False


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def torch_load_plain(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with every failure a user-facing error.

    Raises:
        UnsafeWeightsError: the file is a pickle that would need code to load.
        WeightsIntegrityError: anything else (damaged, truncated, not a PyTorch file, unreadable);
            a damaged file fails in many ways inside ``torch.load`` (``IndexError``, ``KeyError``,
            ``struct.error``...), and none of them becomes a traceback.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if os.path.lexists(path) else "does not exist"
        raise WeightsIntegrityError(f"weights file {path} {what}")
    try:
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _looks_like_torch_file(path):
            raise WeightsIntegrityError(f"{path} is not a PyTorch weights file") from None
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if text.strip() else ""
        if detail.startswith("Unsupported operand"):  # damaged bytes, or an opcode the safe loader refuses
            raise UnsafeWeightsError(
                f"refused to load {path}: the safe loader cannot read it ({detail}); it is damaged, or a pickle "
                "that holds more than tensors and plain data. Only load files you trust with plain torch.load."
            ) from None
        raise UnsafeWeightsError(
            f"refused to load {path}: it is a pickle that contains more than tensors and plain data "
            f"(loading it could run code). Only load files you trust with plain torch.load. ({detail})"
        ) from None
    except MemoryError:
        raise WeightsIntegrityError(f"cannot read weights file {path}: not enough memory to load it") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        what = "not a PyTorch weights file" if not _looks_like_torch_file(path) else "damaged or truncated"
        raise WeightsIntegrityError(f"cannot read weights file {path}: it is {what} ({_short(exc)})") from None


def load_safetensors(path: Path) -> StateDict:
    """A ``.safetensors`` file's tensors (no code can run while reading one)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UsageError(f"reading {path} needs safetensors: pip install 'cnnlab[timm]'") from None
    if not path.is_file():
        raise WeightsIntegrityError(f"weights file {path} is not a regular file")
    try:
        return load_file(str(path), device="cpu")
    except MemoryError:
        raise WeightsIntegrityError(f"cannot read weights file {path}: not enough memory to load it") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise WeightsIntegrityError(f"cannot read weights file {path}: it is damaged or not safetensors "
                                    f"({_short(exc)})") from None


def load_state_dict(path: str | Path) -> StateDict:
    """Load a state dict: ``.safetensors`` with safetensors, anything else with ``weights_only=True``
    (unwrapping ``{"state_dict": ...}``/``{"model": ...}``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    obj = torch_load_plain(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and _is_state_dict(inner):
                return inner
        if _is_state_dict(obj):
            return obj
    raise WeightsIntegrityError(f"{path} holds no state dict of tensors")


def _is_state_dict(obj: dict[Any, Any]) -> bool:
    import torch

    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def describe_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], shown: int = 3) -> str:
    """A short account of why ``given`` does not load into a model whose state dict is ``expected``.

    Counts missing and unexpected keys and shape mismatches, naming at most ``shown`` of each,
    instead of torch's message, which lists every key (20 KB for a ResNet).
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {list(given[k].shape)} vs {list(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f", ... {len(items) - shown} more" if len(items) > shown else ""
            parts.append(f"{len(items)} {what} ({', '.join(items[:shown])}{more})")
    if not parts:
        return "the tensors do not load (same keys and shapes)"
    return f"{len(given)} tensors given, {len(expected)} expected: " + "; ".join(parts)
