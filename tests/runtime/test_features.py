"""The feature store that lets a training run reuse the split's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.runtime.features import FeatureStore


def test_the_store_keeps_copies_by_resolved_path(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    link = tmp_path / "view" / "0.jpg"  # a split of a manifest goes through links like this one
    link.parent.mkdir()
    link.symlink_to(photo)
    features = np.arange(6, dtype=np.float32).reshape(3, 2)
    store = FeatureStore()
    store.add([link, tmp_path / "broken.jpg", tmp_path / "b.jpg"], features, [True, False, True])
    features[:] = -1  # the caller's array changes (the crop search normalises its rows)
    found = store.get(photo)
    assert found is not None and found.tolist() == [0.0, 1.0]
    assert store.get(tmp_path / "broken.jpg") is None  # a file that did not decode has no features
    assert store.get(tmp_path / "b.jpg") is not None and len(store.rows) == 2
