"""The review job: check the output folder -> lock it -> find what is wrong with the set -> write the outputs.

:func:`run` (also ``cnnlab.review_images``) is the whole job; :func:`review` is its compute step alone
(no output written), for callers that want the findings in memory. What is looked for is up to the
detectors (:mod:`cnnlab.review.detectors`): the job runs those of the kinds the config asks for, and
loads the model only when one of them needs embeddings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError, DatasetError, UsageError
from cnnlab.imagedata.datasets import LabelledImages, SkippedFile, scan_dataset
from cnnlab.imagedata.records import is_record
from cnnlab.progress import Progress
from cnnlab.review.config import OUTPUT_DIR, RUN_FILES, STATE_DIR, ReviewConfig
from cnnlab.review.detectors import Detector, Need, detectors_for
from cnnlab.review.report import write_review_outputs
from cnnlab.review.result import Finding, ReviewResult, rank_findings
from cnnlab.review.state import own_folder

if TYPE_CHECKING:
    from cnnlab.outputs import OutputFolder
    from cnnlab.runtime.base import Runtime


class MissingExtraError(CnnlabError):
    """The optional dependencies of ``cnnlab review`` are not installed."""


def require_review_extra() -> None:
    """Raise :class:`MissingExtraError` naming the extra unless cleanlab and scikit-learn import."""
    missing = []
    for module, package in (("cleanlab", "cleanlab"), ("sklearn", "scikit-learn")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise MissingExtraError(f"cnnlab review needs {' and '.join(missing)}: pip install 'cnnlab[review]'")


def data_root(data: Path) -> Path:
    """The folder a data set lives in: ``data`` itself, or the folder of a manifest."""
    return data if data.is_dir() else data.parent


def output_folder(data: Path, out: str | Path | None = None) -> OutputFolder:
    """Where a review of ``data`` writes: ``out``, or ``DATA/.cnnlab/review`` (refused if a link or a file leads elsewhere)."""
    from cnnlab.outputs import OutputFolder

    folder = Path(out) if out is not None else own_folder(data_root(data), STATE_DIR, OUTPUT_DIR)
    return OutputFolder(folder, "review", run_files=RUN_FILES, data=data)


def run(config: ReviewConfig, *, out: str | Path | None = None, overwrite: bool = False,
        progress: Progress | None = None) -> ReviewResult:
    """Review ``config.data`` and write ``review.csv``, ``review.json`` and ``review.html`` into ``out``.

    ``out`` None: ``DATA/.cnnlab/review``, review's own folder, which always holds the latest review
    (replaced without asking). Any other output folder follows :class:`~cnnlab.outputs.OutputFolder`'s
    rules, checked before any work: not a file, not inside the data folder (unless hidden), and not
    holding an earlier review unless ``overwrite``. The folder is locked from the moment the model is
    loaded until the outputs are written; ``result.files`` names them.

    Raises:
        UsageError: no data, a data path that does not exist, an unusable output folder.
        DatasetError: nothing to review; cnnlab's own folder in the data set is a link or a file.
        MissingExtraError: a detector asked for needs ``cnnlab[review]``.
    """
    data = _data_of(config)
    folder = output_folder(data, out)
    folder.check(replace=overwrite or out is None)
    job = _Review.prepare(config, progress or Progress())
    folder.create()
    with folder.lock():
        result = job.compute()
        result.files = write_review_outputs(result, folder.path)  # each file replaced atomically: no clearing first
    return result


#: The public name of :func:`run` (``cnnlab.review_images``).
review_images = run


def review(data: str | Path | None = None, config: ReviewConfig | None = None, *,
           progress: Progress | None = None) -> ReviewResult:
    """:func:`run`'s compute step alone: the findings of ``data`` (or ``config.data``), nothing written.

    Raises :class:`DatasetError` when there is nothing to review.
    """
    config = config or ReviewConfig()
    if data is not None:
        config = dataclasses.replace(config, data=Path(data))
    return _Review.prepare(config, progress or Progress()).compute()


def _data_of(config: ReviewConfig) -> Path:
    if config.data is None:
        raise UsageError("no data to review: give the config a data folder or manifest")
    from cnnlab.imagedata.sources import record_kind

    if not config.data.exists() and record_kind(config.data) is None:
        raise UsageError(f"no such folder or manifest: {config.data}")
    return config.data


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


@contextlib.contextmanager
def _blas_single_thread() -> Iterator[None]:
    """Small matrices: BLAS threads only wait for each other (threadpoolctl comes with scikit-learn)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclasses.dataclass
class _Review:
    """One review between its checks (nothing written yet) and its findings."""

    config: ReviewConfig
    progress: Progress
    detectors: list[Detector]
    images: LabelledImages
    model: Runtime | None
    workers: int | None
    notes: list[str]
    started: float

    @classmethod
    def prepare(cls, config: ReviewConfig, progress: Progress) -> _Review:
        """Everything that can fail quickly, before anything is written: the extra, the data, the model."""
        started = time.perf_counter()
        data = _data_of(config)
        detectors = detectors_for(config.kinds)
        if any(Need.PROBABILITIES in d.needs for d in detectors):
            require_review_extra()
        images = scan_dataset(data, image_column=config.image_column, label_column=config.label_column)
        if not images.paths:
            raise DatasetError(f"{data} has no images to review")
        embed = any(d.needs_embeddings() for d in detectors)
        if embed and config.cache:
            own_folder(images.root, STATE_DIR)  # the embeddings cache: never through a link
        model: Runtime | None = None
        notes: list[str] = []
        workers = config.workers
        if embed:
            from cnnlab.review.model import load_review_model

            model, workers, notes = load_review_model(config, progress)
        return cls(config, progress, detectors, images, model, workers, notes, started)

    def compute(self) -> ReviewResult:
        from cnnlab.review.evidence import Evidence
        from cnnlab.review.files import check_files

        config, images, progress = self.config, self.images, self.progress
        data = _data_of(config)
        seconds: dict[str, float] = {"load": time.perf_counter() - self.started}
        names = [images.classes[t] for t in images.targets]
        rel = [_relative(p, images.root) for p in images.paths]
        checks = check_files(images.paths)
        notes = self.notes + _dataset_notes(images, data)
        emb, embedded, from_cache = None, 0, 0
        if self.model is not None:
            from cnnlab.review.embeddings import embed_images
            from cnnlab.review.model import default_batch_size

            t0 = time.perf_counter()
            emb = embed_images(self.model, images.paths, labels=names,
                               cache_dir=images.root / STATE_DIR if config.cache else None,
                               batch_size=config.batch_size or default_batch_size(self.model), workers=self.workers,
                               progress=progress)
            seconds["embed"] = time.perf_counter() - t0
            notes += emb.notes
            embedded, from_cache = emb.computed, emb.from_cache
        evidence = Evidence(images, rel, names, checks, config, embeddings=emb,
                            categories=self.model.categories if self.model is not None else (), progress=progress)
        runnable = self.detectors
        if self.model is not None and len(evidence.rows) < 2:
            runnable = [d for d in self.detectors if not d.needs_embeddings()]
            notes.append("fewer than two readable images: only unreadable and too-small files were looked for")
        t0 = time.perf_counter()
        findings: list[Finding] = []
        progress.start("analyse", ", ".join(d.issue.value for d in runnable), total=len(runnable))
        with _blas_single_thread():
            for detector in runnable:
                findings += detector.find(evidence)
                progress.update("analyse", advance=1, info=detector.issue.value)
        progress.finish("analyse")
        seconds["analyse"] = time.perf_counter() - t0
        seconds["total"] = time.perf_counter() - self.started
        settings = config.settings() | ({"runtime": self.model.runtime_info()} if self.model is not None else {})
        return ReviewResult(
            source=str(data), root=images.root, model=self.model.name if self.model is not None else config.model,
            classes=list(images.classes), class_counts=images.class_counts(), images=len(images),
            findings=rank_findings(findings), notes=notes + evidence.notes, embedded=embedded, from_cache=from_cache,
            seconds=seconds, settings=settings)


#: What :func:`~cnnlab.imagedata.datasets.scan_dataset` says of a manifest's row whose file is not there.
_NOT_ON_DISK = "listed in the manifest but not on disk"


def _dataset_notes(images: LabelledImages, data: str | Path) -> list[str]:
    notes = []
    if len(images.classes) == 1:
        notes.append(f"{data} has a single class ({images.classes[0]!r}): wrong labels cannot be looked for")
    if images.empty_classes:
        notes.append(f"empty class folders: {', '.join(images.empty_classes)}")
    missing = [s for s in images.skipped if s.reason == "missing"]
    unlabelled = [s for s in missing if is_record(s.path)]  # a sample or row without a label: not a lost file
    if unlabelled:
        n, example = len(unlabelled), unlabelled[0]
        notes.append(f"{n} record{'' if n == 1 else 's'} without a label not reviewed (e.g. {example.path}"
                     + (f": {example.detail})" if example.detail else ")"))
    missing = [s for s in missing if not is_record(s.path)]
    if missing:
        n, example = len(missing), missing[0]
        if all(s.detail == _NOT_ON_DISK for s in missing):
            notes.append(f"{n} file{'' if n == 1 else 's'} listed in the manifest {'is' if n == 1 else 'are'} "
                         f"not on disk (e.g. {example.path})")
        else:
            notes.append(f"{n} file{'' if n == 1 else 's'} not found (e.g. {example.path}"
                         + (f": {example.detail})" if example.detail else ")"))
    others: dict[str, list[SkippedFile]] = {}
    for s in images.skipped:  # FIFOs, devices, symlink loops, unreadable folders: never images, still worth saying
        if s.reason not in ("missing", "duplicate"):
            others.setdefault(s.reason, []).append(s)
    for reason, items in sorted(others.items()):
        example = items[0]
        notes.append(f"{len(items)} {'entry' if len(items) == 1 else 'entries'} not read ({reason}), "
                     f"e.g. {example.path}" + (f": {example.detail}" if example.detail else ""))
    return notes
