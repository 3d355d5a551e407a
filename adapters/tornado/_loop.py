"""A :class:`~protoshim.Driver` on a Tornado ``IOLoop``.

Tornado 6 has no event loop of its own: every ``IOLoop`` is a
``BaseAsyncIOLoop`` wrapped around an asyncio loop (``asyncio_loop``), which
does the polling.  So there are three layers::

    protocols, tasks   ->  protoshim EventLoop   (asyncio's ready queue and timer heap)
    driver primitives  ->  tornado IOLoop        (add_callback, call_later, add_handler)
    polling            ->  IOLoop.asyncio_loop   (a private SelectorEventLoop,
                                                  or the application's loop when attached)

Streams, datagrams and listeners are core's descriptor primitives
(``FdDriver``), watched through ``IOLoop.add_handler``: they are faster than
``IOStream`` and need none of its private state (see the adapter's docs).

Both the protoshim loop and the loop under the IOLoop are asyncio loops in
the same thread, and asyncio has one "running loop" slot per thread.  Every
callback the IOLoop runs for protoshim (ticks, timers, descriptor events)
enters protoshim's context (:meth:`TornadoDriver.enter`), so protocol code
sees the protoshim loop running, with its async generator hooks installed.
Such a callback runs inside the IOLoop's asyncio loop, so the loop to
restore is known without a lookup, which costs a ``getpid()`` on CPython
3.11: a descriptor event is one crossing, whatever the protocol does in it.

The protoshim loop is also registered as an alias of its IOLoop, so
``IOLoop.current()`` inside a protocol callback or a task returns the IOLoop
the protoshim loop runs on, not a second wrapper around the protoshim loop.
"""

from __future__ import annotations

import asyncio
import errno
from asyncio import events
from collections.abc import Callable
from typing import Any

import tornado
from tornado.ioloop import IOLoop
from tornado.platform.asyncio import AsyncIOLoop, BaseAsyncIOLoop

from ...core import EventLoop, FdDriver, Watch, WatchingDriver
from ._compat import alias_ioloop, unalias_ioloop

__all__ = ["TornadoDriver", "new_event_loop"]

Callback = Callable[[], None]

#: Before 6.3, IOLoop.start() also sets the thread's current asyncio loop.
_START_SWAPS_CURRENT_LOOP = tornado.version_info < (6, 3)

#: Core's READ | WRITE bits as IOLoop event masks.
_TORNADO_EVENTS = (IOLoop.NONE, IOLoop.READ, IOLoop.WRITE, IOLoop.READ | IOLoop.WRITE)


class TornadoDriver(FdDriver, WatchingDriver):
    """Run a protoshim loop's callbacks, timers and I/O on a Tornado ``IOLoop``.

    With ``owned=True`` the driver runs and closes the IOLoop (and the asyncio
    loop under it); otherwise the IOLoop belongs to an application that
    already runs it, and the driver only registers and unregisters work on it.
    """

    def __init__(self, io_loop: IOLoop, *, owned: bool) -> None:
        if not isinstance(io_loop, BaseAsyncIOLoop):
            raise TypeError(f"expected an asyncio-based Tornado IOLoop, got {io_loop!r}")
        self._io_loop = io_loop
        #: the asyncio loop under the IOLoop, which does the actual polling
        self._native: asyncio.AbstractEventLoop = io_loop.asyncio_loop
        self._owned = owned
        self._loop: EventLoop | None = None
        # One IOLoop handler per descriptor carries both directions.
        self.watch_with(self._apply)
        self._stopping = False
        self._closed = False

    @property
    def io_loop(self) -> IOLoop:
        """The Tornado IOLoop this driver runs on."""
        return self._io_loop

    @property
    def native_loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop under the IOLoop, which does the polling."""
        return self._native

    def bind(self, loop: EventLoop) -> None:
        """Learn the protoshim loop this driver serves; core calls it once, creating the loop."""
        self._loop = loop
        # IOLoop.current() inside protocol code is then the IOLoop running it.
        alias_ioloop(loop, self._io_loop)
        if self._owned:
            # Errors in Tornado's own callbacks reach the protoshim loop's
            # handler; its asyncio loop carries KeyboardInterrupt and
            # SystemExit out of run() itself.
            self._native.set_exception_handler(_forward_exceptions(loop))

    def enter(self, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(*args)`` in protoshim's context, from a callback of the IOLoop's asyncio loop.

        Such a callback runs inside that loop's ``run_forever``, so the
        running loop is known to be the IOLoop's and need not be looked up.
        What escapes ``fn`` goes to the protoshim loop's
        :meth:`~protoshim.EventLoop.callback_failed`.
        """
        loop = self._loop
        if loop is None:
            fn(*args)
            return
        try:
            loop.call_as_running_from(self._native, fn, *args)
        except BaseException as exc:
            loop.callback_failed(exc)

    # -- running ------------------------------------------------------------

    def run(self) -> None:
        if not self._owned:
            raise RuntimeError("an attached loop runs with its IOLoop and cannot be run itself")
        self._stopping = False
        # BaseEventLoop.run_forever made the protoshim loop the running loop;
        # the IOLoop's asyncio loop refuses to start while another one is.
        outer = events._get_running_loop()
        events._set_running_loop(None)
        try:
            if _START_SWAPS_CURRENT_LOOP:
                # IOLoop.start() is this run_forever() plus a swap of the
                # thread's current asyncio loop, which creates and leaks a
                # default loop when none is set.
                self._native.run_forever()
            else:
                self._io_loop.start()
        finally:
            events._set_running_loop(outer)

    def stop(self) -> None:
        if self._owned:
            self._stopping = True
            self._io_loop.stop()
        elif self._loop is not None:
            # Only a KeyboardInterrupt or SystemExit stops an attached loop
            # (see AttachedEventLoop.stop): leaving guest mode re-raises it
            # from the IOLoop's next callback, and so out of the application.
            self._native.call_soon(self._loop.end_guest)

    def call_soon(self, callback: Callback) -> None:
        # On its own thread IOLoop.add_callback is this call_soon, plus a
        # running-loop lookup (getpid) and a wrapper that logs exceptions;
        # the protoshim loop reports its callbacks' exceptions itself.
        try:
            self._native.call_soon(self.enter, callback)
        except RuntimeError:
            pass  # the IOLoop is closed; add_callback drops the callback too

    def call_later(self, delay: float, callback: Callback) -> asyncio.TimerHandle:
        # What IOLoop.call_later does, without its wrapper; remove_timeout()
        # is the handle's cancel().
        return self._native.call_later(delay, self.enter, callback)

    def wakeup_threadsafe(self, callback: Callback) -> None:
        # From another thread Tornado itself picks call_soon_threadsafe,
        # which wakes the poller through the asyncio loop's self-pipe.  On
        # the loop's thread (a signal handler) core's wakeup fd already did.
        self._io_loop.add_callback(self.enter, callback)

    # -- descriptors --------------------------------------------------------

    def _apply(self, watch: Watch, previous: int) -> None:
        events_mask = _TORNADO_EVENTS[watch.events]
        if not previous:
            self._io_loop.add_handler(watch.fd, self._dispatch, events_mask)
        elif events_mask:
            self._io_loop.update_handler(watch.fd, events_mask)
        else:
            self._io_loop.remove_handler(watch.fd)

    def _dispatch(self, fd: int, events_mask: int) -> None:
        if self._stopping:
            # stop() lets the asyncio loop finish an iteration that has
            # polled again since; asyncio runs no descriptor callback after
            # the iteration that stopped it.  The watch is level-triggered,
            # so the event comes back on the next run.
            return
        watch = self._watches.get(fd)
        if watch is None:
            return
        # The IOLoop reports each direction in a call of its own.
        callback = watch.reader if events_mask & IOLoop.READ else watch.writer
        if callback is not None:
            self.enter(callback)

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watch in self._watches.watches():
            try:
                self._io_loop.remove_handler(watch.fd)
            except OSError as exc:
                # Closed behind the poller's back: the kernel already forgot
                # it, and asyncio's own close() does not mind either.
                if exc.errno != errno.EBADF:
                    raise
        self._watches.clear()
        if self._loop is not None:
            unalias_ioloop(self._loop, self._io_loop)
        if self._owned:
            self._io_loop.close()


def _forward_exceptions(
    loop: EventLoop,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    # Since Python 3.13 a loop runs its custom handler inside the contextvars
    # Context of the failed handle, task or future, and a Context cannot be
    # entered twice: passing the same dict on from in here makes the protoshim
    # loop enter it again.  So the report waits for the protoshim loop's next
    # iteration, where its handler also runs as protoshim code.
    def handler(_native: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not loop.is_closed():
            loop.call_soon(loop.call_exception_handler, context)

    return handler


def _new_io_loop() -> IOLoop:
    """Create a Tornado IOLoop on a private asyncio selector loop, not made current.

    The selector loop is made here, not by ``asyncio.new_event_loop()``: that
    asks the installed policy, which may be one that asks protoshim.
    """
    native = asyncio.SelectorEventLoop()
    try:
        io_loop: IOLoop
        if tornado.version_info >= (6, 2):
            io_loop = AsyncIOLoop(asyncio_loop=native, make_current=False)
        else:
            # Before 6.2 an AsyncIOLoop always asks asyncio for its own loop;
            # its base class takes ours (and closes it with the IOLoop).
            io_loop = BaseAsyncIOLoop(asyncio_loop=native, make_current=False)
    except BaseException:
        native.close()
        raise
    return io_loop


def new_event_loop() -> EventLoop:
    """Create a protoshim event loop that runs on a new Tornado IOLoop of its own."""
    io_loop = _new_io_loop()
    try:
        loop = EventLoop(TornadoDriver(io_loop, owned=True))
    except BaseException:
        io_loop.close()
        raise
    return loop
