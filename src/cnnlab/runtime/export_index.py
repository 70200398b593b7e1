"""Which cached export a model name resolved to, found again without building the model registry.

Looking a name up in the registry imports torchvision (and with it ``torch._dynamo``) and builds every
model's entry, and checking that an export can be made imports onnx and onnxscript: seconds that a run
whose export is already cached should not pay (``predict``, ``review``: ``benchmarks/bench_predict.py``).
:func:`remember_export` records which weights file a name resolved to and the export made from it;
:func:`remembered_export` trusts the record while the weights search finds the same file (the same
search folders, the same first one holding the file, its size and modification time unchanged) and the
export is whole and was made, in that format, from weights with that file's digest (hashed once per process while the
file is unchanged: 0.02-0.05 s for the offline model's 19 MB; the export folder's name says which weights it was made
from).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, WeightsIntegrityError

#: The index file in the export cache.
INDEX_FILE = "index.json"
#: The index is a few hundred bytes per model: a larger one is not cnnlab's and is not read (a FIFO never blocks).
INDEX_MAX_BYTES = 1 << 20


def _index_key(name: str, weights_dir: str | Path | None, format: str) -> str:
    import cnnlab
    from cnnlab.runtime.artifacts import torch_version

    data = {"name": name, "weights_dir": str(Path(weights_dir).resolve()) if weights_dir is not None else None,
            "cnnlab": cnnlab.__version__, "torch": torch_version(), "format": format}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _read_index() -> dict[str, Any]:
    from cnnlab.imagedata.decode import read_regular_file
    from cnnlab.runtime.artifacts import exports_dir

    try:
        index = json.loads(read_regular_file(exports_dir() / INDEX_FILE, max_bytes=INDEX_MAX_BYTES).decode("utf-8"))
    except (OSError, ValueError, CnnlabError):
        return {}
    return index if isinstance(index, dict) else {}


def remembered_export(name: str, weights_dir: str | Path | None = None, *, format: str) -> Path | None:
    """The cached export (``format``: the sidecar's) of registry model ``name``'s pretrained weights, or ``None``
    when the record does not hold: then resolve the name the slow way."""
    from cnnlab.models.files import model_file_kind
    from cnnlab.runtime.artifacts import cache_entry_ok, export_key, exports_dir, read_sidecar, weights_sha256

    if model_file_kind(name) is not None:
        return None
    record = _read_index().get(_index_key(name, weights_dir, format))
    try:
        assert isinstance(record, dict)
        candidates = _candidates(record["weights_file"], weights_dir)
        if candidates != record["candidates"]:
            return None
        packaged = record["packaged"]
        found = next((c for c in candidates if Path(c).is_file()), packaged and os.path.realpath(packaged))
        stat = Path(found).stat()
        if (found, stat.st_size, stat.st_mtime_ns) != (record["found"], record["size"], record["mtime_ns"]):
            return None
        folder = exports_dir() / str(record["folder"])
        if folder.parent != exports_dir() or not cache_entry_ok(folder):
            return None
        meta = read_sidecar(folder / "model.onnx")
        # the export named must be of that format and made from the weights the search finds now, by their digest
        # (the folder's name says which weights it was made from): not, after an edit of the index, another kind of
        # export or another model's, nor, after the file was replaced, the old weights' export; the same weights
        # moved to another folder find their export again
        model = meta.get("model")
        assert isinstance(model, str)
        if (meta.get("format"), meta.get("random_weights")) != (format, False) or \
                not folder.name.endswith("-" + export_key(model, weights_sha256(found), format)):
            return None
    except (AssertionError, KeyError, TypeError, OSError, WeightsIntegrityError):
        return None
    return folder / "model.onnx"


def _candidates(weights_file: str, weights_dir: str | Path | None) -> list[str]:
    """Where the weights search looks for ``weights_file``, as absolute paths with links resolved, as the index's key
    resolves the folder: ``--weights-dir w``, its absolute form and a link to it are one record (relative paths made
    them rewrite it in turn, each sending the next run the slow way)."""
    from cnnlab.models.weights import search_dirs

    return [os.path.realpath(d / weights_file) for d in search_dirs(weights_dir)]


def remember_export(name: str, weights_dir: str | Path | None, export: Path, *, format: str) -> None:
    """Record that registry model ``name`` (its weights searched in ``weights_dir``) resolved to ``export``.

    Nothing is recorded for a checkpoint, a Hugging Face model (found by the hub's own cache), or
    when the index cannot be written (the next run resolves the name the slow way).
    """
    from cnnlab.models.files import is_checkpoint_file
    from cnnlab.models.registry import get_spec
    from cnnlab.models.weights import locate_weights
    from cnnlab.runtime.artifacts import exports_dir

    if is_checkpoint_file(name):
        return
    spec = get_spec(name)
    found = locate_weights(spec, weights_dir).found
    if spec.hf_hub_id is not None or not spec.weights_file or found is None:
        return
    candidates = _candidates(spec.weights_file, weights_dir)
    stat = found.stat()
    index = _read_index()
    index[_index_key(name, weights_dir, format)] = {
        "weights_file": spec.weights_file, "candidates": candidates,
        "packaged": str(spec.packaged_weights) if spec.packaged_weights is not None else None,
        "found": os.path.realpath(found), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "folder": export.parent.name}
    target = exports_dir() / INDEX_FILE
    temp = target.with_name(f".{INDEX_FILE}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        temp.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temp, target)
    with contextlib.suppress(OSError):
        temp.unlink(missing_ok=True)
