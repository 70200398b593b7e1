"""Settings of a review run; light to import, so the CLI reads its defaults from here.

The thresholds were tuned on one benchmark set and checked on others it was not tuned on
(``benchmarks/bench_review.py``); docs/benchmarks.md gives the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from cnnlab.models.registry import OFFLINE_MODEL
from cnnlab.options import ReviewIssue

#: cnnlab's own folder inside a dataset folder (hidden, so dataset scans skip it): caches and review outputs.
STATE_DIR: Final[str] = ".cnnlab"
#: Where the review outputs go unless told, inside :data:`STATE_DIR`.
OUTPUT_DIR: Final[str] = "review"
#: The files of one review run (an output folder holding one of them holds an earlier run).
RUN_FILES: Final[tuple[str, ...]] = ("review.csv", "review.json", "review.html")
#: Where ``--apply`` moves files, inside the dataset folder (hidden, so it is never read as a class).
QUARANTINE_DIR: Final[str] = ".quarantine"
#: The record of every move into and out of the quarantine folder (inside it).
MOVES_FILE: Final[str] = "moves.jsonl"

class EmbeddingBackend(StrEnum):
    """What computes review's embeddings (:mod:`cnnlab.review.model`)."""

    AUTO = "auto"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


#: Issue kinds in the order a file flagged several times is acted on.
ISSUE_ORDER: Final[tuple[ReviewIssue, ...]] = (
    ReviewIssue.UNREADABLE, ReviewIssue.TOO_SMALL, ReviewIssue.DUPLICATE, ReviewIssue.OFFTOPIC, ReviewIssue.MISLABEL,
)


@dataclass
class ReviewConfig:
    """How to review a labelled image set (``cnnlab review``).

    Scores are in [0, 1], higher meaning surer; a file is flagged when its detector says so at the
    thresholds below (about where scores pass 0.5 for mislabels and off-topic images).
    """

    data: Path | None = None
    """The labelled set: a class-folder tree, a CSV/JSONL manifest, a ``cnnlab collect`` output folder, or a dataset
    stored as records (a Hugging Face dataset, Parquet files, WebDataset shards: :mod:`cnnlab.imagedata.sources`)."""
    image_column: str | None = None
    """The image column of a Hugging Face dataset or Parquet file (default: its ``Image`` feature)."""
    label_column: str | None = None
    """The label column of a Hugging Face dataset or Parquet file (default: its ``ClassLabel`` feature)."""
    kinds: tuple[ReviewIssue, ...] = ISSUE_ORDER
    """The kinds of finding to look for (the model is loaded only when one of them needs embeddings)."""
    model: str = OFFLINE_MODEL
    """Registry name or training checkpoint whose penultimate features are compared."""
    device: str = "auto"
    backend: str = "auto"
    """What computes the embeddings: ``torch``, ``onnxruntime`` (a cached feature-extractor export), or
    ``auto``: onnxruntime when it is installed and the model runs on the CPU (:mod:`cnnlab.review.model`)."""
    batch_size: int | None = None
    """Images per batch; ``None``: 32 for PyTorch, 8 for ONNX Runtime (each measured best on 2 CPU cores,
    :func:`cnnlab.review.model.default_batch_size`)."""
    channels_last: bool = True
    """NHWC memory format for the PyTorch model: faster on CPUs, same features (``benchmarks/bench_review.py``)."""
    workers: int | None = None
    threads: int | None = None
    """CPU threads of the model (default: the cores not decoding, :func:`cnnlab.runtime.cores.default_cpu_threads`)."""
    weights_dir: str | None = None
    mapping_file: Path | None = None
    """YAML/JSON class -> ImageNet classes, for the pretrained model's own opinion on off-topic images."""
    cache: bool = True
    """Keep embeddings in ``DATA/.cnnlab/`` so that a second run only embeds new or changed files."""
    folds: int = 5
    """k of the k-fold out-of-fold predictions that confident learning ranks."""
    regularization: float = 0.01
    """Inverse regularisation strength ``C`` of the logistic regression on the standardised features."""
    seed: int = 0
    min_side: int = 64
    """A file whose shorter side has fewer pixels is reported ``too-small`` (collect's own default)."""
    duplicate_match: float = 0.93
    """Pixel match (normalised cross-correlation of thumbnails) at or above which two images are near-duplicates."""
    duplicate_candidates: int = 15
    """How many nearest neighbours (by features) of each image are checked on pixels for duplicates."""
    neighbours: int = 3
    """k of the k-nearest-neighbour distances behind the off-topic score."""
    offtopic_z: float = 1.5
    """Robust z-score (distance to the nearest class, in MADs of that class) at which an image is off-topic."""

    def __post_init__(self) -> None:
        from cnnlab.options import parse_choice

        if self.data is not None:
            self.data = Path(self.data)
        if self.mapping_file is not None:
            self.mapping_file = Path(self.mapping_file)
        self.kinds = tuple(parse_choice(ReviewIssue, k, "issue kind") for k in self.kinds)

    def settings(self) -> dict[str, object]:
        """The settings as review.json records them (the data is recorded as the source)."""
        values = {k: v for k, v in vars(self).items() if k not in ("data", "kinds", "mapping_file")}
        return values | {"kinds": [k.value for k in self.kinds], "mapping_file": str(self.mapping_file or "")}
