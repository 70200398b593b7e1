"""Train's own split keeps crops and rescales of one photo in one split, as `cnnlab split` does."""

from __future__ import annotations

from pathlib import Path

from cnnlab.train.data import prepare_data
from tests.helpers.images import real_photos_with_crops


def test_train_split_keeps_crops_of_one_photo_together(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    crops = real_photos_with_crops(root)
    for seed in range(3):
        splits = prepare_data(root, val_fraction=0.2, test_fraction=0.2, seed=seed)
        where = {p.relative_to(root).as_posix(): name for name, part in splits.parts() for p in part.paths}
        assert all(where[crop] == where[source] for crop, source in crops.items()), (seed, where)
