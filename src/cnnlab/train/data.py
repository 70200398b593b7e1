"""The images of a training run: its splits and the training loader.

Splits: a ``split.csv`` written by ``cnnlab split`` (or a manifest with a ``split`` column) is
used as given. Otherwise the images are split by :func:`cnnlab.imagedata.splits.make_split`: per class
(stratified), reproducibly from the seed, and with near duplicates (an image and its resized or
re-encoded copy) always in the same split, so that validation and test never see a copy of a
training image. A given split without validation images gets them the same way, from its
training images.

The training augmentation is :mod:`cnnlab.train.augment`'s.

Reproducibility: the training order and augmentations depend only on the loader's generator,
which the run re-seeds from ``(seed, epoch)`` at the start of every epoch (:func:`reseed`).
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, WeightedRandomSampler

from cnnlab.errors import DatasetError
from cnnlab.imagedata.datasets import (
    LabelledImages,
    SkippedFile,
    _read_manifest_rows,
    scan_dataset,
)
from cnnlab.imagedata.hashes import DEFAULT_NEAR_DUP_THRESHOLD
from cnnlab.imagedata.splits import SPLITS, make_split
from cnnlab.progress import Progress
from cnnlab.runtime.features import FeatureStore
from cnnlab.runtime.inference import Batch, ImageTransform, make_loader


@dataclass
class DataSplits:
    """The labelled images of a run, split, with one class list shared by every split."""

    classes: list[str]
    train: LabelledImages
    val: LabelledImages | None
    test: LabelledImages | None
    source: str
    skipped: list[SkippedFile] = field(default_factory=list)
    dropped_classes: list[str] = field(default_factory=list)

    def class_counts(self) -> dict[str, int]:
        """Training images per class."""
        return self.train.class_counts()

    def parts(self) -> list[tuple[str, LabelledImages]]:
        """``(split name, images)`` of the splits that have images."""
        named = (("train", self.train), ("val", self.val), ("test", self.test))
        return [(name, part) for name, part in named if part is not None]

    def fingerprint(self) -> str:
        """A hash of which file is in which split with which label (checked on resume)."""
        digest = hashlib.sha256()
        for name, part in self.parts():
            for p, t in zip(part.paths, part.targets):
                rel = p.relative_to(part.root) if p.is_relative_to(part.root) else p
                digest.update(f"{name}\0{rel.as_posix()}\0{self.classes[t]}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]

    def rows(self) -> list[tuple[str, str, str]]:
        """``(path, label, split)`` of every image (``data_split.csv``)."""
        return [(str(p), self.classes[t], name) for name, part in self.parts() for p, t in zip(part.paths, part.targets)]


def prepare_data(
    data: str | Path,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    near_dup_threshold: int = DEFAULT_NEAR_DUP_THRESHOLD,
    progress: Progress | None = None,
    crops: bool = True,
    image_column: str | None = None,
    label_column: str | None = None,
    store: FeatureStore | None = None,
) -> DataSplits:
    """Read ``data`` and split it: the data's own split when it has one, else :func:`cnnlab.imagedata.splits.make_split`.

    Class folders without images are left out (and listed in ``dropped_classes``); every class
    must have training images. A dataset stored as records (a Hugging Face dataset, Parquet files, WebDataset
    shards: :mod:`cnnlab.imagedata.sources`) uses its own ``train``/``validation``/``test`` splits when it has
    them; ``image_column``/``label_column`` name its columns. The offline model's features that the split computes
    (to keep crops of one photo together) are kept in ``store``. Raises :class:`DatasetError` for unusable data.
    """
    from cnnlab.imagedata.sources import record_kind

    progress = progress or Progress()
    if record_kind(data) is not None:
        return _prepare_records(data, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                columns={"image_column": image_column, "label_column": label_column})
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"no such folder or manifest: {data}")
    given = _given_split(data)
    skipped: list[SkippedFile] = []
    val: LabelledImages | None = None
    test: LabelledImages | None = None
    if given is None:
        everything = scan_dataset(data)
        skipped.extend(everything.skipped)
        dropped = list(everything.empty_classes)
        classes = [c for c in everything.classes if c not in dropped]
        train = _relabel(everything, classes, "train")
        if val_fraction > 0 or test_fraction > 0:
            train, val, test = _split(train, data if data.is_dir() else None, val=val_fraction, test=test_fraction,
                                      seed=seed, threshold=near_dup_threshold, crops=crops, progress=progress,
                                      store=store)
        source = (f"split of {data}: val {val_fraction:.0%}, test {test_fraction:.0%} per class, seed {seed}, "
                  "near duplicates together")
    else:
        manifest, names = given
        if "train" not in names:
            raise DatasetError(f"{manifest} has no rows with split 'train' (it has {', '.join(sorted(names))})")
        train_all = scan_dataset(data, split="train")
        dropped = list(train_all.empty_classes)
        classes = [c for c in train_all.classes if c not in dropped]
        train = _relabel(train_all, classes, "train")
        given_parts = {name: scan_dataset(data, split=name) for name in ("val", "test") if name in names}
        for part in (train_all, *given_parts.values()):
            skipped.extend(part.skipped)
        val, test = (_relabel(given_parts[n], classes, n) if n in given_parts else None for n in ("val", "test"))
        source = f"splits of {manifest}"
        if val is None and val_fraction > 0:
            train, val, _ = _split(train, None, val=val_fraction, test=0.0, seed=seed, threshold=near_dup_threshold,
                                   crops=crops, progress=progress, store=store)
            source += f" (val: {val_fraction:.0%} of train per class, seed {seed}, near duplicates together)"
    return _checked_splits(data, DataSplits(classes, train, val if val else None, test if test else None, source,
                                            skipped, dropped))


def _prepare_records(data: str | Path, *, val_fraction: float, test_fraction: float, seed: int,
                     columns: dict[str, str | None]) -> DataSplits:
    """:func:`prepare_data` for a dataset of records: its own splits, else a stratified seeded split.

    Near duplicates are not grouped here: :func:`cnnlab.imagedata.splits.make_split` works on a folder of files.
    """
    from cnnlab.imagedata.sources import SPLIT_ALIASES, dataset_splits

    available = dataset_splits(data)
    have = {name for name, aliases in SPLIT_ALIASES.items() if any(a in available for a in aliases)}
    val: LabelledImages | None = None
    test: LabelledImages | None = None
    if "train" in have:
        train_all = scan_dataset(data, split="train", **columns)
        dropped = list(train_all.empty_classes)
        classes = [c for c in train_all.classes if c not in dropped]
        train = _relabel(train_all, classes, "train")
        given = {name: scan_dataset(data, split=name, **columns) for name in ("val", "test") if name in have}
        skipped = [s for part in (train_all, *given.values()) for s in part.skipped]
        val, test = (_relabel(given[n], classes, n) if n in given else None for n in ("val", "test"))
        source = f"splits of {data}"
        if val is None and val_fraction > 0:
            train, val, _ = _stratified(train, val=val_fraction, test=0.0, seed=seed)
            source += f" (val: {val_fraction:.0%} of train per class, seed {seed})"
    else:
        everything = scan_dataset(data, **columns)
        skipped = list(everything.skipped)
        dropped = list(everything.empty_classes)
        classes = [c for c in everything.classes if c not in dropped]
        train = _relabel(everything, classes, "train")
        if val_fraction > 0 or test_fraction > 0:
            train, val, test = _stratified(train, val=val_fraction, test=test_fraction, seed=seed)
        source = f"split of {data}: val {val_fraction:.0%}, test {test_fraction:.0%} per class, seed {seed}"
    return _checked_splits(data, DataSplits(classes, train, val if val else None, test if test else None, source,
                                            skipped, dropped))


def _stratified(images: LabelledImages, *, val: float, test: float, seed: int,
                ) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
    """``images`` split per class, reproducibly from ``seed``: about ``val`` and ``test`` of each class, at
    least one image of each class left to train."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DatasetError(f"the validation and test fractions (val, test: {val}, {test}) must be in [0, 1) with a "
                           "sum below 1")
    rng = np.random.default_rng(seed)
    positions: dict[str, list[int]] = {name: [] for name in SPLITS}
    for target in range(len(images.classes)):
        members = [i for i, t in enumerate(images.targets) if t == target]
        order = [members[int(j)] for j in rng.permutation(len(members))]
        n_val = min(int(round(len(order) * val)), max(0, len(order) - 1))
        n_test = min(int(round(len(order) * test)), max(0, len(order) - 1 - n_val))
        positions["val"] += order[:n_val]
        positions["test"] += order[n_val:n_val + n_test]
        positions["train"] += order[n_val + n_test:]
    train, val_part, test_part = (images.subset(sorted(positions[name])) for name in SPLITS)
    return train, val_part, test_part


def _given_split(data: Path) -> tuple[Path, set[str]] | None:
    """The manifest that defines splits for ``data``, and the split names it has; ``None`` if none."""
    manifest = data / "split.csv" if data.is_dir() else data
    if not manifest.is_file():
        return None
    rows = _read_manifest_rows(manifest)
    if not rows or "split" not in rows[0]:
        return None
    return manifest, {r.get("split", "") for r in rows if r.get("status", "ok") == "ok"}


def _relabel(images: LabelledImages, classes: list[str], split: str) -> LabelledImages:
    """``images`` with class ids over ``classes``; a class outside them is an error."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({images.classes[t] for t in images.targets} - set(classes))
    if unknown:
        raise DatasetError(
            f"class(es) {', '.join(unknown)} have {split} images but no training images; "
            "every class needs training images"
        )
    targets = [index[images.classes[t]] for t in images.targets]
    return LabelledImages(images.root, list(images.paths), targets, list(classes), list(images.skipped), [])


def _split(
    images: LabelledImages,
    folder: Path | None,
    *,
    val: float,
    test: float,
    seed: int,
    threshold: int,
    progress: Progress,
    crops: bool = True,
    store: FeatureStore | None = None,
) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
    """``images`` split by :func:`cnnlab.imagedata.splits.make_split` into train, val and test.

    ``folder``: the class-folder tree ``images`` was read from (split in place, with the
    perceptual hashes of its ``manifest.jsonl`` when it has one). Without one (a manifest, or the
    training rows of a given split) the images are split through a temporary class-folder tree of
    links to them. Files the split does not list (a manifest entry without an image extension)
    train. ``crops``: crops and rescales of one photo are found too (the offline model's features, verified on
    pixels), when that model is installed.
    """
    from cnnlab.runtime.features import offline_embedder

    progress.note(f"split: comparing {len(images)} images to keep near duplicates in one split")
    embed = offline_embedder(progress, store) if crops and threshold >= 0 else None
    if crops and threshold >= 0 and embed is None:
        progress.note("split: crops of one photo are not looked for (the offline model is not installed)")
    if folder is not None:
        names = [p.relative_to(folder).as_posix() for p in images.paths]
        rows = make_split(folder, val, test, seed, threshold, write=False, embed=embed, progress=progress).rows
    else:
        with tempfile.TemporaryDirectory(prefix="cnnlab-split-") as tmp:
            view = Path(tmp)
            names = []
            for i, (path, target) in enumerate(zip(images.paths, images.targets)):
                link = view / f"class{target}" / f"{i}{path.suffix.lower()}"
                link.parent.mkdir(exist_ok=True)
                link.symlink_to(path.resolve())
                names.append(link.relative_to(view).as_posix())
            rows = make_split(view, val, test, seed, threshold, write=False, embed=embed, progress=progress).rows
    split_of = {row.path: row.split for row in rows}
    positions: dict[str, list[int]] = {name: [] for name in SPLITS}
    for i, name in enumerate(names):
        positions[split_of.get(name, "train")].append(i)
    train, val_part, test_part = (images.subset(positions[name]) for name in SPLITS)
    return train, val_part, test_part


def make_train_loader(
    images: LabelledImages,
    transform: ImageTransform,
    *,
    batch_size: int,
    workers: int,
    balance: bool,
    generator: torch.Generator,
    device_type: str = "cpu",
    drop_last: bool = False,
) -> DataLoader[Batch]:
    """Shuffled (or with ``balance``, class-balanced) training batches of :class:`~cnnlab.runtime.inference.Batch`.

    The order and the augmentations depend only on ``generator``'s state when iteration starts
    (workers are seeded from it; see :func:`reseed`). ``batch_size`` and ``drop_last`` come from
    :func:`cnnlab.train.config.plan_batches`, which shares the images out into about equal
    batches.
    """
    sampler: Sampler[int]
    if balance:
        counts = np.bincount(images.targets, minlength=len(images.classes)).astype(np.float64)
        weights = [1.0 / counts[t] for t in images.targets]
        sampler = WeightedRandomSampler(weights, num_samples=len(images), replacement=True, generator=generator)
    else:
        sampler = RandomSampler(range(len(images)), generator=generator)
    return make_loader(
        images.paths, transform, batch_size=batch_size, workers=workers, device_type=device_type,
        sampler=sampler, generator=generator, drop_last=drop_last, worker_init_fn=_seed_worker,
    )


def _seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: torch seeds each worker; derive numpy's and random's from it."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def reseed(seed: int, epoch: int, generator: torch.Generator) -> None:
    """Seed everything, and the training loader's ``generator``, from ``(seed, epoch)``.

    Called at the start of every epoch, so that an epoch depends only on the weights and
    optimiser state it starts from: a resumed run repeats the uninterrupted one exactly (CPU).
    """
    epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    seed_everything(epoch_seed)
    generator.manual_seed(epoch_seed)


def _checked_splits(data: str | Path, splits: DataSplits) -> DataSplits:
    """``splits``, once they hold at least two classes and every class has training images."""
    if len(splits.classes) < 2:
        raise DatasetError(f"{data} has {len(splits.classes)} class(es) with training images; a classifier needs "
                           "at least 2")
    without = [c for c, n in splits.train.class_counts().items() if n == 0]
    if without:
        raise DatasetError(f"the split left class(es) {', '.join(without)} without training images: "
                           "lower val_fraction/test_fraction or add images")
    return splits
