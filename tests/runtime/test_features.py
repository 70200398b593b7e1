"""The feature store that lets a training run reuse the split's features."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnlab.runtime.features import FeatureStore


def test_the_store_keeps_copies_by_resolved_path_while_the_file_is_unchanged(tmp_path: Path) -> None:
    photo, other = tmp_path / "a.jpg", tmp_path / "b.jpg"
    photo.write_bytes(b"x")
    other.write_bytes(b"y")
    link = tmp_path / "view" / "0.jpg"  # a split of a manifest goes through links like this one
    link.parent.mkdir()
    link.symlink_to(photo)
    features = np.arange(6, dtype=np.float32).reshape(3, 2)
    store = FeatureStore()
    store.add([link, tmp_path / "broken.jpg", other], features, [True, False, True])
    features[:] = -1  # the caller's array changes (the crop search normalises its rows)
    found = store.get(photo)
    assert found is not None and found.tolist() == [0.0, 1.0]
    assert store.get(tmp_path / "broken.jpg") is None  # a file that did not decode has no features
    assert store.get(other) is not None and len(store) == 2
    other.write_bytes(b"not the photo it was")  # replaced after the split: decoded again by whoever needs it
    assert store.get(other) is None
    stat = photo.stat()
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert store.get(photo) is None
    store.keep_only([other])
    assert len(store) == 1
