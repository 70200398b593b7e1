"""Find what is wrong with a labelled image set before training on it (``cnnlab review``).

* :func:`run` (also :func:`review_images`, :mod:`~cnnlab.review.job`): the job, check the output folder
  -> lock -> review -> write ``review.csv``, ``review.json`` and a self-contained ``review.html``
  (:func:`write_review_outputs`, :mod:`~cnnlab.review.report`); :func:`review` is its compute step alone;
* the detectors (:mod:`~cnnlab.review.detectors`, one module per kind, behind one interface): likely wrong
  labels (:mod:`~cnnlab.review.mislabel`, confident learning with cleanlab), off-topic images
  (:mod:`~cnnlab.review.offtopic`), near-duplicates (:mod:`~cnnlab.imagedata.near_duplicates`) and unusable files
  (:mod:`~cnnlab.review.files`), from cached embeddings (:mod:`~cnnlab.review.embeddings`);
* :func:`apply_review` / :func:`undo_review` (:mod:`~cnnlab.review.quarantine`): move flagged files
  into ``DIR/.quarantine/`` and back, recording every move (and in ``manifest.jsonl`` when there is one);
  :func:`check_apply` refuses what :func:`apply_review` would (a set of records...) before a review's work.

scikit-learn and cleanlab come with the ``cnnlab[review]`` extra and are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["ReviewConfig"],
        "quarantine": ["Move", "apply_review", "check_apply", "undo_review"],
        "report": ["write_review_outputs"],
        "result": ["Finding", "ReviewResult"],
        "job": ["MissingExtraError", "review", "review_images", "run"],
        "detectors": ["Detector", "Need", "register"],
    },
)

if TYPE_CHECKING:
    from cnnlab.review.config import ReviewConfig
    from cnnlab.review.detectors import Detector, Need, register
    from cnnlab.review.job import MissingExtraError, review, review_images, run
    from cnnlab.review.quarantine import Move, apply_review, check_apply, undo_review
    from cnnlab.review.report import write_review_outputs
    from cnnlab.review.result import Finding, ReviewResult
