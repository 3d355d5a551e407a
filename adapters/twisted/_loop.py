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
import errno
import socket
import sys
import threading
import warnings
import weakref
from asyncio import events
from collections.abc import Callable
from typing import Any

from twisted.internet import error as tw_error
from twisted.internet import interfaces
from twisted.internet.base import DelayedCall, ReactorBase
from twisted.internet.defer import Deferred
from twisted.python import failure
from zope.interface import implementer  # type: ignore[import-untyped]

from ..._fdio import FdDatagram, FdListener
from ..._loop import EventLoop
from ..._primitives import OnStream
from ._stream import TwistedStream, open_socket_stream

__all__ = [
    "AttachedEventLoop",
    "TwistedDriver",
    "TwistedEventLoop",
    "attach",
    "new_event_loop",
    "new_reactor",
]

Callback = Callable[[], None]


def _unwatch(reactor: Any, watcher: _Watcher, *, read: bool) -> None:
    """Remove one interest of ``watcher``, even if its descriptor was closed.

    epoll forgets a closed descriptor by itself, but Twisted's epoll reactor
    still asks it to, and the EBADF would leave the descriptor in the
    reactor's tables for ever (and a reused number never watched again).
    asyncio's selectors ignore that error, so the watch goes away here too.
    """
    try:
        if read:
            reactor.removeReader(watcher)
        else:
            reactor.removeWriter(watcher)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        fd = watcher.fileno()
        primary, other = (reactor._reads, reactor._writes)
        if not read:
            primary, other = other, primary
        primary.discard(fd)
        if fd not in other:
            reactor._selectables.pop(fd, None)


def new_reactor() -> ReactorBase:
    """Create a reactor of the platform's best polling kind, without installing it."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        pass
    else:
        return EPollReactor()  # type: ignore[no-untyped-call]
    try:
        from twisted.internet.pollreactor import PollReactor
    except ImportError:
        pass
    else:
        return PollReactor()  # type: ignore[no-untyped-call]
    from twisted.internet.selectreactor import SelectReactor

    return SelectReactor()


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
    """One descriptor watched for core, with its reader and writer callbacks.

    Twisted keeps a single selectable per descriptor, so reading and writing
    interest on one fd share this object.
    """

    def __init__(self, driver: TwistedDriver, fd: int) -> None:
        self._driver = driver
        self._fd = fd
        self.reader: Callback | None = None
        self.writer: Callback | None = None

    def __repr__(self) -> str:
        return f"<protoshim watcher fd={self._fd}>"

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "protoshim"

    def doRead(self) -> None:
        if self.reader is not None:
            self._driver.run_callback(self.reader)

    def doWrite(self) -> None:
        if self.writer is not None:
            self._driver.run_callback(self.writer)

    def connectionLost(self, reason: failure.Failure) -> None:
        # The reactor drops a descriptor that reports hang-up or error;
        # asyncio keeps reporting it ready until the callback removes it.
        driver = self._driver
        if driver.closed or driver.watcher(self._fd) is not self:
            return
        reactor: Any = driver.reactor
        if self.reader is not None:
            reactor.addReader(self)
        if self.writer is not None:
            reactor.addWriter(self)
        reader, writer = self.reader, self.writer
        if reader is not None:
            driver.run_callback(reader)
        if writer is not None and self.writer is writer:
            driver.run_callback(writer)


class TwistedDriver:
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
        self._watchers: dict[int, _Watcher] = {}
        self._streams: weakref.WeakSet[TwistedStream] = weakref.WeakSet()
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
        reactor: ReactorBase = self._reactor
        return reactor

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def watcher(self, fd: int) -> _Watcher | None:
        """Return the watcher of ``fd``, if core watches it."""
        return self._watchers.get(fd)

    # -- running ------------------------------------------------------------

    def bind(self, loop: EventLoop) -> None:
        self.loop = loop

    def run_callback(self, callback: Callback) -> None:
        """Call ``callback`` for the reactor; give what escapes it to the loop's rule.

        Twisted would log what its callbacks raise to its own log (and drop
        a descriptor whose doRead raised); the loop's
        :meth:`~protoshim.EventLoop.callback_failed` decides instead.
        """
        if self._closed:
            return
        if self._owned:
            try:
                callback()
            except BaseException as exc:
                self._failed(exc)
            return
        # Inside the application's reactor.run(), asyncio code must still find
        # its loop running, and async generators its finalizer (captured at
        # their first iteration), as run_forever would provide.
        loop: Any = self.loop
        previous = events._get_running_loop()
        hooks = sys.get_asyncgen_hooks()
        events._set_running_loop(loop)
        sys.set_asyncgen_hooks(
            firstiter=loop._asyncgen_firstiter_hook, finalizer=loop._asyncgen_finalizer_hook
        )
        try:
            callback()
        except BaseException as exc:
            self._failed(exc)
        finally:
            sys.set_asyncgen_hooks(*hooks)
            events._set_running_loop(previous)

    def _failed(self, exc: BaseException) -> None:
        if self.loop is None:
            raise exc
        self.loop.callback_failed(exc)

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

    def _watch(self, fd: int) -> _Watcher:
        watcher = self._watchers.get(fd)
        if watcher is None:
            watcher = self._watchers[fd] = _Watcher(self, fd)
        return watcher

    def _forget(self, fd: int, watcher: _Watcher) -> None:
        if watcher.reader is None and watcher.writer is None:
            del self._watchers[fd]

    def add_reader(self, fd: int, callback: Callback) -> None:
        watcher = self._watch(fd)
        previous, watcher.reader = watcher.reader, callback
        try:
            self._reactor.addReader(watcher)
        except BaseException:
            # The reactor refused the fd (EBADF, ...): leave no trace of it.
            watcher.reader = previous
            self._forget(fd, watcher)
            raise

    def remove_reader(self, fd: int) -> bool:
        watcher = self._watchers.get(fd)
        if watcher is None or watcher.reader is None:
            return False
        watcher.reader = None
        _unwatch(self._reactor, watcher, read=True)
        self._forget(fd, watcher)
        return True

    def add_writer(self, fd: int, callback: Callback) -> None:
        watcher = self._watch(fd)
        previous, watcher.writer = watcher.writer, callback
        try:
            self._reactor.addWriter(watcher)
        except BaseException:
            watcher.writer = previous
            self._forget(fd, watcher)
            raise

    def remove_writer(self, fd: int) -> bool:
        watcher = self._watchers.get(fd)
        if watcher is None or watcher.writer is None:
            return False
        watcher.writer = None
        _unwatch(self._reactor, watcher, read=False)
        self._forget(fd, watcher)
        return True

    # -- sockets ------------------------------------------------------------

    def register_stream(self, stream: TwistedStream) -> None:
        """Remember ``stream``, so :meth:`close` can release it."""
        self._streams.add(stream)

    def open_stream(self, sock: socket.socket) -> TwistedStream:
        stream = open_socket_stream(self, sock)
        self.register_stream(stream)
        return stream

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
        for watcher in list(self._watchers.values()):
            _unwatch(reactor, watcher, read=True)
            _unwatch(reactor, watcher, read=False)
        self._watchers.clear()
        for stream in list(self._streams):
            stream.release()
        if not self._owned:
            return
        # Shut the private reactor down: shutdown triggers (such as stopping
        # its thread pool) run, and its own descriptors are closed.
        try:
            reactor.stop()
        except tw_error.ReactorNotRunning:
            pass
        reactor.runUntilCurrent()
        waker = getattr(reactor, "waker", None)
        if waker is not None:
            reactor.removeReader(waker)
            waker.connectionLost(failure.Failure(tw_error.ConnectionDone()))  # type: ignore[no-untyped-call]
            reactor.waker = None
        poller = getattr(reactor, "_poller", None)
        close = getattr(poller, "close", None)
        if close is not None:
            close()


class TwistedEventLoop(EventLoop):
    """An asyncio event loop on a Twisted reactor."""

    _driver: TwistedDriver

    @property
    def reactor(self) -> ReactorBase:
        """The reactor to pass to Twisted APIs (endpoints, ``deferLater``, ...)."""
        return self._driver.reactor


class AttachedEventLoop(TwistedEventLoop):
    """An asyncio event loop inside a reactor that the application runs.

    It counts as running in the reactor's thread from the moment it is
    attached, so ``run_forever`` and ``run_until_complete`` refuse to nest;
    ``loop.create_task()`` and everything asyncio schedules run on the
    reactor's own iterations.  ``stop()`` does nothing: the application
    stops its reactor.  It is closed when the reactor shuts down.
    """

    def __init__(self, driver: TwistedDriver) -> None:
        super().__init__(driver)
        self._thread_id = threading.get_ident()

    def stop(self) -> None:
        """Do nothing: an attached loop runs as long as its reactor does."""

    def close(self) -> None:
        """Close the loop, even though its reactor keeps running."""
        self._thread_id = None  # type: ignore[assignment]
        super().close()


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
        loop.close()
