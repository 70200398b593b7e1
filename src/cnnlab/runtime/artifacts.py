"""ONNX files for the runtimes: the export cache, and ``.onnx`` files (with their sidecar) as models.

Exports are cached under ``$CNNLAB_CACHE_DIR/exports`` (default ``~/.cache/cnnlab/exports``), one
folder per model, weights and versions: ``<name>-<key>/model.onnx`` with its ``model.onnx.json``
sidecar (and int8 variants next to it, :mod:`cnnlab.runtime.quantize`). The key hashes the
registry name (or checkpoint path), the sha256 of the weights file (``random`` for random weights,
seeded so that the export is reproducible), and the cnnlab and torch versions: new weights or a
new exporter make a new export, the same ones reuse it. A folder appears whole or not at all
(written under a temporary name, then renamed), with a ``complete.json`` that records the ONNX
file's size; a folder whose file no longer has that size, or whose sidecar cannot be read
(truncated, edited, half deleted), is discarded and made again. A checkpoint's export folder also
holds ``checkpoint.json`` (:func:`checkpoint_facts`): its data record and threshold, which ``predict`` reads
instead of loading the checkpoint in torch.

An ``.onnx`` file written by ``cnnlab export`` works wherever a model name works: its sidecar
``FILE.onnx.json`` holds the classes, the preprocessing and the source model's metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import ImageDecodeError, OutputError, WeightsIntegrityError, WeightsNotFoundError
from cnnlab.imagedata.hashes import file_sha256
from cnnlab.models.metadata import check_preprocessing, check_sidecar
from cnnlab.models.registry import ModelSpec, get_spec
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy
from cnnlab.progress import Progress

if TYPE_CHECKING:
    from cnnlab.models.load import LoadedModel

CACHE_ENV = "CNNLAB_CACHE_DIR"


def cache_root() -> Path:
    """cnnlab's cache: ``$CNNLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnlab``, else ``~/.cache/cnnlab``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "cnnlab"


def exports_dir() -> Path:
    return cache_root() / "exports"


def sidecar(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    return path.with_name(path.name + ".json")


def cache_stem(name: str) -> str:
    """A short, file-name-safe form of a model name or path for a cache folder (at most 80 ASCII characters)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "model"


@dataclass(frozen=True)
class ExportVariant:
    """An ONNX export other than the plain classifier, made and cached by :func:`cached_export`."""

    #: Part of the cache folder's name (``<model>-<name>-<key>``).
    name: str
    #: Recorded in the cache key: a new format makes a new entry.
    format: str
    #: What the progress line calls it.
    description: str
    #: Writes the file (and its sidecar) for a loaded PyTorch model.
    export: Callable[[LoadedModel, Path], Any]


#: What stands for the weights' digest in the key of an export of random weights (seeded: the same ones every time).
RANDOM_WEIGHTS_DIGEST = "random-seed-0"


def torch_version() -> str:
    """``torch.__version__``, read from torch's ``version.py`` while torch is not imported (importing it takes
    seconds that a run of a cached export in ONNX Runtime never needs)."""
    import importlib.util
    import re
    import sys

    if "torch" not in sys.modules:
        spec = importlib.util.find_spec("torch")
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        try:
            text = Path(folders[0], "version.py").read_text(encoding="utf-8") if folders else ""
        except OSError:
            text = ""
        match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
        if match:
            return match.group(1)
    import torch

    return str(torch.__version__)


#: Digests of weights files this process hashed, by what ``os.stat`` says of the file: one run hashes its weights
#: once, not at every step that looks the export up (choosing the backend, preparing its file, loading it); any
#: write to the file changes its change time, and the file is hashed again.
_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}


def weights_sha256(path: str | Path) -> str:
    """:func:`~cnnlab.imagedata.hashes.file_sha256` of a weights or checkpoint file, hashed once per process while
    the file is unchanged."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def export_key(model: str, weights_digest: str, format: str) -> str:
    """The end of an export's cache folder name: another model, weights, kind of export (``format``), cnnlab or
    torch is another folder. Computed without torch, so that the export index can check a folder's name."""
    import cnnlab

    data = {"model": model, "weights": weights_digest, "cnnlab": cnnlab.__version__, "torch": torch_version(),
            "format": format}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def cached_export(name: str, *, weights: str | Path | None = None, weights_dir: str | Path | None = None,
                  random_weights: bool = False, download: bool = True, progress: Progress | None = None,
                  variant: ExportVariant | None = None) -> Path:
    """The cached ONNX export of a registry model or training checkpoint, exported now if missing.

    ``variant``: another kind of export instead of the classifier (review's feature extractor, two outputs:
    :mod:`cnnlab.review.onnx_features`), cached under its own key. The caller brings the exporter, so this
    layer needs to know nothing of the jobs that use it.

    Raises what :func:`cnnlab.models.load.load_model` and :func:`cnnlab.models.export.export_model` raise
    (unknown model, missing weights, an export that does not reproduce the model).
    """
    from cnnlab.models.files import is_checkpoint_file
    from cnnlab.models.weights import resolve_weights

    weights_path: Path | None
    checkpoint = is_checkpoint_file(name)
    if checkpoint:
        if not Path(name).is_file():
            raise WeightsNotFoundError(f"checkpoint file {name} does not exist")
        canonical, weights_path = str(Path(name).resolve()), Path(name)
    else:
        spec = get_spec(name)
        canonical = spec.name
        weights_path = None if random_weights else resolve_weights(
            spec, weights=weights, weights_dir=weights_dir, download=download, progress=progress is not None)
    digest = weights_sha256(weights_path) if weights_path else RANDOM_WEIGHTS_DIGEST
    folder = _export_folder(canonical, digest, variant)
    model = folder / "model.onnx"
    if cache_entry_ok(folder):
        return model
    import torch

    discard_entry(folder)
    progress = progress or Progress()
    what = variant.description if variant else "model"
    progress.start("export", f"{canonical}: export of the {what} to ONNX (cached for later runs)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights: the same ones for every export of this key
        _export_into(folder, canonical if not checkpoint else name, weights_path if not checkpoint else None,
                     random_weights, variant=variant, checkpoint_digest=digest if checkpoint else None)
    progress.finish("export")
    return model


def _export_folder(canonical: str, weights_digest: str, variant: ExportVariant | None) -> Path:
    key = export_key(canonical, weights_digest, variant.format if variant is not None else "onnx")
    return exports_dir() / f"{cache_stem(canonical)}-{variant.name + '-' if variant else ''}{key}"


def cached_checkpoint_export(path: str | Path, *, variant: ExportVariant | None = None) -> Path | None:
    """The cached export of the training checkpoint at ``path`` when it is there and whole, else ``None``: found
    without torch, since the folder's name hashes the checkpoint's path and bytes (0.05 s for 20 MB)."""
    path = Path(path)
    try:
        if not path.is_file():
            return None
        folder = _export_folder(str(path.resolve()), weights_sha256(path), variant)
    except OSError:
        return None
    return folder / "model.onnx" if cache_entry_ok(folder) else None


#: Written next to a checkpoint's export: what ``predict`` reads of the checkpoint besides the graph (its data
#: record and "none of these" threshold), so that a run of the cached export never loads the checkpoint in torch.
CHECKPOINT_FACTS = "checkpoint.json"
#: The most of it read: a million training images' digests and paths take some tens of megabytes.
MAX_FACTS_BYTES = 256 << 20


def checkpoint_facts(model_file: Path) -> dict[str, Any] | None:
    """``{"data_record": ..., "unknown": ...}`` of the checkpoint behind the cached export ``model_file`` (either
    ``None`` where the checkpoint has none), from the file written with the export; ``None`` when there is no such
    file (an export of an older cnnlab) or it cannot be read: then the caller reads the checkpoint itself."""
    from cnnlab.imagedata.decode import read_regular_file
    from cnnlab.models.leakage import record_from_json

    try:
        facts = json.loads(read_regular_file(model_file.parent / CHECKPOINT_FACTS, MAX_FACTS_BYTES).decode("utf-8"))
        record, unknown = facts["data_record"], facts["unknown"]
        return {"data_record": record_from_json(record) if record is not None else None,
                "unknown": unknown if isinstance(unknown, dict) else None}
    except (OSError, ValueError, KeyError, TypeError, ArithmeticError, RecursionError, ImageDecodeError):
        return None


def _write_checkpoint_facts(checkpoint: str, folder: Path) -> None:
    """Write :data:`CHECKPOINT_FACTS`; nothing for a record this form cannot hold (a hand-made checkpoint's):
    predict then reads the checkpoint, as before."""
    from cnnlab.models.checkpoint import read_checkpoint
    from cnnlab.models.leakage import record_to_json

    ckpt = read_checkpoint(checkpoint)
    record, unknown = ckpt.get("data_record"), ckpt.get("unknown")
    try:
        facts = json.dumps({"data_record": record_to_json(record) if record else None,
                            "unknown": unknown if isinstance(unknown, dict) else None}, allow_nan=False)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        return
    (folder / CHECKPOINT_FACTS).write_text(facts + "\n", encoding="utf-8")


def _export_into(folder: Path, name: str, weights_path: Path | None, random_weights: bool, *,
                 variant: ExportVariant | None = None, checkpoint_digest: str | None = None) -> None:
    """Export into a temporary folder next to ``folder``, then rename it (another process may win the race).

    ``checkpoint_digest``: the digest of checkpoint ``name`` that the folder's name carries: a checkpoint
    rewritten meanwhile (a training run saving ``best.pt``) is not published under the old digest."""
    from cnnlab.models.export import export_model
    from cnnlab.models.files import is_checkpoint_file
    from cnnlab.models.load import load_torch

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    except OSError as exc:
        raise OutputError(f"cannot write to the export cache {folder.parent}: {exc.strerror or exc} "
                          f"(set {CACHE_ENV} to another folder)") from None
    try:
        policy = WeightsPolicy.RANDOM if random_weights else WeightsPolicy.PRETRAINED
        loaded = load_torch(ModelSource(name=name, weights=weights_path, policy=policy),
                            RuntimeOptions(device="cpu", channels_last=False, fold_bn=False),
                            progress=False)
        if variant is not None:
            variant.export(loaded, tmp / "model.onnx")
        else:
            export_model(loaded, "onnx", tmp / "model.onnx")
        if is_checkpoint_file(name):
            _write_checkpoint_facts(name, tmp)
            if checkpoint_digest is not None and file_sha256(Path(name)) != checkpoint_digest:
                raise WeightsIntegrityError(f"checkpoint {name} changed while it was exported (is a training run "
                                            "writing it?): run again once it is written")
        publish_entry(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: The file that marks a cache folder as complete (and records the ONNX file's size).
COMPLETE = "complete.json"
#: The most of it read (it holds one number): a link to ``/dev/zero`` or a FIFO is no entry, not a hang.
MAX_RECORD_BYTES = 4096


def cache_entry_ok(folder: Path) -> bool:
    """``folder/model.onnx`` is whole: its size is the one recorded when it was made, its sidecar readable."""
    from cnnlab.imagedata.decode import read_regular_file

    model = folder / "model.onnx"
    try:
        record = json.loads(read_regular_file(folder / COMPLETE, MAX_RECORD_BYTES).decode("utf-8"))
        if not isinstance(record, dict) or record.get("bytes") != model.stat().st_size:
            return False
        read_sidecar(model)
    except (OSError, ValueError, RecursionError, ImageDecodeError, WeightsIntegrityError):
        return False
    return True


def discard_entry(folder: Path) -> None:
    """Remove a broken cache folder (renamed away first, so that no reader sees it half deleted)."""
    if not folder.exists():
        return
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    try:
        os.replace(folder, trash)
    except OSError:
        return  # another process removed or replaced it
    shutil.rmtree(trash, ignore_errors=True)


def publish_entry(tmp: Path, folder: Path) -> None:
    """Mark ``tmp`` complete, readable by others, and rename it to ``folder`` (unless another process did first)."""
    model = tmp / "model.onnx"
    (tmp / COMPLETE).write_text(json.dumps({"bytes": model.stat().st_size}) + "\n", encoding="utf-8")
    with contextlib.suppress(OSError):
        tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache is read by others
    if not folder.exists():
        with contextlib.suppress(OSError):  # a concurrent export may have got there first
            os.replace(tmp, folder)


#: The largest sidecar read (a thousand class names take a few tens of kilobytes).
MAX_SIDECAR_BYTES = 16 * 1024 * 1024


def read_sidecar(path: Path) -> dict[str, Any]:
    """The metadata ``cnnlab export`` writes next to an ONNX file, checked for what a runtime needs
    (:func:`cnnlab.models.metadata.check_sidecar`).

    The ONNX file must be a regular file; the sidecar is read only if it is a regular file too, and at
    most :data:`MAX_SIDECAR_BYTES` of it (a FIFO or a link to ``/dev/zero`` is refused, not waited on).
    """
    from cnnlab.imagedata.decode import read_regular_file

    meta_path = sidecar(path)
    if not path.exists():
        raise WeightsIntegrityError(f"ONNX file {path} does not exist")
    if not path.is_file():
        raise WeightsIntegrityError(f"ONNX file {path} is not a regular file")
    if not os.path.lexists(meta_path):
        raise WeightsIntegrityError(
            f"{path} has no metadata file {meta_path.name} next to it (classes and preprocessing); "
            "export with `cnnlab export`, which writes both")
    try:
        meta = json.loads(read_regular_file(meta_path, MAX_SIDECAR_BYTES).decode("utf-8"))
    except ImageDecodeError as exc:
        raise WeightsIntegrityError(f"cannot read the metadata file {meta_path}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise WeightsIntegrityError(f"cannot read {meta_path}: {exc}") from None
    return check_sidecar(meta, str(meta_path))  # classes, input, preprocessing, shapes, nesting


def onnx_spec(path: Path, meta: dict[str, Any], *, name: str | None = None) -> ModelSpec:
    """A :class:`~cnnlab.models.registry.ModelSpec` for an ONNX file from its sidecar (named ``name`` or the path)."""
    from cnnlab.imagedata.labels import imagenet_categories

    preprocessing = check_preprocessing(meta.get("preprocessing"), str(sidecar(path)))
    classes = tuple(meta["classes"])
    source = _text(meta.get("source")) or ("imagenet" if list(classes) == imagenet_categories() else "checkpoint")
    info: dict[str, Any] = meta["spec"] if isinstance(meta.get("spec"), dict) else {}
    num_params = _number(info.get("num_params"))
    model = _text(meta.get("model"))
    return ModelSpec(
        name=name or str(path), arch=_text(info.get("arch")) or model or path.stem,
        weights_tag=path.stem, is_default=False, source=source, num_params=int(num_params or 0),
        gmacs=_number(info.get("gmacs")), acc1=_number(info.get("acc1")), acc5=_number(info.get("acc5")),
        weights_url=None, weights_file=path.name, weights_size_mb=round(path.stat().st_size / 1e6, 3),
        categories=classes, preprocessing=preprocessing, recipe=f"ONNX export of {model or path.name}",
        license=_text(info.get("license")),
    )


def _number(value: Any) -> float | None:
    """A finite, non-negative number of a sidecar, else ``None`` (figures are informative only)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return value


def _text(value: Any) -> str | None:
    """A short string of a sidecar, else ``None``."""
    return value[:200] if isinstance(value, str) and value else None
