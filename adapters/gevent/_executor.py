"""An executor of real OS threads, also under gevent's monkey-patching.

Under ``monkey.patch_all()``, :class:`concurrent.futures.ThreadPoolExecutor`
starts greenlets instead of threads, so a blocking call handed to
``run_in_executor`` would block the whole hub.  :class:`ThreadExecutor`
starts real threads with the original ``_thread`` functions.

Its futures are :class:`concurrent.futures.Future` objects, whose lock comes
from the :mod:`threading` module: when that module is patched, the lock is
a gevent lock of the hub's thread, so a worker never touches it.  It hands
each outcome to the hub's thread through an async watcher, and the future is
completed there.  Unpatched, workers complete futures themselves, as the
stdlib executor does.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable
from typing import Any

import gevent  # type: ignore[import-untyped]
from gevent import monkey
from gevent.event import Event  # type: ignore[import-untyped]

from ._compat import get_hub_if_exists

__all__ = ["ThreadExecutor"]

_allocate_lock, _get_ident, _start_new_thread = monkey.get_original(
    "_thread", ["allocate_lock", "get_ident", "start_new_thread"]
)

_Job = tuple["_Future", Callable[..., Any], tuple[Any, ...], dict[str, Any]]
#: (future, value, exception); a future of None stands for a skipped job
_Outcome = tuple["_Future | None", Any, BaseException | None]


class _Future(concurrent.futures.Future[Any]):
    """A future that a worker thread claims under a real lock before running it."""

    def __init__(self) -> None:
        super().__init__()
        self._claim = _allocate_lock()
        self._started = False
        self._dropped = False

    def cancel(self) -> bool:
        with self._claim:
            if self._started:
                return False
            self._dropped = True
        return super().cancel()

    def running(self) -> bool:
        return self._started and not self.done()

    def _start(self) -> bool:
        # In a worker thread.
        with self._claim:
            if self._dropped:
                return False
            self._started = True
            return True


def _settle(future: _Future, value: Any, exc: BaseException | None) -> None:
    if exc is None:
        future.set_result(value)
    else:
        future.set_exception(exc)


class ThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """Run calls on real OS threads, whether or not threading is monkey-patched.

    Create it in the thread whose hub it reports to (the loop's thread) and
    submit from that thread.  Worker threads start on demand, up to
    ``max_workers`` (the stdlib default when None), and exit at
    :meth:`shutdown`; while calls are pending the hub is kept alive, as
    gevent's own thread pool does.  A gevent hub that a call creates in a
    worker thread is destroyed when the worker exits.
    """

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "") -> None:
        # Only for the attributes; the parent's queue and threads stay unused.
        super().__init__(max_workers, thread_name_prefix)
        self._hub = gevent.get_hub()
        self._patched = monkey.is_module_patched("threading")
        self._mutex = _allocate_lock()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._idle: list[Any] = []  # one held lock per idle worker
        self._workers = 0
        self._pending = 0  # submitted, and not yet completed or skipped
        self._closed = False
        self._outcomes: collections.deque[_Outcome] = collections.deque()
        # Held while any worker lives: threads without a hub wait on it.
        self._alive = _allocate_lock()
        # Set in the hub's thread once no worker lives: greenlets wait on it.
        self._exited = Event()
        self._exited.set()
        self._async: Any = None
        if self._patched:
            self._async = self._hub.loop.async_(ref=False)
            self._async.start(self._deliver)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> _Future:
        future = _Future()
        start = False
        with self._mutex:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.append((future, fn, args, kwargs))
            self._pending += 1
            if self._idle:
                self._idle.pop().release()
            elif self._workers < self._max_workers:
                if self._workers == 0:
                    self._alive.acquire()
                    self._exited.clear()
                self._workers += 1
                start = True
            if self._async is not None and self._in_hub_thread():
                # A greenlet waiting for the future must not meet LoopExit.
                self._async.ref = True
        if start:
            _start_new_thread(self._work, ())
        return future

    def _in_hub_thread(self) -> bool:
        return bool(self._hub.thread_ident == _get_ident())

    def _work(self) -> None:
        # In a worker thread: never touch a gevent object of the hub's thread.
        wake = _allocate_lock()
        wake.acquire()
        try:
            while True:
                with self._mutex:
                    if self._jobs:
                        job: _Job | None = self._jobs.popleft()
                    elif self._closed:
                        return
                    else:
                        self._idle.append(wake)
                        job = None
                if job is None:
                    wake.acquire()  # released by submit() or shutdown()
                    continue
                future, fn, args, kwargs = job
                del job
                outcome: _Outcome = (None, None, None)
                if future._start():
                    try:
                        outcome = (future, fn(*args, **kwargs), None)
                    except BaseException as exc:
                        outcome = (future, None, exc)
                del fn, args, kwargs, future
                self._report(outcome)
                del outcome
        finally:
            hub = get_hub_if_exists()
            if hub is not None:
                hub.destroy(destroy_loop=True)
            with self._mutex:
                self._workers -= 1
                if self._workers == 0:
                    self._alive.release()
                if self._async is not None:
                    # Under the mutex, so the hub cannot close the watcher first.
                    self._async.send()

    def _report(self, outcome: _Outcome) -> None:
        # In a worker thread.
        if self._async is None:
            future, value, exc = outcome
            if future is not None:
                _settle(future, value, exc)
            with self._mutex:
                self._pending -= 1
            return
        self._outcomes.append(outcome)  # deque.append is atomic
        self._async.send()

    def _deliver(self) -> None:
        # In the hub's thread (patched mode only).
        outcomes = self._outcomes
        delivered = 0
        while outcomes:
            future, value, exc = outcomes.popleft()
            delivered += 1
            if future is not None:
                _settle(future, value, exc)
            del future, value, exc
        with self._mutex:
            self._pending -= delivered
            if self._async is not None:
                self._async.ref = self._pending > 0
            if self._workers:
                return
            if self._closed and self._async is not None:
                self._close_watcher()
        self._exited.set()

    def _close_watcher(self) -> None:
        # In the hub's thread, under the mutex, once no worker can send.
        self._async.stop()
        self._async.close()
        self._async = None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        in_hub_thread = self._in_hub_thread()
        with self._mutex:
            self._closed = True
            dropped = list(self._jobs) if cancel_futures else []
            if cancel_futures:
                self._jobs.clear()
                self._pending -= len(dropped)
            for wake in self._idle:
                wake.release()
            self._idle.clear()
            if self._async is not None:
                if self._workers == 0 and in_hub_thread:
                    self._close_watcher()
                    self._exited.set()
                else:
                    self._async.send()  # _deliver closes it once workers are gone
        for future, *_ in dropped:
            future.cancel()
        if wait:
            self._wait(in_hub_thread)

    def _wait(self, in_hub_thread: bool) -> None:
        if not (self._patched and in_hub_thread):
            # Real threads and unpatched greenlets block, as with the stdlib.
            self._alive.acquire()
            self._alive.release()
            return
        if gevent.getcurrent() is self._hub:
            return  # the hub itself cannot wait; workers exit on their own
        watcher = self._async
        if watcher is not None:
            watcher.ref = True  # keep the hub alive until the workers report
        self._exited.wait()
