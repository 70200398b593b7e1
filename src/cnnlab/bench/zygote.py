"""Fresh worker processes without the import: a zygote imports the worker's modules once and forks a worker per model.

bench measures each model in a process of its own (:mod:`cnnlab.bench.worker`), so that one model's memory and
caches cannot colour the next one's figures. Started as ``python -m cnnlab.bench.worker``, every such process
spends 3-7 s of a 2-core machine importing torch: most of a small set's run, four times in the demo. The zygote
pays that once. It imports the worker's modules, runs nothing else, and forks one child per model; the child
starts from a process that has loaded no model, initialised no GPU and started no thread (so forking is safe),
runs :func:`cnnlab.bench.worker.main` and exits. Its progress lines go to a pipe the parent reads, as a fresh
process's stdout would be read.

Opt-in (``CNNLAB_BENCH_ZYGOTE=1``), because a forked worker's memory figures differ from a fresh process's:
the pages of torch's libraries that the zygote touched while importing are shared, and count in the child's
resident set only once it touches them again. Measured on the demo (``docs/benchmarks.md``): the process's
peak RSS 173-229 MiB lower than a fresh process's for the same model (what the model would take run on its
own), the model's own increase 24 MiB lower to 32 MiB higher; the demo took 64 s instead of 81 s.

The parent talks to the zygote over a Unix socket (``SOCK_SEQPACKET``: one message per request; the write end
of each worker's pipe travels with it). Linux only; where the zygote cannot start, or dies, bench starts
``python -m cnnlab.bench.worker`` processes as it does by default (:func:`cnnlab.bench.runner.run_isolated`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from cnnlab.bench.orphans import die_with_parent

#: Seconds the parent waits for the zygote to fork a requested worker before starting a fresh process instead.
FORK_TIMEOUT_S = 120.0


class ZygoteError(RuntimeError):
    """The zygote could not fork a worker (it died, or did not answer in time)."""


class ForkedWorker:
    """A worker forked by the zygote, used as bench uses a ``subprocess.Popen``: ``stdout``, ``wait``, ``kill``,
    ``returncode``."""

    def __init__(self, stdout: IO[str]) -> None:
        self.stdout = stdout
        self.pid: int | None = None
        self.returncode: int | None = None
        #: Why the worker's end was not its own (its zygote died), for the row's error.
        self.lost: str | None = None
        self._started = threading.Event()
        self._done = threading.Event()

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.pid is not None and self.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._started.set()
        self._done.set()


class Zygote:
    """The parent's handle on a running zygote (:func:`start_zygote`)."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._proc, self._sock = proc, sock
        self._lock = threading.Lock()
        self._pending: dict[int, ForkedWorker] = {}  # by request id, until its pid is known
        self._running: dict[int, ForkedWorker] = {}  # by pid
        self._next_id = 0
        self.alive = True
        self._reader = threading.Thread(target=self._read, daemon=True, name="cnnlab-zygote-reader")
        self._reader.start()

    def spawn(self, args: list[str]) -> ForkedWorker:
        """Fork a worker running ``python -m cnnlab.bench.worker *args``; raise :class:`ZygoteError` if it cannot."""
        read_fd, write_fd = os.pipe()
        worker = ForkedWorker(os.fdopen(read_fd, "r", buffering=1, encoding="utf-8", errors="replace"))
        try:
            with self._lock:
                if not self.alive:
                    raise ZygoteError("the zygote has exited")
                request_id, self._next_id = self._next_id, self._next_id + 1
                self._pending[request_id] = worker
                message = json.dumps({"id": request_id, "args": args}).encode()
                try:
                    socket.send_fds(self._sock, [message], [write_fd])
                except OSError as exc:
                    self._pending.pop(request_id, None)
                    raise ZygoteError(f"the zygote is gone: {exc}") from None
        except ZygoteError:
            worker.stdout.close()
            raise
        finally:
            os.close(write_fd)  # the child holds its own copy: the pipe ends when the child exits
        if not worker._started.wait(FORK_TIMEOUT_S):
            with self._lock:
                self._pending.pop(request_id, None)  # a fork that comes later is killed (_read)
            worker.stdout.close()
            raise ZygoteError("the zygote did not fork a worker in time")
        if worker.pid is None:  # the zygote died before it forked
            worker.stdout.close()
            raise ZygoteError("the zygote exited before it forked a worker")
        return worker

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            with self._lock:
                if "pid" in message:
                    worker = self._pending.pop(message["id"], None)
                    if worker is None:  # its caller gave up waiting: nobody reads it
                        with contextlib.suppress(OSError):
                            os.kill(message["pid"], signal.SIGKILL)
                    else:
                        worker.pid = message["pid"]
                        self._running[message["pid"]] = worker
                        worker._started.set()
                elif "exit" in message:
                    worker = self._running.pop(message["exit"], None)
                    if worker is not None:
                        worker._exited(int(message["code"]))
        with self._lock:  # the zygote is gone; its workers die with it (PR_SET_PDEATHSIG), and are killed here too
            self.alive = False
            for worker in [*self._pending.values(), *self._running.values()]:
                worker.kill()
                worker.lost = "its zygote process exited"
                worker._exited(-signal.SIGKILL)
            self._pending.clear()
            self._running.clear()

    def close(self) -> None:
        """Stop the zygote (it kills any worker still running) and wait for it."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=1)


#: Set to ``1`` to fork the workers from a zygote (otherwise each is a fresh ``python -m cnnlab.bench.worker``).
ENV_SWITCH = "CNNLAB_BENCH_ZYGOTE"


def start_zygote(env: Mapping[str, str]) -> Zygote | None:
    """Start a zygote with ``env`` (it imports in the background) when :data:`ENV_SWITCH` is ``1``; ``None`` otherwise,
    or where fork or fd passing is missing."""
    if env.get(ENV_SWITCH) != "1" or not sys.platform.startswith("linux") or not hasattr(socket, "send_fds"):
        return None
    try:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "cnnlab.bench.zygote", str(child.fileno())],
                                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=env)
    except OSError:
        parent.close()
        return None
    finally:
        child.close()
    return Zygote(proc, parent)


# --------------------------------------------------------------------------------------------
# the zygote process
# --------------------------------------------------------------------------------------------


def _child(sock: socket.socket, stdout_fd: int, args: list[str], zygote_pid: int) -> None:
    """In the forked child: become a worker process and exit with its status."""
    code = 1
    try:
        die_with_parent(zygote_pid)  # the zygote's end is this worker's
        sock.close()
        os.dup2(stdout_fd, 1)
        os.close(stdout_fd)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115  (the process's stdout)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the worker's main handles Ctrl-C
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from cnnlab.bench import worker

        code = worker.main(args)
    except BaseException:  # noqa: BLE001  (a failure here must not return into the zygote's loop)
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(code)


def _serve(sock: socket.socket) -> None:
    children: set[int] = set()

    def send(message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            sock.send(json.dumps(message).encode())

    try:
        while True:
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                data, fds, _, _ = socket.recv_fds(sock, 65536, 1)
                if not data:
                    return  # the parent closed its end (or died)
                message = json.loads(data)
                if not fds:
                    continue
                zygote_pid = os.getpid()
                pid = os.fork()
                if pid == 0:
                    _child(sock, fds[0], [str(a) for a in message["args"]], zygote_pid)
                os.close(fds[0])
                children.add(pid)
                send({"id": message["id"], "pid": pid})
            while children:
                done, status = os.waitpid(-1, os.WNOHANG)
                if done == 0:
                    break
                children.discard(done)
                send({"exit": done, "code": os.waitstatus_to_exitcode(status)})
    finally:
        for pid in children:  # the parent is gone: no worker may run on, orphaned
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)


def main(argv: list[str] | None = None) -> int:
    """``python -m cnnlab.bench.zygote FD``: import the worker's modules, then fork a worker per request on socket FD."""
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the workers; the parent closes the zygote
    from cnnlab.bench import worker  # noqa: F401  (the imports every worker needs, done once)

    _serve(sock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
