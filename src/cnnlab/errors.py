"""Exceptions that cnnlab raises on purpose.

Every error a user can cause (a bad name, missing weights, an unreadable image) is a
:class:`CnnlabError`; the CLI prints its message as it is, without a traceback, and exits with
``exit_code``. So a message speaks of the library's parameters and the data ("output folder X",
"batch size"), never of CLI flags: a Python caller has no ``--out``.
"""

from __future__ import annotations


class CnnlabError(Exception):
    """Base class of errors that carry a message meant for the user."""

    exit_code: int = 1


class UsageError(CnnlabError):
    """An option value that cannot work, reported before any work starts (exit 2, like a CLI usage error)."""

    exit_code = 2


class UnknownModelError(CnnlabError, KeyError):
    """A model name matched nothing in the registry."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown model"


class WeightsNotFoundError(CnnlabError):
    """Weights are neither on disk nor downloadable."""

    exit_code = 3


class WeightsIntegrityError(CnnlabError):
    """A downloaded or given weights file fails its hash check or cannot be read."""

    exit_code = 3


class ExportMismatchError(CnnlabError):
    """An exported model's outputs differ from PyTorch's by more than the tolerance
    (:func:`cnnlab.models.export.export_model`)."""


class UnsafeWeightsError(CnnlabError):
    """A weights file would run code when unpickled; it is refused."""

    exit_code = 3


class ImageDecodeError(CnnlabError):
    """One image could not be used. ``reason`` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DatasetError(CnnlabError):
    """A dataset folder or manifest cannot be used at all."""

    exit_code = 2


class OutputError(CnnlabError):
    """Results cannot be written: the output path is unusable (a file where a folder is needed, no
    permission) or the disk is full. Raised with what was kept and how to continue."""

    exit_code = 1
