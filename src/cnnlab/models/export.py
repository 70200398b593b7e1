"""Exporting a model to TorchScript or ONNX, checked against PyTorch on a sample batch.

The exported network takes what :class:`cnnlab.models.load.LoadedModel` takes: a ``uint8`` RGB batch
``(N, 3, crop, crop)`` (resized and centre-cropped as the stored preprocessing says) and returns
float32 logits ``(N, num_classes)``; the normalisation with the weights' mean and std is part of
the exported graph. The batch dimension is dynamic. A JSON file next to the export
(``FILE.json``) records the class names, the preprocessing, the source model (name, weights
file, published figures) and the measured difference, so the file can be used without cnnlab;
``cnnlab predict`` and ``bench`` run an ONNX file with it (see :mod:`cnnlab.runtime`).

ONNX files are written by torch's TorchScript-based exporter, or, where it fails or its file does not pass the
check below, by the dynamo exporter (:func:`onnx_exporters`). After writing, the file is loaded back
(``torch.jit.load``; an ONNX Runtime session for ONNX) and run on a seeded random batch of a different size than
the one used for export; the largest absolute difference from the PyTorch model's logits must stay within
``tolerance``, otherwise
:class:`ExportMismatchError` is raised and the file removed.

The output is checked before the model is loaded (:func:`check_export_path`): never the input checkpoint itself
(the trained model would be lost), never a FIFO or device (the write would wait for a reader forever).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from cnnlab.errors import CnnlabError, ExportMismatchError, OutputError, UsageError
from cnnlab.imagedata.preprocess import Preprocessing
from cnnlab.models.load import LoadedModel, load_torch
from cnnlab.options import DEFAULT_EXPORT_TOLERANCE, ExportFormat, ModelSource, RuntimeOptions, parse_choice
from cnnlab.outputs import OutputFolder

FORMATS = tuple(f.value for f in ExportFormat)
_SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
#: The endings an output file of each format may have.
_ENDINGS = {"torchscript": (".pt", ".pth", ".ts", ".torchscript"), "onnx": (".onnx",)}
#: Above this size, ONNX weights go to a separate ``FILE.data`` (protobuf's 2 GB limit).
_ONNX_SINGLE_FILE_BYTES = 1_500_000_000

T = TypeVar("T")


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how closely it reproduces the PyTorch model."""

    model: str
    format: str
    path: Path
    metadata_path: Path
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    check_batch: int
    max_abs_diff: float
    tolerance: float
    seconds: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "format": self.format,
            "path": str(self.path),
            "metadata_path": str(self.metadata_path),
            "num_classes": len(self.classes),
            "input": {"dtype": "uint8", "layout": "NCHW RGB", "shape": ["N", *self.input_shape[1:]]},
            "check_batch": self.check_batch,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "seconds": self.seconds,
        }


class UInt8Classifier(nn.Module):
    """``module`` behind the device half of the preprocessing: uint8 batch in, logits out."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, module: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.module = module
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
        # the same arithmetic as Preprocessing.normalize
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.module(torch.addcmul(self.shift, images.float(), self.scale))
        return logits


def written_files(path: Path) -> tuple[Path, Path, Path]:
    """The files an export to ``path`` writes: the model, its sidecar ``FILE.json`` and, for a large ONNX model,
    its external weights ``FILE.data``."""
    return path, path.with_name(path.name + ".json"), path.with_name(path.name + ".data")


def _earlier_export(path: Path) -> bool:
    """Whether ``path`` is a file an earlier export wrote: its sidecar (``PATH.json``) names a format."""
    from cnnlab.imagedata.decode import read_regular_file

    try:
        meta = json.loads(read_regular_file(Path(f"{path}.json"), max_bytes=1 << 20))
    except (OSError, ValueError, CnnlabError):
        return False
    return isinstance(meta, dict) and meta.get("format") in _SUFFIXES


def check_export_path(path: Path, source: str | Path | None = None, *, overwrite: bool = False,
                      format: str | None = None) -> None:
    """Refuse (:class:`UsageError`) an output the export must not write: a folder, a file that is not a regular
    file (a FIFO would block the write forever, a device would swallow it) or a broken link, the ``source`` model
    file itself under any name (a link, a hard link, ``./best.pt`` for ``best.pt``), an existing file that an
    earlier export did not write (an image, notes) unless ``overwrite``, a name whose ending does not say the
    ``format``; and a folder that cannot hold it (:class:`~cnnlab.outputs.OutputFolder`'s rules). Creates nothing."""
    if path.is_dir():
        raise UsageError(f"output {path} is a folder; give the name of the file to write, e.g. {path / 'model'}.onnx")
    OutputFolder(path.parent, "export").check_path()
    source_file = Path(source) if source is not None and Path(source).is_file() else None
    for target in written_files(path):
        if target.is_symlink() and not target.exists():
            raise UsageError(f"output {target} is a broken link: refused (the export would write where it points)")
        if not target.exists():
            continue
        if not target.is_file():
            raise UsageError(f"output {target} exists and is not a regular file (a FIFO, a device, a socket): "
                             "refused; choose another output file")
        if source_file is not None and os.path.samefile(target, source_file):
            raise UsageError(f"output {target} is the model being exported ({source}): writing it would destroy "
                             "the model; choose another output file")
    if path.is_file() and not overwrite and not _earlier_export(path):
        raise UsageError(f"output {path} exists and is not an earlier export: refused; replace it (overwrite), or "
                         "choose another output file")
    if format is not None and not path.name.endswith(_ENDINGS[format]):
        raise UsageError(f"output {path}: a {format} file's name ends in {' or '.join(_ENDINGS[format])}")


def default_output(model: str | Path, format: str) -> Path:
    """``runs/x/best.pt`` -> ``runs/x/best.onnx`` (or ``best.torchscript.pt``); a registry name -> ``./NAME.onnx``."""
    path = Path(model)
    from cnnlab.models.files import is_checkpoint_file

    checkpoint = is_checkpoint_file(path)
    stem = path.stem if checkpoint else str(model).replace("/", "_")
    parent = path.parent if checkpoint else Path(".")
    return parent / f"{stem}{_SUFFIXES[format]}"


def sample_batch(preprocessing: Preprocessing, batch: int, seed: int = 0) -> torch.Tensor:
    """A seeded random ``uint8`` batch of the model's input size."""
    gen = torch.Generator().manual_seed(seed)
    size = preprocessing.crop_size
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)


def export_model(
    model: str | Path | LoadedModel,
    format: str | ExportFormat,
    out: str | Path | None = None,
    *,
    tolerance: float = DEFAULT_EXPORT_TOLERANCE,
    check_batch: int = 3,
    opset: int | None = None,
    weights: str | Path | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export a checkpoint of ``cnnlab train`` (or any PyTorch model :func:`~cnnlab.models.load.load_torch` accepts).

    Args:
        model: a checkpoint path, a registry name (loaded by :func:`~cnnlab.models.load.load_torch`), or a
            loaded model (moved to the CPU, fp32).
        format: ``torchscript`` or ``onnx``.
        out: the file to write (default: next to the checkpoint, see :func:`default_output`); never the
            checkpoint itself, nor a FIFO or device (:func:`check_export_path`).
        tolerance: the largest accepted absolute difference of the logits.
        check_batch: images in the check batch (the export itself traces a batch of 2).
        opset: ONNX opset version (default: the exporter's).
        weights: a weights file for a registry model (default: the usual search, see :mod:`cnnlab.models.weights`).
        overwrite: replace an existing ``out`` that an earlier export did not write.

    Raises:
        ExportMismatchError: the exported file does not reproduce the model within ``tolerance``.
        UsageError: ``out`` is a folder, the model file itself or not a regular file; unknown format.
        OutputError: the output folder cannot be made or written (a file in its place, no
            permission, disk full).
        CnnlabError: the export failed.
    """
    kind = parse_choice(ExportFormat, format, "export format")
    if not tolerance >= 0:
        raise CnnlabError(f"tolerance must be >= 0, got {tolerance}")
    if check_batch < 1:
        raise CnnlabError(f"check_batch must be >= 1, got {check_batch}")
    format = kind.value
    started = time.perf_counter()
    if weights is not None and isinstance(model, LoadedModel):
        raise UsageError("weights apply to a model name, not to a loaded model")
    source = None if isinstance(model, LoadedModel) else model
    if out is not None or source is not None:  # checked before the model is loaded
        check_export_path(Path(out) if out is not None else default_output(str(source), format), source,
                          overwrite=overwrite, format=format)
    loaded = model if isinstance(model, LoadedModel) else load_torch(
        ModelSource(name=str(model), weights=None if weights is None else Path(weights)),
        RuntimeOptions(device="cpu", channels_last=False, fold_bn=False),
        progress=False)
    name = loaded.name
    module = loaded.module.float().to("cpu").eval()
    pp = loaded.preprocessing
    wrapper = UInt8Classifier(module, pp).eval()
    path = Path(out) if out is not None else default_output(name, format)
    check_export_path(path, loaded.weights_path or source, overwrite=overwrite, format=format)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make the folder {path.parent} for {path.name}: {exc.strerror or exc}") from None
    trace_input = sample_batch(pp, 2, seed=1)
    check = sample_batch(pp, check_batch, seed=0)
    with torch.inference_mode():  # the model as cnnlab runs it (predict, bench)
        reference = LoadedModel(spec=loaded.spec, module=module, device=torch.device("cpu"))(check)

    def made_with(exporter: str) -> float:
        """Write ``path`` with ``exporter`` and check it: its largest logit difference from PyTorch."""
        try:
            if format == "torchscript":
                _export_torchscript(wrapper, trace_input, path)
            else:
                write_onnx(wrapper, trace_input, path, ["logits"], opset=opset, exporter=exporter)
        except CnnlabError:
            raise
        except OSError as exc:
            _remove(path)
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}; nothing was kept") from None
        except Exception as exc:  # exporters fail in many ways; say which model and format
            raise CnnlabError(f"{format} export of {name} failed: {type(exc).__name__}: {exc}") from exc
        try:
            exported = _run_exported(format, path, check)
        except CnnlabError:
            raise
        except Exception as exc:  # the runtime refuses the graph (a batch size fixed at tracing, an unknown op)
            _remove(path)
            raise ExportMismatchError(f"the {format} export of {name} does not run on a batch of {check_batch} "
                                      f"({refusal(exc)}); {path} was removed") from exc
        if exported.shape != reference.shape:
            _remove(path)
            raise ExportMismatchError(
                f"the {format} export of {name} gives outputs of shape {tuple(exported.shape)} for a batch of "
                f"{check_batch}, PyTorch gives {tuple(reference.shape)}; {path} was removed"
            )
        diff = float((exported - reference).abs().max())
        if not diff <= tolerance:
            _remove(path)
            raise ExportMismatchError(
                f"the {format} export of {name} differs from the PyTorch model by up to {diff:.3g} on a sample "
                f"batch (tolerance {tolerance:g}); {path} was removed"
            )
        return diff

    exporter, diff = first_that_works(onnx_exporters(wrapper) if format == "onnx" else ("torch.jit",), made_with,
                                      path)
    meta_path = path.with_name(path.name + ".json")
    spec = loaded.spec
    meta = {
        "model": name,
        "format": format,
        "source": spec.source,
        "random_weights": loaded.random_weights,
        "weights_file": str(loaded.weights_path) if loaded.weights_path else None,
        "spec": {"arch": spec.arch, "num_params": loaded.params or sum(p.numel() for p in module.parameters()),
                 "gmacs": spec.gmacs,
                 "acc1": spec.acc1, "acc5": spec.acc5, "license": spec.license},
        "classes": list(loaded.categories),
        "preprocessing": pp.to_dict(),
        "input": {
            "name": "images",
            "dtype": "uint8",
            "layout": "NCHW, RGB",
            "shape": ["N", 3, pp.crop_size, pp.crop_size],
            "note": "resize the shorter side to resize_size, centre-crop to crop_size; "
            "normalisation with mean/std is inside the model",
        },
        "output": {"name": "logits", "dtype": "float32", "shape": ["N", len(loaded.categories)]},
        "check": {"batch": check_batch, "max_abs_diff": diff, "tolerance": tolerance},
        "exporter": exporter,
    }
    if spec.source == "checkpoint" and loaded.weights_path is not None:
        from cnnlab.models.checkpoint import read_checkpoint

        unknown = read_checkpoint(loaded.weights_path).get("unknown")
        if isinstance(unknown, dict):  # the "none of these" threshold train calibrated travels with the model
            meta["unknown"] = unknown
    try:
        meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        _remove(path)
        with contextlib.suppress(OSError):
            meta_path.unlink(missing_ok=True)
        raise OutputError(f"cannot write {meta_path}: {exc.strerror or exc}; {path} was removed with it") from None
    return ExportResult(
        model=name,
        format=format,
        path=path,
        metadata_path=meta_path,
        classes=tuple(loaded.categories),
        input_shape=tuple(check.shape),
        check_batch=check_batch,
        max_abs_diff=diff,
        tolerance=tolerance,
        seconds=round(time.perf_counter() - started, 3),
    )


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but TorchScript files are what many
        # runtimes (LibTorch, TorchServe, mobile) still load. Tracer warnings are moot: the result
        # is checked numerically, at another batch size, right after.
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(wrapper, example, check_trace=False)
        traced = torch.jit.freeze(traced.eval())
        torch.jit.save(traced, str(path))


#: torch's ONNX exporters, tried in this order (:func:`onnx_exporters`): the TorchScript-based one makes the graph
#: 3-6x faster than the dynamo one (efficientnet_lite0 2.4 s against 13.5 s on 2 cores, resnet50 3.6 s) and ONNX
#: Runtime runs both as fast; torch deprecates it, so the dynamo exporter takes over where it fails, is gone, or
#: its graph does not reproduce the model.
ONNX_EXPORTERS = ("torchscript", "dynamo")


def onnx_exporters(module: nn.Module) -> tuple[str, ...]:
    """The exporters to try for ``module``, in order: only the dynamo one for weights above protobuf's limit."""
    return ("dynamo",) if _needs_external_data(module) else ONNX_EXPORTERS


def _needs_external_data(module: nn.Module) -> bool:
    return sum(p.numel() * p.element_size() for p in module.parameters()) > _ONNX_SINGLE_FILE_BYTES


def refusal(exc: BaseException) -> str:
    """What a runtime said when it refused an exported graph, in one line (its messages run to pages)."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def first_that_works(exporters: Sequence[str], attempt: Callable[[str], T], path: Path) -> tuple[str, T]:
    """``(exporter, attempt(exporter))`` for the first of ``exporters`` whose attempt raises no
    :class:`CnnlabError` (``path`` removed after each failure); the last failure is raised, naming the others."""
    failed: list[str] = []
    for exporter in exporters:
        try:
            return exporter, attempt(exporter)
        except CnnlabError as exc:
            if exporter == exporters[-1]:
                if failed:  # say what each exporter did
                    exc.args = (f"{exc} (the {' and '.join(failed)} tried first)",)
                raise
            failed.append(f"{exporter} exporter: {exc}")
            _remove(path)  # the next exporter tries
    raise CnnlabError("no exporter to try")


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str], *, opset: int | None = None,
               exporter: str = "dynamo") -> None:
    """``module`` (one uint8 ``images`` input, any batch size) as an ONNX file, with ``exporter``
    (:data:`ONNX_EXPORTERS`). The caller checks the file against the module."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise CnnlabError("ONNX export needs onnx and onnxscript: pip install 'cnnlab[export]'") from None
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic: dict[str, Any] = {"dynamic_shapes": ({0: batch},), "dynamo": True,
                                   "external_data": _needs_external_data(module)}
    else:
        dynamic = {"dynamic_axes": {name: {0: "batch"} for name in ["images", *outputs]}, "dynamo": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=outputs,
                          opset_version=opset, verbose=False, **dynamic)


def _run_exported(format: str, path: Path, batch: torch.Tensor) -> torch.Tensor:
    """Load the exported file back and run it on ``batch`` (ONNX through ONNX Runtime)."""
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            logits: torch.Tensor = loaded(batch)
            return logits.float()
    try:
        import onnxruntime as ort
    except ImportError:
        raise CnnlabError("checking the ONNX export needs onnxruntime: pip install 'cnnlab[export]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(["logits"], {"images": batch.numpy()})
    return torch.from_numpy(output).float()


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)
