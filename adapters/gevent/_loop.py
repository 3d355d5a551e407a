"""A :class:`~protoshim.Driver` on the gevent hub's loop, with fd-based streams.

How it runs:

* every framework event is a watcher of the hub's loop (``hub.loop.io``,
  ``hub.loop.timer``, ``hub.loop.async_``); its callback, which runs in the
  hub greenlet, only queues the work;
* the greenlet that called ``run_forever`` (the *runner*) drains that queue,
  so asyncio callbacks and protocol methods run in the runner greenlet,
  never in the hub.  When the queue is empty the runner switches to the hub
  (it "parks") and other greenlets run until a watcher fires;
* a callback may therefore call gevent's blocking API (``gevent.sleep``, a
  monkey-patched ``time.sleep`` or socket): like a blocking call in any
  asyncio callback it stalls this loop, but the rest of the process's
  greenlets keep running, and the hub keeps queueing events for later;
* while the asyncio loop is not running, events stay queued (and a readable
  descriptor stops being watched until then), so protocol code runs only
  inside ``run_forever``, as on every asyncio loop;
* ``asyncio.get_running_loop()`` follows the greenlet (see ``_running``);
* under ``monkey.patch_all()`` the default executor is :class:`ThreadExecutor`
  (real threads) and the HTTP protocol's blocking code runs in greenlets.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import gevent  # type: ignore[import-untyped]
from gevent import getcurrent, monkey

from ...core import READ, WRITE, EventLoop, FdDriver, Watch, WatchingDriver, WatchTable
from . import _running
from ._blocking import GREENLETS
from ._executor import ThreadExecutor

__all__ = ["GeventDriver", "new_event_loop"]

Callback = Callable[[], None]


class _Io:
    """Watch one direction (core's READ or WRITE: libev's events) of one descriptor.

    Not one watcher per descriptor: see "Descriptor watchers" in docs/adapters/gevent.md.
    """

    __slots__ = ("_active", "_driver", "_events", "_queued", "_watch", "_watcher")

    def __init__(self, driver: GeventDriver, watch: Watch, events: int) -> None:
        self._driver = driver
        self._watch = watch
        self._events = events
        self._queued = False
        self._active = True
        self._watcher = driver._hub.loop.io(watch.fd, events, ref=False)
        self._watcher.start(self._fired)

    def _fired(self) -> None:
        # In the hub greenlet.
        if self._queued:
            # The runner has not handled the last readiness yet (it is blocked
            # or the loop is stopped): a level-triggered watcher would fire
            # on every iteration of the hub until it does.
            self._watcher.stop()
            return
        self._queued = True
        self._driver._post(self._run)

    def _run(self) -> None:
        # In the runner greenlet.
        self._queued = False
        if not self._active:
            return
        if not self._watcher.active:
            self._watcher.start(self._fired)
        # The table's dispatch() would test both directions: 0.2 us an event.
        callback = self._watch.reader if self._events == READ else self._watch.writer
        assert callback is not None  # or _apply() would have closed this watcher
        callback()

    def close(self) -> None:
        self._active = False
        self._watcher.stop()
        self._watcher.close()


class _Timer:
    """One ``call_later``: a hub timer whose expiry queues the callback."""

    __slots__ = ("_callback", "_driver", "_watcher")

    def __init__(self, driver: GeventDriver, delay: float, callback: Callback) -> None:
        self._driver = driver
        self._callback: Callback | None = callback
        self._watcher: Any = driver._hub.loop.timer(delay, ref=False)
        # update=True: measure the delay from now, not from the hub's cached
        # time of its last poll, or the timer fires early.
        self._watcher.start(self._fired, update=True)
        driver._timers.add(self)

    def _fired(self) -> None:
        self._driver._post(self._run)

    def _run(self) -> None:
        callback, self._callback = self._callback, None
        self._release()
        if callback is not None:
            callback()

    def cancel(self) -> None:
        self._callback = None
        self._release()

    def _release(self) -> None:
        # libuv-based watchers must be closed before their loop is destroyed
        # (at exit, for the default hub), not left to garbage collection.
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            self._driver._timers.discard(self)
            watcher.stop()
            watcher.close()


class GeventDriver(FdDriver, WatchingDriver):
    """Run core's callbacks, timers and fd watchers on the current thread's gevent hub.

    Create it in the thread whose hub it uses; ``run`` must be called from
    a greenlet of that thread other than the hub.
    """

    def __init__(self) -> None:
        self._hub = gevent.get_hub()
        loop = self._hub.loop
        # gevent's libuv backend warns about, and rounds up, timers under a
        # millisecond; a timer that fires early is re-armed by core anyway.
        self._min_delay = 0.001 if type(loop).__module__.startswith("gevent.libuv") else 0.0
        self._queue: collections.deque[Callback] = collections.deque()
        self._runner: Any = None
        self._loop: EventLoop | None = None
        self._parked = False
        self._stopping = False
        self._closed = False
        self._watches = WatchTable(self._apply)
        self._timers: set[_Timer] = set()
        # core keeps at most one call_soon outstanding: one reusable zero
        # timer, which the hub runs after its next poll, as the contract asks.
        self._soon: collections.deque[Callback] = collections.deque()
        self._soon_timer = loop.timer(0.0, ref=False)
        self._threadsafe: collections.deque[Callback] = collections.deque()
        self._threadsafe_queued = False
        self._async = loop.async_(ref=False)
        self._async.start(self._async_fired)

    @property
    def hub(self) -> Any:
        """The gevent hub whose loop this driver uses."""
        return self._hub

    # -- running ------------------------------------------------------------

    def run(self) -> None:
        hub = self._hub
        current = getcurrent()
        if current is hub:
            raise RuntimeError(
                "cannot run a protoshim gevent loop inside the hub (from a watcher, "
                "rawlink or run_callback callback): run it in a greenlet"
            )
        if hub.thread_ident != _running.get_ident():
            raise RuntimeError("a protoshim gevent loop must run in the thread that created it")
        self._runner = current
        self._stopping = False
        # The hub must not end with LoopExit while the runner waits for
        # events: the async watcher holds a reference on its loop meanwhile.
        self._async.ref = True
        _running.enter()
        try:
            queue = self._queue
            while not self._stopping:
                if queue:
                    try:
                        queue.popleft()()
                    except BaseException as exc:
                        self._failed(exc)
                else:
                    # What the hub throws in here is not a callback's.
                    self._park()
        finally:
            _running.leave()
            self._async.ref = False
            self._runner = None

    def bind(self, loop: EventLoop) -> None:
        self._loop = loop

    def _failed(self, exc: BaseException) -> None:
        if self._loop is None:
            raise exc
        self._loop.callback_failed(exc)

    def _park(self) -> None:
        self._parked = True
        try:
            # Returns when _post switches back, or raises what the hub
            # throws in (KeyboardInterrupt, gevent.Timeout, GreenletExit).
            self._hub.switch()
        finally:
            self._parked = False

    def _post(self, callback: Callback) -> None:
        # Called only by watcher callbacks, so in the hub greenlet.
        self._queue.append(callback)
        if self._parked:
            self._runner.switch()

    def stop(self) -> None:
        self._stopping = True

    # -- scheduling ---------------------------------------------------------

    def call_soon(self, callback: Callback) -> None:
        self._soon.append(callback)
        if not self._soon_timer.active:
            self._soon_timer.start(self._soon_fired, update=True)

    def _soon_fired(self) -> None:
        self._post(self._run_soon)

    def _run_soon(self) -> None:
        soon = self._soon
        for _ in range(len(soon)):
            soon.popleft()()

    def call_later(self, delay: float, callback: Callback) -> _Timer:
        if 0 < delay < self._min_delay:
            delay = self._min_delay
        return _Timer(self, delay, callback)

    def wakeup_threadsafe(self, callback: Callback) -> None:
        self._threadsafe.append(callback)  # deque.append is atomic
        if not self._closed:
            try:
                self._async.send()
            except TypeError:
                # Closed by the loop's thread meanwhile: gevent's libuv
                # watchers raise this once their handle is gone.
                pass

    def _async_fired(self) -> None:
        if not self._threadsafe_queued:
            self._threadsafe_queued = True
            self._post(self._run_threadsafe)

    def _run_threadsafe(self) -> None:
        self._threadsafe_queued = False
        threadsafe = self._threadsafe
        for _ in range(len(threadsafe)):
            threadsafe.popleft()()

    # -- descriptors --------------------------------------------------------

    def _apply(self, watch: Watch, previous: int) -> None:
        # watch.handle: the _Io of each watched direction
        ios: dict[int, _Io] = watch.handle or {}
        for events in (READ, WRITE):
            if watch.events & events and not previous & events:
                ios[events] = _Io(self, watch, events)
            elif previous & events and not watch.events & events:
                ios.pop(events).close()
        watch.handle = ios or None

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watch in self._watches.watches():
            for io in watch.handle.values():
                io.close()
        self._watches.clear()
        for timer in list(self._timers):
            timer.cancel()
        self._soon_timer.stop()
        self._soon_timer.close()
        self._async.stop()
        self._async.close()
        self._queue.clear()
        self._soon.clear()
        self._threadsafe.clear()


def new_event_loop() -> EventLoop:
    """Create an event loop on the current thread's gevent hub."""
    loop = EventLoop(GeventDriver())
    if monkey.is_module_patched("threading"):
        # asyncio's default executor would start greenlets, not threads, and
        # a blocking call there would block the hub.
        loop.set_default_executor(ThreadExecutor(thread_name_prefix="protoshim-gevent"))
        # The HTTP protocol's blocking code cooperates here: greenlets, not
        # threads, run it (see _blocking).
        loop.protoshim_blocking_runner = GREENLETS  # type: ignore[attr-defined]
    return loop
