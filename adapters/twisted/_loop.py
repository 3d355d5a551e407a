"""A :class:`~protoshim.Driver` on a Twisted reactor, and the loops built on it.

Two ways to get a loop:

* :func:`new_event_loop` creates a private reactor instance for the loop
  (never installed as ``twisted.internet.reactor``) and drives its
  iterations itself (``runUntilCurrent`` + ``doIteration``), so loops can be
  created and closed any number of times in one process;
* :func:`attach` returns the loop of a reactor the application runs itself,
  typically the installed global one, from inside ``reactor.run()``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import error as tw_error
from twisted.internet import interfaces
from twisted.internet.base import DelayedCall, ReactorBase
from twisted.internet.defer import Deferred
from twisted.python import failure
from zope.interface import implementer  # type: ignore[import-untyped]

from ...core import (
    READ,
    WRITE,
    EventLoop,
    FdDatagram,
    FdListener,
    OnStream,
    Watch,
    WatchingDriver,
    WatchTable,
)
from ._compat import close_reactor, forget_watch
from ._stream import OpenStreams, TwistedStream, open_socket_stream

__all__ = [
    "AttachedEventLoop",
    "TwistedDriver",
    "TwistedEventLoop",
    "attach",
    "new_event_loop",
    "new_reactor",
]

Callback = Callable[[], None]


def new_reactor() -> ReactorBase:
    """Create a reactor of the platform's best polling kind, without installing it."""
    try:
        from twisted.internet.epollreactor import EPollReactor as Reactor
    except ImportError:  # not Linux
        from twisted.internet.pollreactor import PollReactor as Reactor  # type: ignore[assignment]
    return Reactor()  # type: ignore[no-untyped-call]


class _Timer:
    """Cancel a reactor DelayedCall idempotently, as core requires."""

    __slots__ = ("_call",)

    def __init__(self, call: DelayedCall) -> None:
        self._call = call

    def cancel(self) -> None:
        # DelayedCall.cancel raises once the call ran or was cancelled.
        if self._call.active():
            self._call.cancel()


@implementer(interfaces.IReadDescriptor, interfaces.IWriteDescriptor)
class _Watcher:
    """The reactor's selectable for one descriptor core watches, both ways.

    Twisted keeps a single selectable per descriptor, so reading and writing
    interest on one fd share this object.
    """

    __slots__ = ("_driver", "_watch")

    def __init__(self, driver: TwistedDriver, watch: Watch) -> None:
        self._driver = driver
        self._watch = watch

    def __repr__(self) -> str:
        return f"<protoshim watcher fd={self._watch.fd}>"

    def fileno(self) -> int:
        return self._watch.fd

    def logPrefix(self) -> str:
        return "protoshim"

    def doRead(self) -> None:
        self._driver.run_callback(WatchTable.dispatch, self._watch, READ)

    def doWrite(self) -> None:
        self._driver.run_callback(WatchTable.dispatch, self._watch, WRITE)

    def connectionLost(self, reason: failure.Failure) -> None:
        # The reactor drops a descriptor that reports hang-up or error;
        # asyncio keeps reporting it ready until the callback removes it.
        watch = self._watch
        if self._driver.closed or watch.handle is not self:
            return
        reactor: Any = self._driver.reactor
        if watch.events & READ:
            reactor.addReader(self)
        if watch.events & WRITE:
            reactor.addWriter(self)
        self._driver.run_callback(WatchTable.dispatch, watch, watch.events)


class TwistedDriver(WatchingDriver):
    """Run core's callbacks, timers and descriptors on one Twisted reactor.

    With ``owned`` the driver runs the reactor's iterations itself and shuts
    the reactor down in :meth:`close`; otherwise the application runs the
    reactor, and :meth:`run` refuses to nest inside it.
    """

    def __init__(self, reactor: ReactorBase, *, owned: bool) -> None:
        # Any: zope interfaces (IReadDescriptor, ...) are opaque to mypy.
        self._reactor: Any = reactor
        self._owned = owned
        self._stopping = False
        self._closed = False
        self._wake_lock = threading.RLock()
        self.watch_with(self._apply)
        self.open_streams = OpenStreams()  # what close() aborts
        self.loop: EventLoop | None = None
        if owned:
            with warnings.catch_warnings():
                # Twisted before 22.1 calls threading.currentThread() here.
                warnings.filterwarnings("ignore", "currentThread", DeprecationWarning)
                # No signal handlers: core installs its own, through the wakeup fd.
                reactor.startRunning(installSignalHandlers=False)

    @property
    def reactor(self) -> ReactorBase:
        """The reactor whose machinery runs the loop."""
        return cast(ReactorBase, self._reactor)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    # -- running ------------------------------------------------------------

    def bind(self, loop: EventLoop) -> None:
        self.loop = loop

    def run_callback(self, callback: Callable[..., object], *args: Any) -> None:
        """Call ``callback(*args)`` for the reactor; give what escapes it to the loop's rule.

        Twisted would log what its callbacks raise to its own log (and drop
        a descriptor whose doRead raised); the loop's
        :meth:`~protoshim.EventLoop.callback_failed` decides instead.
        """
        if self._closed:
            return
        loop = self.loop
        try:
            if self._owned or loop is None:
                callback(*args)
            else:
                # Inside the application's reactor.run(), asyncio code must
                # still find its loop running, as under run_forever.
                loop.call_as_running(callback, *args)
        except BaseException as exc:
            if loop is None:
                raise
            loop.callback_failed(exc)

    def run(self) -> None:
        if not self._owned:
            raise RuntimeError(
                "this loop is attached to a reactor that the application runs: "
                "schedule work with loop.create_task() instead of running the loop"
            )
        reactor: Any = self._reactor
        self._stopping = False
        # What doIteration raises while polling (a signal handler's
        # exception) leaves run(), as it leaves the stdlib loop's select().
        while not self._stopping:
            reactor.runUntilCurrent()
            if self._stopping:
                break
            reactor.doIteration(reactor.timeout())

    def stop(self) -> None:
        self._stopping = True

    def call_soon(self, callback: Callback) -> None:
        # A zero delay runs in the reactor's next runUntilCurrent, after the
        # poll, since calls added while timed calls run wait for the next pass.
        self._reactor.callLater(0, self.run_callback, callback)

    def call_later(self, delay: float, callback: Callback) -> _Timer:
        return _Timer(self._reactor.callLater(delay, self.run_callback, callback))

    def wakeup_threadsafe(self, callback: Callback) -> None:
        # Under the lock close() takes, so no thread writes to the waker's
        # pipe after it is closed (or its descriptor reused).  Reentrant: a
        # signal handler can run on the loop thread while it closes.
        with self._wake_lock:
            if not self._closed:
                self._reactor.callFromThread(self.run_callback, callback)

    # -- descriptors --------------------------------------------------------

    def _apply(self, watch: Watch, previous: int) -> None:
        watcher = watch.handle
        if watcher is None:
            watcher = watch.handle = _Watcher(self, watch)
        changed = watch.events ^ previous
        if changed & READ:
            if watch.events & READ:
                self._reactor.addReader(watcher)
            else:
                forget_watch(self._reactor, watcher, read=True)
        if changed & WRITE:
            if watch.events & WRITE:
                self._reactor.addWriter(watcher)
            else:
                forget_watch(self._reactor, watcher, read=False)
        if not watch.events:
            watch.handle = None

    # -- sockets ------------------------------------------------------------

    def open_stream(self, sock: socket.socket) -> TwistedStream:
        return open_socket_stream(self, sock)

    def listen(self, sock: socket.socket, backlog: int, on_stream: OnStream) -> FdListener:
        # Core's accept loop on the reactor's descriptor set; every accepted
        # socket becomes Twisted's own tcp/unix Server through open_stream.
        return FdListener(self, sock, backlog, on_stream)

    def open_datagram(self, sock: socket.socket) -> FdDatagram:
        # Twisted's udp.Port drops a datagram that would block, truncates
        # IPv6 addresses, caps the packet size and ignores ICMP errors on
        # unconnected sockets, so datagrams move on the reactor's fd set.
        return FdDatagram(self, sock)

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
        reactor: Any = self._reactor
        for watch in self._watches.watches():
            forget_watch(reactor, watch.handle, read=True)
            forget_watch(reactor, watch.handle, read=False)
        self._watches.clear()
        for stream in self.open_streams:
            stream.abort()  # silently: the loop is closing
        if not self._owned:
            return
        # Shut the private reactor down: shutdown triggers (such as stopping
        # its thread pool) run, and its own descriptors are closed.
        try:
            reactor.stop()
        except tw_error.ReactorNotRunning:
            pass
        reactor.runUntilCurrent()
        close_reactor(reactor)


class TwistedEventLoop(EventLoop):
    """An asyncio event loop on a Twisted reactor."""

    @property
    def driver(self) -> TwistedDriver:
        """The driver that runs this loop on its reactor."""
        return cast(TwistedDriver, super().driver)

    @property
    def reactor(self) -> ReactorBase:
        """The reactor to pass to Twisted APIs (endpoints, ``deferLater``, ...)."""
        return self.driver.reactor


class AttachedEventLoop(TwistedEventLoop):
    """An asyncio event loop inside a reactor that the application runs.

    It counts as running in the reactor's thread from the moment it is
    attached, so ``run_forever`` and ``run_until_complete`` refuse to nest;
    ``loop.create_task()`` and everything asyncio schedules run on the
    reactor's own iterations.  ``stop()`` leaves it running: the
    application stops its reactor.  It is closed when the reactor shuts down.
    """

    def __init__(self, driver: TwistedDriver) -> None:
        super().__init__(driver)
        # Not the running loop between callbacks: the reactor may run on an
        # asyncio loop of its own (asyncioreactor); the driver enters this
        # one around each callback.
        self.begin_guest()


def new_event_loop() -> TwistedEventLoop:
    """Create an event loop on a new private reactor."""
    return TwistedEventLoop(TwistedDriver(new_reactor(), owned=True))


_ATTACHED: weakref.WeakKeyDictionary[Any, AttachedEventLoop] = weakref.WeakKeyDictionary()


def attach(reactor: Any = None) -> AttachedEventLoop:
    """Return the asyncio loop that runs inside ``reactor`` (default: the global one).

    Call it in the reactor's thread.  The same reactor always gives the same
    loop, until the reactor shuts down, which closes the loop.  Any reactor
    works, Twisted's asyncio reactor included (the loop then runs on the
    reactor, which runs on its own asyncio loop).
    """
    if reactor is None:
        # Importing it installs the default reactor: only when asked to.
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    loop = _ATTACHED.get(reactor)
    if loop is not None and not loop.is_closed():
        return loop
    loop = AttachedEventLoop(TwistedDriver(reactor, owned=False))
    _ATTACHED[reactor] = loop
    reactor.addSystemEventTrigger("before", "shutdown", _cancel_tasks, loop)
    reactor.addSystemEventTrigger("after", "shutdown", _close_attached, reactor, loop)
    return loop


def _cancel_tasks(loop: AttachedEventLoop) -> Any:
    """Cancel the loop's tasks; the reactor shuts down once they have finished."""
    if loop.is_closed():
        return None
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not tasks:
        return None
    for task in tasks:
        task.cancel()
    gathered = asyncio.gather(*tasks, return_exceptions=True)
    return Deferred.fromFuture(gathered)


def _close_attached(reactor: Any, loop: AttachedEventLoop) -> None:
    if _ATTACHED.get(reactor) is loop:
        del _ATTACHED[reactor]
    if not loop.is_closed():
        # Re-raises a KeyboardInterrupt or SystemExit that a callback carried
        # (once closed), for Twisted to log.
        loop.close()
