"""The folder lock of train, bench and collect: it ends with the process that took it."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from cnnlab.errors import OutputError
from cnnlab.outputs import FolderLock


def test_a_second_lock_on_a_held_folder_is_refused(tmp_path: Path) -> None:
    with FolderLock(tmp_path), pytest.raises(OutputError, match="another run is writing"), \
            FolderLock(tmp_path, holder="another run"):
        pass


def _signal_then_sleep(ready: Any) -> None:
    ready.set()  # the fork hooks have run by now
    time.sleep(60)


def test_a_forked_child_does_not_keep_the_folder_locked(tmp_path: Path) -> None:
    """DataLoader workers are forked while the run holds its lock. They shared the locked open file, so after
    a `kill -9` of the run an orphaned worker kept the folder locked (for ten minutes once) and `--resume`
    was refused."""
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    child = None
    try:
        with FolderLock(tmp_path):
            child = fork.Process(target=_signal_then_sleep, args=(ready,), daemon=True)
            child.start()
            assert ready.wait(30)
        assert child.is_alive()
        with FolderLock(tmp_path):  # the parent let go; the living child must not hold the lock
            pass
    finally:
        if child is not None:
            child.kill()
            child.join()
