"""A :class:`~protoshim.Driver` on :mod:`selectors`, with fd-based streams."""

from __future__ import annotations

import collections
import heapq
import itertools
import selectors
import socket
import threading
import time
from collections.abc import Callable

from ...core import READ, WRITE, EventLoop, FdDriver, Watch, WatchingDriver

__all__ = ["SelectorsDriver", "new_event_loop"]

Callback = Callable[[], None]


class _Timer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callback) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SelectorsDriver(FdDriver, WatchingDriver):
    """Run callbacks, timers and fd watchers on a :class:`selectors.DefaultSelector`."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._soon: collections.deque[Callback] = collections.deque()
        self._threadsafe: collections.deque[Callback] = collections.deque()
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._stopping = False
        self.watch_with(self._apply)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_lock = threading.Lock()
        self._loop: EventLoop | None = None
        self.add_reader(self._wake_r.fileno(), self._woken)

    def bind(self, loop: EventLoop) -> None:
        self._loop = loop

    def _call(self, callback: Callback) -> None:
        try:
            callback()
        except BaseException as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        if self._loop is None:
            raise exc
        self._loop.callback_failed(exc)

    def run(self) -> None:
        # What select() raises (a signal handler's exception) is not a
        # callback's: it leaves run() as it leaves the stdlib loop.
        self._stopping = False
        call = self._call
        while not self._stopping:
            timeout: float | None = None
            if self._soon or self._threadsafe:
                timeout = 0
            elif self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            queued = ((self._threadsafe, len(self._threadsafe)), (self._soon, len(self._soon)))
            events = self._selector.select(timeout)
            # What was queued before the poll runs before the poll's events,
            # as asyncio runs the callbacks that were ready before the I/O it
            # polled; what these schedule waits for the next iteration.
            for queue, count in queued:
                for _ in range(count):
                    call(queue.popleft())
            if self._stopping:
                # They stopped the loop: asyncio polls nothing after that
                # iteration.  Watches are level-triggered; the events return.
                break
            # The I/O callbacks are called here, not through _call: one Python
            # call less per event on the hot path.
            for key, mask in events:
                watch: Watch = key.data
                if mask & READ and watch.reader is not None:
                    try:
                        watch.reader()
                    except BaseException as exc:
                        self._failed(exc)
                if mask & WRITE and watch.writer is not None:
                    try:
                        watch.writer()
                    except BaseException as exc:
                        self._failed(exc)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                timer = heapq.heappop(self._timers)[2]
                if not timer.cancelled:
                    call(timer.callback)

    def stop(self) -> None:
        self._stopping = True

    def call_soon(self, callback: Callback) -> None:
        self._soon.append(callback)

    def call_later(self, delay: float, callback: Callback) -> _Timer:
        timer = _Timer(callback)
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), timer))
        return timer

    def wakeup_threadsafe(self, callback: Callback) -> None:
        self._threadsafe.append(callback)
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the pipe is full, so a wakeup is already pending

    def _woken(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _apply(self, watch: Watch, previous: int) -> None:
        # selectors' EVENT_READ and EVENT_WRITE are core's READ and WRITE.
        if not watch.events:
            self._selector.unregister(watch.fd)
        elif previous:
            self._selector.modify(watch.fd, watch.events, watch)
        else:
            self._selector.register(watch.fd, watch.events, watch)

    def close(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self._watches.clear()
        self._timers.clear()
        self._soon.clear()


def new_event_loop() -> EventLoop:
    """Create an event loop on a new :class:`SelectorsDriver`."""
    return EventLoop(SelectorsDriver())
