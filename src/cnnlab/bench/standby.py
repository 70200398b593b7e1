"""The first model's worker, started before the parent checks the data, so that its imports overlap the parent's.

bench measures each model in a fresh process (``python -m cnnlab.bench.worker``); each spends 3-7 s of a 2-core
machine importing torch and torchvision before it measures anything, and the parent spends as long importing
them to check the data and weights (:func:`cnnlab.bench.runner.preflight`). Neither is timed, so the first
worker may import while the parent checks: ``python -m cnnlab.bench.worker --standby`` imports, says it is
ready, and waits for the paths of its request on stdin. It is still a fresh process that ran nothing else, so
its figures (memory included) are those of any worker. The parent waits for it to be ready before it samples
the machine's load (an importing worker would count as a busy core) and closes it unused when the checks fail.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO

#: The line a standby worker prints once its imports are done (never a progress event).
READY = "cnnlab-bench-worker-standby-ready"
#: Seconds to wait for a standby worker to be ready before the parent goes on without it.
READY_TIMEOUT_S = 300.0


class StandbyWorker:
    """A worker process that has imported its modules and waits for one request (see the module's docstring)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._lock = threading.Lock()
        self._taken = False
        self._ready: bool | None = None  # None: not known yet
        self._reader: threading.Thread | None = None
        self._found = threading.Event()
        self.proc: subprocess.Popen[str] | None = None
        with contextlib.suppress(OSError):
            self.proc = subprocess.Popen([sys.executable, "-m", "cnnlab.bench.worker", "--standby"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                         env=dict(env))

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Block until the worker has imported (its ready line), died, or ``timeout_s`` passed; ``True``: ready.

        Anything else it printed before (a warning of an import) is passed on to stderr."""
        with self._lock:
            if self._ready is None:
                if self.proc is not None:
                    self._reader = _start_reader(self.proc, self._found)
                    self._reader.join(timeout_s)
                self._ready = self._found.is_set()
                if not self._ready:
                    self._stop()
            return self._ready

    def take(self, request: Path, result: Path) -> subprocess.Popen[str] | None:
        """Hand the worker its request and return the process, to be waited for like a fresh worker; ``None``
        once taken, or when it is not ready (then the caller starts a fresh one)."""
        if not self.wait_ready():
            return None
        with self._lock:
            if self._taken or self.proc is None:
                return None
            self._taken = True
            stdin = self.proc.stdin
            assert stdin is not None
            try:
                stdin.write(json.dumps([str(request), str(result)]) + "\n")
                stdin.close()
            except OSError:  # it died while waiting
                self._stop()
                return None
            return self.proc

    def close(self) -> None:
        """Stop the worker if nobody took it (the run failed before its first model); a taken one is the
        caller's."""
        with self._lock:
            if not self._taken:
                self._taken = True
                self._stop()

    def _stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()  # unused: it holds nothing to clean up, and may still be importing
        proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=1.0)  # at the end of its output now
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None and not (pipe is proc.stdout and self._reader is not None and self._reader.is_alive()):
                with contextlib.suppress(OSError):
                    pipe.close()


def _start_reader(proc: subprocess.Popen[str], found: threading.Event) -> threading.Thread:
    """A thread that reads ``proc``'s stdout up to its ready line (then sets ``found``), passing other lines on
    to stderr, and ends there or at the end of the output."""
    def read() -> None:
        for line in proc.stdout or ():
            if line.rstrip("\n") == READY:
                found.set()
                return
            sys.stderr.write(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def request_from_stdin(stdin: IO[str]) -> list[str] | None:
    """The worker's side: say it is ready, then read ``[REQUEST, RESULT]`` from ``stdin``; ``None`` at its end
    (the parent closed it unused)."""
    print(READY, flush=True)
    line = stdin.readline()
    if not line.strip():
        return None
    paths = json.loads(line)
    if not (isinstance(paths, list) and len(paths) == 2 and all(isinstance(p, str) for p in paths)):
        raise ValueError(f"a standby worker expects [REQUEST, RESULT] on stdin, got {line.strip()[:200]!r}")
    return paths
