"""``review()``: the whole check of one labelled image set, from files to ranked findings."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError, DatasetError
from cnnlab.imagedata.datasets import LabelledImages, SkippedFile, scan_dataset
from cnnlab.options import ReviewIssue
from cnnlab.progress import Progress
from cnnlab.review.config import STATE_DIR, ReviewConfig
from cnnlab.review.embeddings import Embeddings, embed_images
from cnnlab.review.files import FileCheck, check_files
from cnnlab.review.result import Finding, ReviewResult, rank_findings

#: Neighbours kept per image (off-topic distances, duplicate candidates, evidence).
NEIGHBOURS_KEPT = 50
#: Feature similarity below which two images are not checked for being duplicates.
MIN_DUPLICATE_SIMILARITY = 0.5


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


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def review(data: str | Path, config: ReviewConfig | None = None, *, progress: Progress | None = None) -> ReviewResult:
    """Find likely wrong labels, off-topic images, near-duplicates and unusable files in ``data``.

    ``data``: a class-folder tree, a CSV/JSONL manifest, or a ``cnnlab collect`` output folder.
    Raises :class:`DatasetError` when there is nothing to review.
    """
    from cnnlab.review.model import default_batch_size, load_review_model

    config = config or ReviewConfig()
    progress = progress or Progress()
    require_review_extra()
    images = scan_dataset(data)
    if not images.paths:
        raise DatasetError(f"{data} has no images to review")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    names = [images.classes[t] for t in images.targets]
    rel = [_relative(p, images.root) for p in images.paths]
    checks = check_files(images.paths)
    model, workers, load_notes = load_review_model(config, progress)
    seconds["load"] = time.perf_counter() - started
    t0 = time.perf_counter()
    emb = embed_images(model, images.paths, labels=names,
                       cache_dir=images.root / STATE_DIR if config.cache else None,
                       batch_size=config.batch_size or default_batch_size(model), workers=workers, progress=progress)
    seconds["embed"] = time.perf_counter() - t0
    findings = _file_findings(images, rel, names, checks, emb.skipped, config.min_side)
    notes = load_notes + _dataset_notes(images, data)
    rows = np.flatnonzero(emb.ok)
    if len(rows) >= 2:
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):  # small matrices: threads only wait for each other
            found, more_notes = _analyse(images, rows, emb, checks, rel, names, config, model.categories, progress)
        findings += found
        notes += more_notes
        seconds["analyse"] = time.perf_counter() - t0
    else:
        notes.append("fewer than two readable images: only unreadable and too-small files were looked for")
    seconds["total"] = time.perf_counter() - started
    return ReviewResult(
        source=str(data), root=images.root, model=model.name, classes=list(images.classes),
        class_counts=images.class_counts(), images=len(images), findings=rank_findings(findings), notes=notes,
        embedded=emb.computed, from_cache=emb.from_cache, seconds=seconds,
        settings={k: v for k, v in vars(config).items() if k != "mapping_file"} | {"mapping_file": str(config.mapping_file or "")}
        | {"runtime": model.runtime_info()},
    )


def _dataset_notes(images: LabelledImages, data: str | Path) -> list[str]:
    notes = []
    if len(images.classes) == 1:
        notes.append(f"{data} has a single class ({images.classes[0]!r}): wrong labels cannot be looked for")
    if images.empty_classes:
        notes.append(f"empty class folders: {', '.join(images.empty_classes)}")
    missing = [s for s in images.skipped if s.reason == "missing"]
    if missing:
        notes.append(f"{len(missing)} files listed in the manifest are not on disk (e.g. {missing[0].path})")
    others: dict[str, list[SkippedFile]] = {}
    for s in images.skipped:  # FIFOs, devices, symlink loops, unreadable folders: never images, still worth saying
        if s.reason not in ("missing", "duplicate"):
            others.setdefault(s.reason, []).append(s)
    for reason, items in sorted(others.items()):
        example = items[0]
        notes.append(f"{len(items)} {'entry' if len(items) == 1 else 'entries'} not read ({reason}), "
                     f"e.g. {example.path}" + (f": {example.detail}" if example.detail else ""))
    return notes


def _file_findings(images: LabelledImages, rel: list[str], names: list[str], checks: FileCheck,
                   skipped: list[SkippedFile], min_side: int) -> list[Finding]:
    findings: list[Finding] = []
    bad: dict[int, tuple[str, str]] = dict(checks.unreadable)
    where = {str(p): i for i, p in enumerate(images.paths)}
    for s in skipped:
        i = where.get(s.path)
        if i is not None:
            bad.setdefault(i, (s.reason, s.detail))
    for i, (reason, detail) in bad.items():
        findings.append(Finding(rel[i], names[i], ReviewIssue.UNREADABLE, 1.0, detail=f"{reason}: {detail}" if detail else reason,
                                evidence={"reason": reason}))
    for i in checks.too_small(min_side):
        if i not in bad:
            w, h = checks.sizes[i] or (0, 0)
            findings.append(Finding(rel[i], names[i], ReviewIssue.TOO_SMALL, 1.0, detail=f"{w}x{h} pixels (below {min_side})",
                                    evidence={"size": [w, h]}))
    return findings


def _analyse(images: LabelledImages, rows: np.ndarray, emb: Embeddings, checks: FileCheck, rel: list[str], names: list[str],
             config: ReviewConfig, categories: tuple[str, ...], progress: Progress) -> tuple[list[Finding], list[str]]:
    """Duplicates, wrong labels and off-topic images among the readable images (``rows``)."""
    from cnnlab.review.duplicates import FINE_SIDE, find_duplicates, thumbnail
    from cnnlab.review.mislabel import find_mislabels
    from cnnlab.review.neighbours import nearest_neighbours
    from cnnlab.review.offtopic import find_offtopic, imagenet_mass

    features = emb.features[rows]
    targets = np.asarray(images.targets)[rows]
    paths = [images.paths[i] for i in rows]
    nb = nearest_neighbours(features, NEIGHBOURS_KEPT)
    progress.start("thumbs", "thumbnails for duplicates", total=len(rows))
    thumbs = []
    too_small = set(checks.too_small(config.min_side))  # reported as such; too little left to compare
    for i, p in zip(rows.tolist(), paths):
        thumbs.append(None if i in too_small else _thumb_or_none(thumbnail, p))
        progress.update("thumbs", advance=1)
    progress.finish("thumbs")
    progress.start("analyse", "duplicates, labels, off-topic", total=3)
    dups = find_duplicates(nb, thumbs, [checks.pixels(i) for i in rows],
                           lambda j: _thumb_or_none(thumbnail, paths[j], FINE_SIDE), threshold=config.duplicate_match,
                           candidates=config.duplicate_candidates, min_similarity=MIN_DUPLICATE_SIMILARITY)
    progress.update("analyse", advance=1, info=f"{dups.checked_pairs:,} pairs checked")
    mis = find_mislabels(features, targets, images.classes, folds=config.folds,
                         regularization=config.regularization, seed=config.seed)
    progress.update("analyse", advance=1, info=f"{config.folds}-fold probabilities")
    mass, why_not = imagenet_mass(emb.logits[rows], images.classes, categories, config.mapping_file)
    off = find_offtopic(nb, targets, len(images.classes), k=config.neighbours, z_threshold=config.offtopic_z,
                        groups=dups.group, pred_probs=mis.pred_probs, mass=mass)
    progress.finish("analyse")
    notes = mis.notes + off.notes + ([why_not] if why_not else [])
    imagenet_probs = _softmax(emb.logits[rows]) if len(categories) == emb.logits.shape[1] else None
    findings: list[Finding] = []
    for j, i in enumerate(rows.tolist()):
        neighbours = [[rel[rows[n]], names[rows[n]], round(float(s), 3)]
                      for n, s in zip(nb.index[j][:3].tolist(), nb.similarity[j][:3].tolist())]
        if dups.flagged[j]:
            k = int(dups.keeper[j])
            across = targets[k] != targets[j]
            findings.append(Finding(
                rel[i], names[i], ReviewIssue.DUPLICATE, float(dups.score[j]),
                detail=f"near-duplicate of {rel[rows[k]]}" + (f" (class {names[rows[k]]!r})" if across else ""),
                evidence={"kept": rel[rows[k]], "kept_label": names[rows[k]], "match": round(float(dups.score[j]), 3),
                          "similarity": round(float(_cosine(features[j], features[k])), 3),
                          "group": int(dups.group[j]), "across_classes": bool(across)}))
        if off.flagged[j]:
            evidence = {"z": round(float(off.z[j]), 2), "nearest_class": images.classes[off.nearest_class[j]],
                        "neighbours": neighbours}
            if mass is not None:
                evidence["imagenet_mass"] = round(float(mass[j]), 3)
            if imagenet_probs is not None:
                evidence["model_top"] = _top(imagenet_probs[j], categories)
            findings.append(Finding(rel[i], names[i], ReviewIssue.OFFTOPIC, float(off.score[j]),
                                    detail=f"far from every class (z {off.z[j]:.1f}; nearest: {evidence['nearest_class']})",
                                    evidence=evidence))
        elif mis.flagged[j]:
            probs = mis.pred_probs[j]
            suggested = images.classes[mis.suggested[j]]
            findings.append(Finding(
                rel[i], names[i], ReviewIssue.MISLABEL, float(mis.score[j]), suggested_label=suggested,
                detail=f"p({names[i]}) {probs[targets[j]]:.2f}, p({suggested}) {probs[mis.suggested[j]]:.2f}",
                evidence={"probabilities": _top(probs, images.classes), "neighbours": neighbours}))
    return findings, notes


def _thumb_or_none(make: Callable[..., np.ndarray], path: Path, *args: int) -> np.ndarray | None:
    from cnnlab.errors import ImageDecodeError

    try:
        return make(path, *args)
    except ImageDecodeError:
        return None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def _top(probs: np.ndarray, names: tuple[str, ...] | list[str], k: int = 3) -> list[list[object]]:
    order = np.argsort(-np.nan_to_num(probs, nan=-1.0), kind="stable")[:k]
    return [[names[c], round(float(probs[c]), 3)] for c in order]
