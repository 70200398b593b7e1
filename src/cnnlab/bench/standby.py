"""The first model's worker, started before the parent checks the data, so that its imports overlap the parent's.

bench measures each model in a fresh process (``python -m cnnlab.bench.worker``); each spends 3-7 s of a 2-core
machine importing torch and torchvision before it measures anything, and the parent spends as long importing
them to check the data and weights (:func:`cnnlab.bench.runner.preflight`). Neither is timed, so the first
worker may import while the parent checks: ``python -m cnnlab.bench.worker --standby PARENT_PID`` imports, says
it is ready, and waits on stdin for the paths of its request and what the checks changed in the workers'
environment (a table's image column travels there). It is still a fresh process that ran nothing else, so its
figures (memory included) are those of any worker. The parent waits for it to be ready before it samples the
machine's load (an importing worker would count as a busy core) and closes it unused when the checks fail; the
kernel kills it when the parent dies (:func:`cnnlab.bench.orphans.die_with_parent`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

#: The line a standby worker prints once its imports are done (never a progress event).
READY = "cnnlab-bench-worker-standby-ready"
#: Seconds to wait for a standby worker to be ready before the parent goes on without it.
READY_TIMEOUT_S = 300.0
#: Seconds of waiting for it after which the caller is told why nothing moves.
SLOW_READY_S = 5.0


class StandbyWorker:
    """A worker process that has imported its modules and waits for one request (see the module's docstring)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self._lock = threading.Lock()
        self._taken = False
        self._ready: bool | None = None  # None: not known yet
        self._found = threading.Event()
        self._started = time.perf_counter()
        #: Seconds from its start to its ready line (its imports, shared with the parent's checks).
        self.import_s = 0.0
        self._reader: threading.Thread | None = None
        self.proc: subprocess.Popen[str] | None = None
        with contextlib.suppress(OSError):
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cnnlab.bench.worker", "--standby", str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=self.env)
            self._reader = threading.Thread(target=self._read_to_ready, daemon=True)
            self._reader.start()

    def _read_to_ready(self) -> None:
        """Read stdout up to the ready line, passing other lines on to stderr; end there or at its end."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.rstrip("\n") == READY:
                self.import_s = time.perf_counter() - self._started
                self._found.set()
                return
            sys.stderr.write(line)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, on_slow: Callable[[], None] | None = None) -> bool:
        """Block until the worker has imported (its ready line), died, or ``timeout_s`` passed; ``True``: ready.
        ``on_slow`` is called once if that takes over :data:`SLOW_READY_S`."""
        with self._lock:
            if self._ready is None:
                if self._reader is not None:
                    self._reader.join(min(SLOW_READY_S, timeout_s))
                    if self._reader.is_alive() and on_slow is not None:
                        on_slow()
                    self._reader.join(max(0.0, timeout_s - SLOW_READY_S))
                self._ready = self._found.is_set()
                if not self._ready:
                    self._stop()
            return self._ready

    def take(self, request: Path, result: Path, env: Mapping[str, str]) -> subprocess.Popen[str] | None:
        """Hand the worker its request and the workers' environment now, ``env``, and return the process, to be
        waited for like a fresh worker; ``None`` (the caller starts a fresh one) once taken or when it is not
        ready.

        What changed in ``env`` since the worker started is set in its ``os.environ`` before it reads the request:
        the checks tell the workers a table's image column there."""
        if not self.wait_ready():
            return None
        with self._lock:
            if self._taken or self.proc is None:
                return None
            self._taken = True
            message = {"paths": [str(request), str(result)],
                       "set": {k: v for k, v in env.items() if self.env.get(k) != v},
                       "unset": [k for k in self.env if k not in env]}
            stdin = self.proc.stdin
            assert stdin is not None
            try:
                stdin.write(json.dumps(message) + "\n")
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
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.stdout is not None and not (self._reader is not None and self._reader.is_alive()):
                proc.stdout.close()  # not under a reader still in it


def request_from_stdin(stdin: IO[str]) -> list[str] | None:
    """The worker's side: say it is ready, then read its request's ``[REQUEST, RESULT]`` paths from ``stdin``
    and apply the environment's changes sent with them; ``None`` at its end (the parent closed it unused) or
    when the parent is gone."""
    try:
        print(READY, flush=True)
    except BrokenPipeError:  # the parent died while this process imported
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor a second error at exit
        return None
    line = stdin.readline()
    if not line.strip():
        return None
    message = json.loads(line)
    paths, changed, removed = (message.get(k) if isinstance(message, dict) else None for k in ("paths", "set", "unset"))
    if not (isinstance(paths, list) and len(paths) == 2 and all(isinstance(p, str) for p in paths)
            and isinstance(changed, dict) and isinstance(removed, list)):
        raise ValueError(f"a standby worker expects its request's paths and environment on stdin, got "
                         f"{line.strip()[:200]!r}")
    os.environ.update({str(k): str(v) for k, v in changed.items()})
    for key in removed:
        os.environ.pop(str(key), None)
    return paths
