"""A pre-fork supervisor: one parent, worker processes on the parent's sockets.

The parent binds, then forks.  It never creates an event loop nor imports a
framework, so each worker starts its framework (gevent's hub, Twisted's
reactor, a libuv loop) fresh after the fork: none of them survives a fork
with its loop running.  A worker tells the parent through a pipe once it
accepts connections; the parent then

- replaces a worker that dies after it started, whatever its exit status
  (0 included: a worker may leave on its own after enough requests);
- stops every worker and reports it if one dies before it started, since
  its replacement would fail the same way (an ASGI startup that fails);
- on SIGTERM or SIGINT, sends SIGTERM to every worker, which drains its
  connections within ``grace`` seconds; those still running ``grace`` plus
  :data:`STOP_MARGIN` seconds later are killed; a second signal kills them
  at once;
- on SIGHUP, replaces the workers one at a time: a new worker accepts before
  an old one is told to stop, so the port never stops answering; if a new
  worker fails to start, the old ones are kept;
- on SIGTTIN and SIGTTOU, runs one worker more or one fewer.

Workers get their own process group, so Ctrl-C in a terminal reaches the
parent alone, which then stops them in order.  A worker whose parent dies
stops gracefully too: it watches a pipe that only the parent holds open.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from ._errors import AppError, CliError

__all__ = ["STOP_MARGIN", "Started", "Supervisor", "WorkerMain"]

#: Seconds a stopping worker gets beyond the grace period, for its ASGI
#: lifespan shutdown and its exit, before it is killed.
STOP_MARGIN = 5.0
#: A worker that dies this soon after it started is replaced only after a
#: pause of the same length, so a worker that keeps crashing cannot spin.
QUICK_DEATH = 1.0

#: What a worker calls once it accepts, with a function that stops it.
Started = Callable[[Callable[[], None]], None]
#: A worker's whole life: serve, calling ``started``; return the exit status.
WorkerMain = Callable[[Started], int]

_STOP = (signal.SIGTERM, signal.SIGINT)
_SIGNALS = (*_STOP, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)
_READY = b"!"


@dataclass
class _Worker:
    pid: int
    ready_fd: int | None  # the parent's end of the worker's ready pipe, until read
    born: float
    ready: bool = False
    retiring: bool = False  # told to stop while the supervisor goes on


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _workers(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"


def _say(message: str, *, error: bool = False) -> None:
    # One write per line: the workers print to the same pipe.
    stream = sys.stderr if error else sys.stdout
    stream.write(f"protoshim: {message}\n")
    stream.flush()


class Supervisor:
    """Run ``count`` workers, each calling ``main``, until SIGTERM or SIGINT.

    :meth:`run` returns once every worker has exited after a stop signal, and
    raises :class:`AppError` (or :class:`CliError` for a worker's exit status
    2) if a worker failed before it started.
    """

    def __init__(self, main: WorkerMain, count: int, grace: float) -> None:
        if count < 1:
            raise CliError(f"--workers must be at least 1, got {count}")
        self._main = main
        self._count = count
        self._grace = grace
        self._workers: dict[int, _Worker] = {}
        self._outdated: list[int] = []  # workers a SIGHUP asked to replace, oldest first
        self._signals: list[int] = []
        self._stopping = False
        self._kill_at: float | None = None
        self._spawn_after = 0.0
        self._failure: str | None = None
        self._failure_code = 0
        self._served = False  # some worker has started
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        # Workers hold the read end: it reads EOF once the parent is gone.
        self._alive_r, self._alive_w = os.pipe()

    def run(self) -> None:
        """Supervise the workers until they have all stopped."""
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        try:
            self._loop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
            for fd in (self._wake_r, self._wake_w, self._alive_r, self._alive_w):
                os.close(fd)
        if self._failure is not None:
            raise (CliError if self._failure_code == 2 else AppError)(self._failure)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only noted here: the loop acts on it, outside the handler.
        self._signals.append(signum)

    def _loop(self) -> None:
        while True:
            self._handle_signals()
            self._reap()
            if self._stopping:
                if not self._workers:
                    return
                self._kill_late()
            else:
                self._maintain()
            for key, _ in self._selector.select(self._timeout()):
                if key.fd == self._wake_r:
                    while True:
                        try:
                            if not os.read(self._wake_r, 512):
                                break
                        except BlockingIOError:
                            break
                else:
                    self._read_ready(key.data)

    def _timeout(self) -> float:
        now = time.monotonic()
        timeout = 1.0  # a bound, should a wake-up be missed
        if self._kill_at is not None:
            timeout = min(timeout, self._kill_at - now)
        if self._spawn_after > now:
            timeout = min(timeout, self._spawn_after - now)
        return max(timeout, 0.0)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in _STOP:
                if self._stopping:
                    self._kill_all(signal.SIGKILL)
                else:
                    self._stop()
            elif self._stopping:
                continue
            elif sig == signal.SIGHUP:
                self._outdated = [w.pid for w in self._workers.values() if not w.retiring]
                _say(f"replacing {_workers(len(self._outdated))} one by one")
            elif sig in (signal.SIGTTIN, signal.SIGTTOU):
                more = 1 if sig == signal.SIGTTIN else -1
                self._count = max(1, self._count + more)
                _say(f"running {_workers(self._count)}")

    def _stop(self) -> None:
        _say(f"stopping {_workers(len(self._workers))}")
        self._stopping = True
        self._outdated.clear()
        self._kill_at = time.monotonic() + self._grace + STOP_MARGIN
        self._kill_all(signal.SIGTERM)

    def _kill_all(self, sig: int) -> None:
        for pid in self._workers:
            self._kill(pid, sig)

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # already gone; the next reap collects it

    def _kill_late(self) -> None:
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            self._kill_at = None
            late = ", ".join(str(pid) for pid in self._workers)
            _say(f"killing workers still running after the grace period: {late}", error=True)
            self._kill_all(signal.SIGKILL)

    def _maintain(self) -> None:
        active = [w for w in self._workers.values() if not w.retiring]
        if len(active) < self._count:
            if not self._served:
                # The first worker starts alone: if the application cannot
                # start, one worker says why, not every one of them.
                if not active:
                    self._spawn()
            elif time.monotonic() >= self._spawn_after:
                for _ in range(self._count - len(active)):
                    self._spawn()
        elif self._outdated:
            if all(w.ready for w in active):
                if len(active) == self._count:
                    self._spawn()  # the replacement comes first...
                else:
                    self._retire(self._outdated.pop(0))  # ...then the old one goes
        elif len(active) > self._count:
            for worker in sorted(active, key=lambda w: w.born)[: len(active) - self._count]:
                self._retire(worker.pid)

    def _retire(self, pid: int) -> None:
        worker = self._workers.get(pid)
        if worker is not None:
            worker.retiring = True
            self._kill(pid, signal.SIGTERM)

    def _spawn(self) -> None:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._child(ready_w)
        os.close(ready_w)
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        except OSError:
            pass
        worker = _Worker(pid, ready_r, time.monotonic())
        self._workers[pid] = worker
        self._selector.register(ready_r, selectors.EVENT_READ, worker)

    def _read_ready(self, worker: _Worker) -> None:
        fd = worker.ready_fd
        if fd is None:
            return
        try:
            worker.ready = os.read(fd, 1) == _READY
        except OSError:
            pass
        self._selector.unregister(fd)
        os.close(fd)
        worker.ready_fd = None
        if worker.ready:
            self._served = True
            _say(f"worker {worker.pid} is serving")

    def _reap(self) -> None:
        for worker in list(self._workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid == 0:
                continue
            del self._workers[pid]
            if worker.ready_fd is not None:
                # It may have started and died before the parent read the pipe.
                os.set_blocking(worker.ready_fd, False)
                self._read_ready(worker)
            if pid in self._outdated:
                self._outdated.remove(pid)
            if self._stopping or worker.retiring:
                continue
            how = _describe(status)
            if not worker.ready and self._outdated:
                # A replacement after SIGHUP (new code, say): the old workers go on.
                self._outdated.clear()
                _say(f"worker {pid} failed to start: it {how}; kept the others", error=True)
                continue
            if not worker.ready:
                self._failure = f"worker {pid} failed to start: it {how}"
                self._failure_code = max(os.waitstatus_to_exitcode(status), 0)
                self._stop()
                continue
            _say(f"worker {pid} {how}; starting another", error=True)
            if time.monotonic() - worker.born < QUICK_DEATH:
                self._spawn_after = time.monotonic() + QUICK_DEATH

    def _child(self, ready_w: int) -> NoReturn:
        status = 1
        try:
            try:
                os.setpgid(0, 0)
            except OSError:
                pass
            signal.set_wakeup_fd(-1)
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._selector.close()
            parent_fds = [w.ready_fd for w in self._workers.values() if w.ready_fd is not None]
            for fd in (self._wake_r, self._wake_w, self._alive_w, *parent_fds):
                os.close(fd)
            status = self._main(self._started_hook(ready_w))
        except KeyboardInterrupt:
            status = 130
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)

    def _started_hook(self, ready_w: int) -> Started:
        alive_r = self._alive_r

        def started(stop: Callable[[], None]) -> None:
            loop = asyncio.get_running_loop()

            def parent_gone() -> None:
                loop.remove_reader(alive_r)
                stop()

            loop.add_reader(alive_r, parent_gone)
            os.write(ready_w, _READY)
            os.close(ready_w)

        return started
