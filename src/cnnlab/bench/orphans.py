"""Worker processes that must not outlive the process that started them, however it ends."""

from __future__ import annotations

import contextlib
import os
import signal


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent exits (Linux's ``PR_SET_PDEATHSIG``; elsewhere nothing);
    exit at once if ``parent`` is already gone."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
