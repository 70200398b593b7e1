"""Class-folder sets of real, distinct photographs for the training benchmarks, by ImageNet superclass.

The photos: one JPEG per ImageNet class (the ``imagenet-sample-images`` repository), fetched with::

    git clone https://github.com/EliSchwartz/imagenet-sample-images

Its files are named ``nWNID_name.JPEG``; in sorted order the n-th file is ImageNet class n. They are
ImageNet images, for research use, and are not shipped with cnnlab. Because they come from ImageNet,
the pretrained backbone (efficientnet_lite0) was trained on these very classes (and perhaps on these
photos): figures measured on them are optimistic for the backbone's features, and every benchmark
that prints them says so (:data:`CAVEAT`).

A set's class is a superclass (``dog``: every dog breed), its images are the sample photos of the
ImageNet classes in that superclass, so every image is a different photograph of a different
subject. Of each class :data:`PER_CLASS` photos are drawn (seeded), a fixed share
(:data:`HELD_OUT`) of them held out; ``split.csv`` lists them (``train``/``test`` rows, as
``cnnlab split`` writes it), so ``cnnlab train`` scores ``best.pt`` on the held-out photos. The
``off-topic`` folder holds the photos of superclasses in no set (fish, primates, fungi,
landscapes, balls, clothing), the "none of these" photos of ``bench_unknown.py``.

Usage::

    .venv/bin/python benchmarks/photo_sets.py PHOTOS_DIR OUT_DIR   # writes OUT_DIR/animals, things, mixed, off-topic
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import numpy as np

#: Printed next to every figure measured on these sets.
CAVEAT = ("photos from ImageNet (imagenet-sample-images), whose classes efficientnet_lite0 was pretrained on: "
          "optimistic for its features")

#: Set -> class -> ImageNet class indices (ranges are inclusive).
SETS: dict[str, dict[str, list[int]]] = {
    "animals": {
        "dog": list(range(151, 269)),
        "bird": [*range(7, 25), *range(80, 101), *range(127, 147)],
        "reptile": [i for i in range(33, 69) if i != 51],  # turtles, lizards, crocodiles, snakes (no triceratops)
        "insect": list(range(300, 327)),
    },
    "things": {
        "vehicle": [407, 436, 444, 468, 511, 555, 569, 573, 575, 603, 609, 627, 654, 656, 661, 665, 670, 671, 675,
                    717, 734, 751, 757, 779, 817, 864, 866, 867, 870, 874, 880],
        "food": [i for i in range(924, 970) if i not in (947, 958, 968)],  # no mushroom, hay, cup
        "instrument": [401, 402, 420, 432, 486, 494, 513, 541, 546, 558, 566, 577, 579, 593, 594, 641, 642, 683,
                       684, 687, 699, 776, 822, 875, 881, 889],
        "furniture": [423, 431, 453, 492, 493, 495, 516, 520, 526, 532, 548, 553, 559, 564, 648, 703, 765, 831,
                      857, 894],
    },
    # held out of tuning: added after the defaults' rules were chosen on animals and things, to check them
    "mixed": {
        "carnivore": [*range(269, 281), *range(286, 300)],  # wolves, foxes, big cats, bears, mongoose, meerkat
        "hoofed": list(range(339, 356)),  # horse, zebra, pigs, hippo, cattle, sheep, antelopes, camel, llama
        "sea_creature": [*range(107, 127), 327, 328, 329],  # jellyfish, corals, molluscs, crabs, lobsters, starfish
        "building": [425, 437, 442, 449, 483, 497, 498, 500, 538, 580, 624, 663, 668, 682, 698, 727, 743, 832, 853,
                     858, 873, 900, 915],
    },
}
#: Superclasses in no set: the "none of these" photos.
OFF_TOPIC: dict[str, list[int]] = {
    "fish": [*range(0, 7), *range(389, 398)],
    "primate": list(range(365, 383)),
    "fungus": list(range(991, 998)),
    "landscape": list(range(970, 981)),
    "ball": [429, 430, 522, 574, 722, 768, 805, 852, 890],
    "clothing": [400, 411, 445, 474, 501, 514, 515, 578, 608, 610, 614, 655, 697, 834, 841, 842, 869],
}
#: Photos drawn per class (all of a class with fewer) and the share of them held out.
PER_CLASS = 24
HELD_OUT = 1 / 3


def imagenet_files(photos: Path) -> list[Path]:
    """The 1000 sample photos in ImageNet class order."""
    files = sorted(p for p in photos.glob("*.JPEG") if p.name.startswith("n"))
    if len(files) != 1000:
        raise SystemExit(f"{photos}: expected 1000 nWNID_name.JPEG files (a clone of imagenet-sample-images), "
                         f"found {len(files)}")
    return files


def build_set(name: str, photos: Path, out: Path, seed: int = 0) -> Path:
    """Write set ``name`` as ``out/<class>/<photo>.JPEG`` plus ``out/split.csv``; return ``out``."""
    files = imagenet_files(photos)
    rng = np.random.default_rng(seed)
    rows = []
    for label, indices in SETS[name].items():
        chosen = rng.permutation(indices)[:PER_CLASS]
        n_test = round(len(chosen) * HELD_OUT)
        (out / label).mkdir(parents=True, exist_ok=True)
        for k, index in enumerate(chosen):
            src = files[int(index)]
            shutil.copyfile(src, out / label / src.name)
            rows.append([f"{label}/{src.name}", label, "test" if k < n_test else "train"])
    with (out / "split.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "split"], *rows])
    return out


def build_off_topic(photos: Path, out: Path) -> Path:
    """Copy every off-topic photo into ``out`` (one folder); return ``out``."""
    files = imagenet_files(photos)
    out.mkdir(parents=True, exist_ok=True)
    for indices in OFF_TOPIC.values():
        for index in indices:
            shutil.copyfile(files[index], out / files[index].name)
    return out


def read_split(root: Path) -> dict[str, list[tuple[Path, str]]]:
    """``{"train": [(path, label)...], "test": [...]}`` of a set's ``split.csv``."""
    parts: dict[str, list[tuple[Path, str]]] = {"train": [], "test": []}
    with (root / "split.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            parts[row["split"]].append((root / row["path"], row["label"]))
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path, help="a clone of imagenet-sample-images")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in SETS:
        root = build_set(name, args.photos, args.out / name, args.seed)
        parts = read_split(root)
        print(f"{name}: {len(SETS[name])} classes, {len(parts['train'])} training and {len(parts['test'])} "
              f"held-out photos in {root}")
    off = build_off_topic(args.photos, args.out / "off-topic")
    print(f"off-topic: {len(list(off.iterdir()))} photos in {off}")
    print(CAVEAT, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
