"""A :class:`~protoshim.Driver` on a ``pyuv.Loop``, with libuv handles as transports.

Concept mapping (see docs/adapters/pyuv.md):

* ``call_soon`` -- one Idle handle, started only while a tick is pending; it
  also keeps libuv's poll from blocking, so I/O is polled once between ticks;
* ``call_later`` -- Timer handles, recycled through a small pool;
* ``wakeup_threadsafe`` -- one Async handle;
* ``add_reader`` / ``add_writer`` -- one Poll handle per descriptor, kept
  by core's :class:`~protoshim.core.WatchTable`;
* streams -- TCP handles (IPv4/IPv6) and Pipe handles (Unix sockets);
* datagrams -- UDP handles (IPv4/IPv6);
* listeners -- core's :class:`~protoshim.core.FdListener` on a Poll handle,
  which pauses on EMFILE as asyncio does instead of dropping connections.
"""

from __future__ import annotations

import collections
import dis
import functools
import math
import signal
import socket
import threading
import traceback
from collections.abc import Callable
from types import CodeType, TracebackType
from typing import Any

import pyuv

from ...core import (
    READ,
    WRITE,
    EventLoop,
    FdDatagram,
    FdListener,
    FdStream,
    OnStream,
    Watch,
    WatchingDriver,
)
from ._handles import (
    UvDatagram,
    UVError,
    UvPipeStream,
    UvStream,
    UvTcpStream,
    uv_exception_error,
)

__all__ = ["PyuvDriver"]

Callback = Callable[[], None]

#: Stopped Timer handles kept for reuse; more are closed.
TIMER_POOL_SIZE = 16
_INET = (socket.AF_INET, socket.AF_INET6)
_MISSING = object()


def _timeout(delay: float) -> float:
    """Return ``delay`` rounded up to whole milliseconds, as pyuv expects it.

    pyuv truncates to milliseconds (a timer would fire early) and warns
    below one; the half millisecond survives its float-to-integer cast.
    """
    ms = math.ceil(delay * 1000.0)
    return (ms + 0.5) / 1000.0 if ms > 0 else 0.0


@functools.cache
def _first_instruction(code: CodeType) -> int:
    """Return the offset of ``code``'s RESUME, where a call starts running its own code."""
    for instruction in dis.get_instructions(code):
        if instruction.opname == "RESUME":
            return instruction.offset
    return -1  # before 3.11: no such instruction, and no way to tell


def _raised_on_entry(tb: TracebackType | None) -> bool:
    """Tell whether an exception escaping a pyuv callback was raised before it ran.

    libuv polls with the GIL released; a signal that arrives meanwhile has
    its Python handler run on entry to the first callback pyuv calls next,
    so what the handler raises seems to come from that callback.  Raised
    before the callback's own first instruction, it was raised while
    polling.
    """
    return tb is not None and tb.tb_lasti <= _first_instruction(tb.tb_frame.f_code)


class _Timer:
    """One ``call_later``: a Timer handle, or a zero delay run by the Idle handle."""

    __slots__ = ("_callback", "_driver", "_handle", "_pending")

    def __init__(self, driver: PyuvDriver, callback: Callback) -> None:
        self._driver = driver
        self._callback = callback
        self._handle: Any = None
        self._pending = True

    def cancel(self) -> None:
        if not self._pending:
            return
        self._pending = False
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.stop()
            self._driver._release_timer(handle)

    def _fire(self, handle: Any) -> None:
        # libuv has already stopped a timer that does not repeat.
        self._pending = False
        self._handle = None
        self._driver._release_timer(handle)
        self._callback()

    def _run_due(self) -> None:
        if self._pending:
            self._pending = False
            self._callback()


class PyuvDriver(WatchingDriver):
    """Run protoshim's core on one ``pyuv.Loop``.

    With ``uv_loop=None`` the driver creates and owns a private loop;
    otherwise it shares the given one, whose own handles keep running
    whenever the asyncio loop runs, and which it never closes.
    """

    def __init__(self, uv_loop: Any = None) -> None:
        self._owned = uv_loop is None
        self._uv: Any = pyuv.Loop() if uv_loop is None else uv_loop
        # libuv reserves a descriptor per loop (for its EMFILE handling) when
        # the first stream handle is made: take it now, so the descriptor
        # count does not grow when the first connection arrives.
        pyuv.Pipe(self._uv).close()
        self._closed = False
        self._stopping = False
        self._active = False  # inside run(), or attached as a guest
        self._guest = False
        self.event_loop: EventLoop | None = None
        # call_soon: core's single pending tick, the zero-delay timers, and
        # the adapter's own deferred reports all run from one Idle handle.
        self._idle = pyuv.Idle(self._uv)
        self._idle_active = False
        self._soon: Callback | None = None
        self._due: list[_Timer] = []
        self._deferred: collections.deque[tuple[Callable[[Any], None], Any]] = collections.deque()
        self._threadsafe: collections.deque[Callback] = collections.deque()
        self._async = pyuv.Async(self._uv, self._on_async)
        # Referenced only while running: it must not keep a shared loop alive.
        self._async.ref = False
        self._timer_pool: list[Any] = []
        self._timers: set[Any] = set()
        self.watch_with(self._apply)
        # Until their handles are closed, as the driver closes them on close():
        # indexed by descriptor, 8 bytes a connection where a set took 44.
        self._open: list[UvStream | UvDatagram | None] = []
        # Signals only reach Python code when some callback runs: the
        # interpreter's wakeup fd, polled here, makes Ctrl-C interrupt a
        # loop that is blocked in libuv.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_poll = pyuv.Poll(self._uv, self._wake_r.fileno())
        self._wake_poll.start(pyuv.UV_READABLE, self._drain_wakeup)
        self._wake_poll.ref = False
        self._wakeup_fd_set = False
        self._saved_hook: Any = _MISSING

    def __repr__(self) -> str:
        return f"<PyuvDriver uv_loop={self._uv!r} owned={self._owned}>"

    @property
    def uv_loop(self) -> Any:
        """The ``pyuv.Loop`` this driver runs on."""
        return self._uv

    # -- running ------------------------------------------------------------

    def run(self) -> None:
        if self._active:
            raise RuntimeError("the pyuv loop is already running")
        self._stopping = False
        self._enter()
        try:
            # The Async handle is referenced, so uv.run() only returns on stop.
            # No local holds the pyuv loop: a logged traceback keeps this
            # frame alive, and must not keep a closed loop's descriptors open.
            while not self._stopping:
                self._uv.run()
        finally:
            self._leave()

    def stop(self) -> None:
        self._stopping = True
        self._uv.stop()

    def enter_guest(self) -> None:
        """Start running inside the program's own runs of the pyuv loop."""
        if self._active:
            raise RuntimeError("the pyuv loop is already running")
        self._guest = True
        self._enter()

    def leave_guest(self) -> None:
        """Stop running inside the program's pyuv loop."""
        if self._guest:
            self._guest = False
            self._leave()

    def _enter(self) -> None:
        self._active = True
        self._async.ref = True
        uv = self._uv
        self._saved_hook = uv.__dict__.get("excepthook", _MISSING)
        uv.excepthook = self._excepthook
        if threading.current_thread() is threading.main_thread():
            self._wakeup_fd_set = self._set_wakeup_fd()

    def _leave(self) -> None:
        self._active = False
        if not self._closed:
            self._async.ref = False
        if self._wakeup_fd_set:
            self._wakeup_fd_set = False
            self._clear_wakeup_fd()
        uv = self._uv
        if self._saved_hook is _MISSING:
            uv.__dict__.pop("excepthook", None)
        else:
            uv.excepthook = self._saved_hook
        self._saved_hook = _MISSING

    def _set_wakeup_fd(self) -> bool:
        if self.event_loop is not None and self.event_loop.wakes_on_signals:
            return False  # core already wakes up on signals
        try:
            previous = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        except ValueError:
            return False
        if previous != -1:
            # Somebody else listens for signals: leave them their descriptor.
            signal.set_wakeup_fd(previous, warn_on_full_buffer=False)
            return False
        return True

    def _clear_wakeup_fd(self) -> None:
        try:
            current = signal.set_wakeup_fd(-1)
        except ValueError:
            return
        if current not in (-1, self._wake_w.fileno()):
            # Core installed its own while we ran: it keeps it.
            signal.set_wakeup_fd(current, warn_on_full_buffer=False)

    def _drain_wakeup(self, handle: Any, events: int | None, error: int | None) -> None:
        # Running this Python code is the point: it runs the signal handlers.
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _excepthook(
        self, typ: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        """Receive what escapes a pyuv callback (pyuv would print and drop it)."""
        loop = self.event_loop
        if loop is None or loop.is_closed():
            traceback.print_exception(typ, value, tb)
        else:
            loop.callback_failed(value, polling=_raised_on_entry(tb))

    def bind(self, loop: EventLoop) -> None:
        self.event_loop = loop

    # -- scheduling ---------------------------------------------------------

    def call_soon(self, callback: Callback) -> None:
        self._soon = callback
        self._start_idle()

    def _start_idle(self) -> None:
        if not self._idle_active:
            self._idle_active = True
            self._idle.start(self._on_idle)

    def _defer(self, function: Callable[[Any], None], argument: Any) -> None:
        """Call ``function(argument)`` on the next iteration (adapter-internal)."""
        if self._closed:
            return
        self._deferred.append((function, argument))
        self._start_idle()

    def _on_idle(self, handle: Any) -> None:
        # Only what is queued now: anything queued meanwhile waits for the
        # next iteration, after a poll.
        soon = self._soon
        self._soon = None
        deferred = len(self._deferred)
        if self._due:
            due, self._due = self._due, []
            for timer in due:
                timer._run_due()
        if soon is not None:
            soon()
        if deferred:
            # I/O reports come after the callbacks that were ready before
            # them, as asyncio appends polled events to its ready queue, so
            # what they schedule waits for the next iteration.
            queue = self._deferred
            for _ in range(deferred):
                function, argument = queue.popleft()
                function(argument)
        if self._soon is None and not self._due and not self._deferred:
            self._idle_active = False
            handle.stop()

    def call_later(self, delay: float, callback: Callback) -> _Timer:
        timer = _Timer(self, callback)
        timeout = _timeout(delay)
        if not timeout:
            # libuv would run an expired timer started from a timer callback
            # in the same pass, never polling I/O: run it after the poll.
            self._due.append(timer)
            self._start_idle()
            return timer
        pool = self._timer_pool
        handle = pool.pop() if pool else pyuv.Timer(self._uv)
        self._timers.add(handle)
        timer._handle = handle
        # libuv counts from the time cached at the start of the iteration.
        self._uv.update_time()
        handle.start(timer._fire, timeout, 0.0)
        return timer

    def _release_timer(self, handle: Any) -> None:
        self._timers.discard(handle)
        if self._closed:
            return
        if len(self._timer_pool) < TIMER_POOL_SIZE:
            self._timer_pool.append(handle)
        else:
            handle.close()

    def wakeup_threadsafe(self, callback: Callback) -> None:
        self._threadsafe.append(callback)
        try:
            self._async.send()
        except UVError:
            pass  # closed: the loop is gone, nobody is left to wake

    def _on_async(self, handle: Any) -> None:
        queue = self._threadsafe
        for _ in range(len(queue)):
            queue.popleft()()

    # -- descriptors --------------------------------------------------------

    def _apply(self, watch: Watch, previous: int) -> None:
        # A new Poll handle for every change: pyuv.Poll() checks the
        # descriptor, while restarting a handle on a descriptor closed behind
        # its back makes libuv abort the process.  The new one is made before
        # the old one goes, so a refused descriptor leaves the watch as it was.
        poll = None
        if watch.events:
            try:
                poll = pyuv.Poll(self._uv, watch.fd)
            except UVError as exc:
                raise uv_exception_error(exc) from None
        if watch.handle is not None:
            watch.handle.close()
        watch.handle = poll
        if poll is not None:
            # libuv's UV_READABLE and UV_WRITABLE are core's READ and WRITE.
            poll.start(watch.events, functools.partial(self._poll_ready, watch))

    def _poll_ready(
        self, watch: Watch, handle: Any, events: int | None, error: int | None
    ) -> None:
        if events is None:
            # POLLERR: libuv stopped the handle.  Like a selector, report the
            # descriptor ready both ways so the callbacks meet the error, then
            # watch again if anybody still wants to.
            events = READ | WRITE
        if self._stopping and not self._guest:
            # libuv polls once more after stop() before uv.run() returns;
            # asyncio runs no descriptor callback after the iteration that
            # stopped it.  The watch is level-triggered: the event comes back.
            events = 0
        try:
            self._watches.dispatch(watch, events)
        finally:
            if error is not None and watch.handle is handle:
                self._apply(watch, watch.events)

    def _hand_over(self, handle: Any, sock: socket.socket) -> None:
        """Open ``handle`` on ``sock``'s descriptor; close both if libuv refuses."""
        # A watcher left on a reused descriptor would steal the handle's events.
        fd = sock.fileno()
        self.remove_reader(fd)
        self.remove_writer(fd)
        try:
            handle.open(fd)
        except UVError as exc:
            # pyuv's own close(): a stream's would detach the socket, and the
            # descriptor libuv never took would stay open.
            pyuv.Handle.close(handle)
            sock.close()  # ours now, even though it could not be used
            raise uv_exception_error(exc) from None

    # -- streams and datagrams ----------------------------------------------

    def open_stream(self, sock: socket.socket) -> UvStream | FdStream:
        if sock.type != socket.SOCK_STREAM or sock.fileno() <= 2:
            return FdStream(self, sock)  # libuv never closes descriptors 0-2
        # The handle is the stream: one object per connection.
        stream: UvStream
        if sock.family in _INET:
            stream = UvTcpStream(self, sock)
        elif sock.family == socket.AF_UNIX:
            stream = UvPipeStream(self, sock)
        else:
            return FdStream(self, sock)
        self._hand_over(stream, sock)
        self._opened(stream, sock)
        return stream

    def open_datagram(self, sock: socket.socket) -> UvDatagram | FdDatagram:
        if sock.family not in _INET or sock.fileno() <= 2:
            return FdDatagram(self, sock)
        # uv_udp_open turns SO_REUSEADDR on; asyncio leaves it as it was.
        reuse = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        handle = pyuv.UDP(self._uv)
        self._hand_over(handle, sock)
        if not reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        endpoint = UvDatagram(self, handle, sock)
        self._opened(endpoint, sock)
        return endpoint

    def _opened(self, owner: UvStream | UvDatagram, sock: socket.socket) -> None:
        fd = sock.fileno()
        table = self._open
        if fd >= len(table):
            table.extend([None] * (max(fd + 1, 2 * len(table)) - len(table)))
        table[fd] = owner

    def _forget(self, owner: object, fd: int) -> None:
        """Drop ``owner``, about to close descriptor ``fd``, from the open handles."""
        table = self._open
        if fd < len(table) and table[fd] is owner:
            table[fd] = None

    def listen(self, sock: socket.socket, backlog: int, on_stream: OnStream) -> FdListener:
        return FdListener(self, sock, backlog, on_stream)

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.leave_guest()
        for owner in [owner for owner in self._open if owner is not None]:
            owner.abort()
        self._open.clear()
        for watch in self._watches.watches():
            if watch.handle is not None:
                watch.handle.close()
        self._watches.clear()
        for handle in (*self._timers, *self._timer_pool):
            handle.close()
        self._timers.clear()
        self._timer_pool.clear()
        self._due.clear()
        self._deferred.clear()
        self._threadsafe.clear()
        self._soon = None
        self._idle.close()
        self._async.close()
        self._wake_poll.close()
        self._wake_r.close()
        self._wake_w.close()
        if self._owned:
            # Run the close callbacks, so the handles let go of the loop and
            # the loop (its epoll and eventfd descriptors) is freed now.
            self._uv.run(pyuv.UV_RUN_NOWAIT)
            self._uv = None
