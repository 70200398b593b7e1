"""Top-k predictions for image files from a pretrained or fine-tuned classifier: :func:`predict`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from cnnlab.errors import DatasetError, UsageError
from cnnlab.imagedata.datasets import SkippedFile, expand_paths
from cnnlab.models.registry import OFFLINE_MODEL
from cnnlab.options import DEFAULT_CALIBRATION_IMAGES, ModelSource, Quantization, RuntimeOptions
from cnnlab.progress import Progress

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cnnlab.runtime.base import ExportedModel, Runtime
    from cnnlab.runtime.batches import InferenceBatch


@dataclass(frozen=True)
class ClassScore:
    """One of the top-k classes of an image."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, best first."""

    path: str
    top: tuple[ClassScore, ...]
    #: "None of these": the top class's probability is below the unknown threshold (when one applies).
    unknown: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "top": [{"index": c.index, "label": c.label, "probability": c.probability} for c in self.top],
            "unknown": self.unknown,
        }


@dataclass
class PredictResult:
    """Predictions for every usable file and a record of every file that was skipped."""

    model: str
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    random_weights: bool = False
    #: What ran the model: backend, precision, execution provider, threads (and the ONNX file).
    runtime: dict[str, Any] = field(default_factory=dict)
    #: For a checkpoint of ``cnnlab train``: which of the files it was trained or validated on
    #: (:meth:`cnnlab.models.leakage.OverlapReport.to_dict`); ``None`` for other models.
    leakage: dict[str, Any] | None = None
    #: The top-class probability below which an image is ``unknown`` (``None``: none applied).
    unknown_threshold: float | None = None

    @property
    def ok(self) -> bool:
        return not self.skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "random_weights": self.random_weights,
            "runtime": self.runtime,
            "leakage": self.leakage,
            "unknown_threshold": self.unknown_threshold,
            "predictions": [p.to_dict() for p in self.predictions],
            "skipped": [s.to_dict() for s in self.skipped],
        }


#: Images per batch when ``runtime.batch_size`` is not given and there are too few images to measure.
DEFAULT_PREDICT_BATCH = 16
#: From this many files on, a batch size or loader workers not given are measured (a few seconds pay back).
MIN_IMAGES_TO_MEASURE = 64
#: Seconds the measured choice may take in predict.
PREDICT_AUTO_BUDGET_S = 3.0


def predict(
    inputs: Sequence[str | Path],
    *,
    model: str | Path | ModelSource | Runtime = OFFLINE_MODEL,
    topk: int = 5,
    runtime: RuntimeOptions | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    progress: Progress | None = None,
    auto_backend: bool | None = None,
    unknown_threshold: float | str | None = None,
    image_column: str | None = None,
) -> PredictResult:
    """Classify files, folders (searched recursively) and glob patterns.

    ``model`` is a registry name, a checkpoint of ``cnnlab train``, an ``.onnx`` file of ``cnnlab
    export``, a :class:`~cnnlab.options.ModelSource` (the same, with a weights file or folder), or a
    loaded model (:func:`cnnlab.load_model`). ``runtime`` says how a model given by name runs (device,
    backend, threads, batch size, loader workers: :class:`~cnnlab.options.RuntimeOptions`; ``None``: the
    defaults, batches of :data:`DEFAULT_PREDICT_BATCH`); an int8 backend calibrates on a sample of
    ``calibration_images`` of the files to predict. ``auto_backend`` (default: when ``runtime`` is ``None``)
    runs a model given by name on the fastest runtime that reproduces it
    (:func:`cnnlab.runtime.loader.choose_backend`: ONNX Runtime on the CPU when installed, else PyTorch)
    instead of ``runtime.backend``; ``result.runtime["backend_choice"]`` says which and why. A batch size or
    loader workers left ``None`` are measured on the first images when there are enough of them
    (:mod:`cnnlab.runtime.autotune`; ``result.runtime["auto"]``), except for an ONNX Runtime or OpenVINO model on the
    CPU: that one runs without torch (:mod:`cnnlab.runtime.host_loop`), ``workers`` decoding threads (default: one
    per four cores, at least one) and batches of :data:`DEFAULT_PREDICT_BATCH` unless given
    (``result.runtime["host_loop"]``). Files that cannot be decoded are listed in
    ``result.skipped`` with their reason; the other files are still predicted. Progress is reported as
    task ``predict``, in files. ``unknown_threshold`` marks an image ``unknown`` ("none of these") when its top
    class's probability is below it; ``"auto"``: the threshold ``cnnlab train`` calibrated on its validation
    images and stored in the checkpoint (:mod:`cnnlab.train.unknown`), none for other models. An input may be a
    data set stored as records (a Hugging Face dataset, Parquet files, WebDataset shards: ``docs/datasets.md``);
    ``image_column`` names its image column when its features do not.

    Raises:
        WeightsIntegrityError: the model gives outputs that are not one row per image (an ONNX graph that
            ignores the batch dimension).
    """
    from cnnlab.runtime.loader import load_runtime
    from cnnlab.runtime.quantize import calibration_sample

    if auto_backend is None:
        auto_backend = runtime is None
    runtime = runtime or RuntimeOptions()
    paths, skipped = expand_paths(inputs, image_column=image_column)
    if not paths:  # said before any model loads: nothing here to predict
        why = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3]) or "no image files in the folders given"
        raise DatasetError(f"nothing to predict ({why})")
    backend_choice = None
    if isinstance(model, (str, Path, ModelSource)):
        source = model if isinstance(model, ModelSource) else ModelSource(name=str(model))
        if auto_backend:
            from cnnlab.runtime.loader import choose_backend

            chosen, why = choose_backend(source, runtime, progress=progress)
            runtime = runtime.replace(backend=chosen)
            backend_choice = {"auto": True, "backend": chosen.value, "reason": why}
        int8 = runtime.backend.quantization is Quantization.INT8 and paths
        loaded = load_runtime(source, runtime, progress=progress,
                              calibration=calibration_sample(paths, calibration_images) if int8 else ())
    else:
        loaded = model
    result = PredictResult(loaded.name, skipped=list(skipped), random_weights=loaded.random_weights,
                           runtime=loaded.runtime_info())
    if backend_choice is not None:
        result.runtime["backend_choice"] = backend_choice
    checkpoint = _checkpoint_of(model, loaded)
    facts = export_facts(loaded) if checkpoint is not None else None
    if checkpoint is not None and paths:
        from cnnlab.models.leakage import overlap

        report = overlap(facts if facts is not None else checkpoint, paths, progress=progress, source=str(checkpoint))
        message = report.message()
        if message is not None:
            (progress or Progress()).note(message, warning=report.recorded)
        result.leakage = report.to_dict()
    name = _model_name(model)
    onnx_file = Path(name) if name is not None and name.endswith(".onnx") else None
    result.unknown_threshold = resolve_unknown_threshold(unknown_threshold, checkpoint, progress, onnx_file,
                                                         facts=facts)
    k = max(1, min(topk, loaded.spec.num_classes))
    categories = loaded.categories
    batch_size, workers = runtime.batch_size, runtime.workers
    batches: Iterator[InferenceBatch[Any]]
    if _runs_without_torch(loaded, runtime):
        from cnnlab.runtime.cores import default_workers
        from cnnlab.runtime.host_loop import run_host_inference

        batch_size = batch_size or DEFAULT_PREDICT_BATCH
        workers = max(1, default_workers("cpu")) if workers is None else workers  # threads: 1 measured best on 2 cores
        result.runtime["host_loop"] = {"batch_size": batch_size, "decode_threads": workers}
        batches = run_host_inference(loaded, paths, batch_size=batch_size, workers=workers,
                                     fast_decode=runtime.fast_decode, progress=progress, task="predict",
                                     description=f"predict {loaded.name}")
    else:
        from cnnlab.runtime.inference import run_inference

        if (batch_size is None or workers is None) and len(paths) >= MIN_IMAGES_TO_MEASURE:
            from cnnlab.runtime.autotune import choose_batch_and_workers

            auto = choose_batch_and_workers(loaded, paths, batch_size=batch_size, workers=workers,
                                            fast_decode=runtime.fast_decode, budget_s=PREDICT_AUTO_BUDGET_S,
                                            progress=progress)
            batch_size, workers = auto.batch_size, auto.workers
            result.runtime["auto"] = auto.to_dict()
        batches = run_inference(loaded, paths, batch_size=batch_size or DEFAULT_PREDICT_BATCH,
                                workers=workers, fast_decode=runtime.fast_decode, decode=runtime.decode,
                                progress=progress, task="predict", description=f"predict {loaded.name}")
    for batch in batches:
        result.skipped.extend(batch.skipped)
        values, indices = rank(batch.logits, k)
        for row, i in enumerate(batch.indices):
            top = tuple(ClassScore(int(c), categories[int(c)], float(p))
                        for c, p in zip(indices[row].tolist(), values[row].tolist()))
            unknown = result.unknown_threshold is not None and top[0].probability < result.unknown_threshold
            result.predictions.append(Prediction(str(paths[i]), top, unknown))
    return result


def _runs_without_torch(loaded: Runtime, runtime: RuntimeOptions) -> TypeGuard[ExportedModel]:
    """Whether ``loaded`` takes host arrays on the CPU and GPU decoding is not asked for: then
    :mod:`cnnlab.runtime.host_loop` runs it, decoding in threads, and torch is never imported (seconds of a
    small run, half a gigabyte of memory)."""
    from cnnlab.runtime.base import ExportedModel

    return isinstance(loaded, ExportedModel) and loaded.details.get("device") == "cpu" and runtime.decode != "device"


def rank(logits: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes of each row of ``logits`` (float32, on the CPU): (probabilities, class
    indices), best first, ties by lower index. The one ranking of predict and serve, so that the two give the
    same answers; in numpy, so that the loop without PyTorch ranks as the others do."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float32)
    exp = np.exp(x - x.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    indices = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(probabilities, indices, axis=1), indices


#: Fewer validation images than this make a calibrated unknown threshold a rough hint (said when it is used).
MIN_UNKNOWN_CALIBRATION = 30


def export_facts(loaded: Runtime) -> dict[str, Any] | None:
    """What the checkpoint behind ``loaded`` recorded, when ``loaded`` is its cached export and the export cache
    kept it (:func:`cnnlab.runtime.artifacts.checkpoint_facts`): read so, the checkpoint is never loaded in torch."""
    from cnnlab.runtime.artifacts import checkpoint_facts, exports_dir, read_sidecar
    from cnnlab.runtime.base import ExportedModel

    cache = exports_dir().resolve()
    if not isinstance(loaded, ExportedModel) or not loaded.file.resolve().is_relative_to(cache):
        return None
    facts = checkpoint_facts(loaded.file)
    if facts is None:  # an int8 version, cached in a folder of its own: the facts are beside its fp32 export
        quantized = read_sidecar(loaded.file).get("quantization")
        source = quantized.get("source_file") if isinstance(quantized, dict) else None
        if isinstance(source, str) and source and Path(source).resolve().is_relative_to(cache):
            facts = checkpoint_facts(Path(source))
    return facts


def _stored_unknown(checkpoint: Path | None, onnx_file: Path | None, facts: Mapping[str, Any] | None) -> object:
    """The ``unknown`` record of a checkpoint (kept with its cached export), or of an ``.onnx`` file's sidecar."""
    if facts is not None:
        return facts.get("unknown")
    if checkpoint is not None:
        from cnnlab.models.checkpoint import read_checkpoint

        return read_checkpoint(checkpoint).get("unknown")
    if onnx_file is not None:
        from cnnlab.runtime.artifacts import read_sidecar

        return read_sidecar(onnx_file).get("unknown")
    return None


def resolve_unknown_threshold(value: float | str | None, checkpoint: Path | None, progress: Progress | None,
                              onnx_file: Path | None = None, *, facts: Mapping[str, Any] | None = None,
                              ) -> float | None:
    """The threshold to apply: a number in [0, 1] as given, or (``"auto"``) the calibrated one stored in the
    checkpoint (``facts``: as its cached export kept it, :func:`export_facts`) or the ``.onnx`` file's sidecar
    (``serve`` resolves it as ``predict`` does)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() != "auto":
            try:
                value = float(value)
            except ValueError:
                raise UsageError(f"the unknown threshold (unknown_threshold) is a probability or auto, not {value!r}") \
                    from None
        else:
            entry = _stored_unknown(checkpoint, onnx_file, facts)
            stored = entry.get("threshold") if isinstance(entry, dict) else None
            if not isinstance(stored, (int, float)) or isinstance(stored, bool) or not 0 <= stored <= 1:
                (progress or Progress()).note("this model has no calibrated unknown threshold (only checkpoints of "
                                              "cnnlab train with validation images do, and their exports): none "
                                              "applied", warning=True)
                return None
            n = entry.get("n") if isinstance(entry, dict) else None
            if isinstance(n, int) and n < MIN_UNKNOWN_CALIBRATION:
                (progress or Progress()).note(f"the unknown threshold {stored:.3f} was calibrated on only {n} validation "
                                              f"images: treat 'unknown' as a rough hint", warning=True)
            return float(stored)
    if isinstance(value, bool) or not 0 <= float(value) <= 1:
        raise UsageError(f"the unknown threshold (unknown_threshold) must be a probability from 0 to 1, not {value!r}")
    return float(value)


def _model_name(model: object) -> str | None:
    """The name or path ``model`` was given by (``None`` for a loaded model)."""
    if isinstance(model, ModelSource):
        return model.name
    return str(model) if isinstance(model, (str, Path)) else None


def _checkpoint_of(model: object, loaded: Runtime) -> Path | None:
    """The ``cnnlab train`` checkpoint behind ``model``, if it is one (given by path, or loaded from one)."""
    from cnnlab.models.files import is_checkpoint_file

    if isinstance(model, ModelSource):
        model = model.name
    if isinstance(model, (str, Path)):
        return Path(model) if is_checkpoint_file(model) else None
    path = getattr(loaded, "weights_path", None)
    return Path(path) if path is not None and loaded.spec.source == "checkpoint" else None
