"""The detector interface: one class per kind of finding, registered under its :class:`~cnnlab.options.ReviewIssue`.

Modelled on cleanlab's ``IssueManager`` registry: a detector names the issue it reports, says what it
needs (the files' headers, the embeddings, out-of-fold probabilities), and ``find`` turns the shared
:class:`~cnnlab.review.evidence.Evidence` into findings. :func:`register` adds it to :data:`REGISTRY`;
the review job runs the detectors of the kinds it is asked for, and loads the model only when one of
them needs embeddings.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, TypeVar

from cnnlab.options import ReviewIssue

if TYPE_CHECKING:
    from cnnlab.review.evidence import Evidence
    from cnnlab.review.result import Finding


class Need(StrEnum):
    """What a detector reads, beyond the file list."""

    FILES = "files"
    """The header check of every file (size, or why it cannot be read)."""
    EMBEDDINGS = "embeddings"
    """Features and logits of the readable images (the model runs)."""
    PROBABILITIES = "probabilities"
    """Out-of-fold class probabilities from the features (scikit-learn and cleanlab run)."""


class Detector:
    """One kind of finding. Subclasses set :attr:`issue` and :attr:`needs` and implement :meth:`find`."""

    issue: ClassVar[ReviewIssue]
    needs: ClassVar[frozenset[Need]] = frozenset({Need.FILES})

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "issue", None), ReviewIssue):
            raise TypeError(f"detector {cls.__name__} must name its issue (a ReviewIssue)")

    @classmethod
    def needs_embeddings(cls) -> bool:
        return bool(cls.needs & {Need.EMBEDDINGS, Need.PROBABILITIES})

    def find(self, evidence: Evidence) -> list[Finding]:
        """The findings of this kind (unranked; the job ranks them)."""
        raise NotImplementedError


#: Issue kind -> its detector class; filled by :func:`register` as the detector modules are imported.
REGISTRY: dict[ReviewIssue, type[Detector]] = {}

D = TypeVar("D", bound=type[Detector])


def register(cls: D) -> D:
    """Class decorator: make ``cls`` the detector of ``cls.issue`` (a second detector of one issue is an error)."""
    if cls.issue in REGISTRY and REGISTRY[cls.issue] is not cls:
        raise ValueError(f"{cls.issue.value} already has a detector: {REGISTRY[cls.issue].__name__}")
    REGISTRY[cls.issue] = cls
    return cls
