"""The default executor of gevent loops: real OS threads, patched or not.

Under ``monkey.patch_all()``, :class:`concurrent.futures.ThreadPoolExecutor`
starts greenlets instead of threads, so a blocking call handed to
``run_in_executor`` blocks the whole hub.  :class:`ThreadExecutor` starts
real threads with the original ``_thread`` functions, and hands results back
to the hub's thread through an async watcher, so no lock of the (possibly
patched) :mod:`threading` module is ever shared between OS threads.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable
from typing import Any

import gevent  # type: ignore[import-untyped]
from gevent._hub_local import get_hub_if_exists  # type: ignore[import-untyped]
from gevent.event import Event  # type: ignore[import-untyped]
from gevent.monkey import get_original  # type: ignore[import-untyped]

__all__ = ["ThreadExecutor"]

_allocate_lock, _start_new_thread = get_original("_thread", ["allocate_lock", "start_new_thread"])

_Job = tuple["_Future", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


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


class ThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """Run calls on real OS threads; complete their futures in the hub's thread.

    Create it in the thread whose hub will receive the results.  Worker
    threads start on demand, up to ``max_workers`` (the stdlib default when
    None), and exit at :meth:`shutdown`.  A gevent hub that a call creates in
    a worker thread is destroyed when the worker exits.
    """

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "") -> None:
        # Only for the attributes; the parent's queue and threads stay unused.
        super().__init__(max_workers, thread_name_prefix)
        self._hub = gevent.get_hub()
        self._mutex = _allocate_lock()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._idle: list[Any] = []  # one held lock per idle worker
        self._workers = 0
        self._closed = False
        self._results: collections.deque[tuple[_Future, Any, BaseException | None]] = (
            collections.deque()
        )
        # Held while any worker lives: threads without a hub wait on it.
        self._alive = _allocate_lock()
        # Set in the hub's thread once no worker lives: greenlets wait on it.
        self._exited = Event()
        self._exited.set()
        self._async: Any = self._hub.loop.async_(ref=False)
        self._async.start(self._deliver)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> _Future:
        future = _Future()
        start = False
        with self._mutex:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.append((future, fn, args, kwargs))
            if self._idle:
                self._idle.pop().release()
            elif self._workers < self._max_workers:
                if self._workers == 0:
                    self._alive.acquire()
                    self._exited.clear()
                self._workers += 1
                start = True
        if start:
            _start_new_thread(self._work, ())
        return future

    def _work(self) -> None:
        # In a worker thread: never touch gevent objects of the hub's thread.
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
                if not future._start():
                    continue
                outcome: tuple[_Future, Any, BaseException | None]
                try:
                    outcome = (future, fn(*args, **kwargs), None)
                except BaseException as exc:
                    outcome = (future, None, exc)
                del fn, args, kwargs, future
                self._results.append(outcome)  # deque.append is atomic
                del outcome
                self._async.send()
        finally:
            hub = get_hub_if_exists()
            if hub is not None:
                hub.destroy(destroy_loop=True)
            with self._mutex:
                self._workers -= 1
                if self._workers == 0:
                    self._alive.release()
                # Under the mutex, so the hub cannot close the watcher first.
                self._async.send()

    def _deliver(self) -> None:
        # In the hub's thread.
        results = self._results
        while results:
            future, value, exc = results.popleft()
            if exc is None:
                future.set_result(value)
            else:
                future.set_exception(exc)
            del future, value, exc
        with self._mutex:
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
        with self._mutex:
            self._closed = True
            dropped = list(self._jobs) if cancel_futures else []
            if cancel_futures:
                self._jobs.clear()
            for wake in self._idle:
                wake.release()
            self._idle.clear()
            if self._async is not None:
                if self._workers == 0 and get_hub_if_exists() is self._hub:
                    self._close_watcher()
                else:
                    self._async.send()  # _deliver closes it once workers are gone
        for future, *_ in dropped:
            future.cancel()
        if wait:
            self._wait()

    def _wait(self) -> None:
        if get_hub_if_exists() is self._hub:
            if gevent.getcurrent() is self._hub:
                return  # the hub itself cannot wait; workers exit on their own
            self._exited.wait()
        else:
            self._alive.acquire()
            self._alive.release()
