"""The asyncio event loop that every framework adapter shares.

:class:`EventLoop` is a real :class:`asyncio.AbstractEventLoop`: it keeps
asyncio's own ready queue and timer heap, so callback order is exactly
asyncio's, and hands the waiting to a framework :class:`Driver`:

* one pending framework callback (``Driver.call_soon``) drains the ready
  queue, one batch per framework iteration, so I/O is polled in between;
* one framework timer (``Driver.call_later``) is armed for the earliest
  deadline of the heap;
* ``call_soon_threadsafe`` and signals wake the framework through
  ``Driver.wakeup_threadsafe``.

Sockets are created, bound and connected here, with asyncio's own code, and
handed to the driver, so every option of ``create_server`` and
``create_connection`` behaves identically on every framework.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import heapq
import os
import signal
import socket
import stat
import sys
import threading
from asyncio import base_events, events, sslproto
from collections.abc import Callable
from contextvars import Context
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

from . import _sendfile
from ._datagram import DatagramTransport
from ._primitives import Cancellable, Driver, Stream
from ._stream import StreamTransport
from ._subprocess import make_subprocess_transport, read_pipe_transport, write_pipe_transport

__all__ = ["EventLoop"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# As in asyncio: rebuild the heap once cancelled timers are half of it.
_MIN_SCHEDULED_TO_COMPACT = 100
#: The longest delay handed to a driver, as asyncio caps its select() timeout:
#: frameworks overflow on an infinite or huge delay, and a timer that fires
#: early only re-arms.
MAX_TIMER_DELAY = 24 * 3600.0


def _registered_fd(table: dict[int, tuple[events.Handle, Any]], fileobj: Any) -> int:
    """Return the fd of ``fileobj``, or of the registration made with it if it is closed."""
    try:
        return _fileno(fileobj)
    except ValueError:
        for fd, (_, registered) in table.items():
            if registered is fileobj:
                return fd
        raise


def _fileno(fileobj: Any) -> int:
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"Invalid file object: {fileobj!r}")
    return fd


class EventLoop(base_events.BaseEventLoop):
    """Run asyncio on a framework through the primitives of a :class:`Driver`."""

    if TYPE_CHECKING:
        # BaseEventLoop's private state, which this class drives; the stubs
        # leave it out.
        _ready: collections.deque[events.Handle]
        _scheduled: list[Any]  # of TimerHandle, whose _when/_scheduled are unstubbed
        _closed: bool
        _stopping: bool
        _debug: bool
        _clock_resolution: float
        _timer_cancelled_count: int

        def _check_closed(self) -> None: ...
        def _check_callback(self, callback: Any, method: str) -> None: ...
        def _check_sendfile_params(
            self, sock: socket.socket, file: Any, offset: int, count: int | None
        ) -> None: ...
        async def _ensure_resolved(self, address: Any, **kwargs: Any) -> list[Any]: ...
        async def _create_connection_transport(
            self, sock: socket.socket, protocol_factory: Any, ssl: Any,
            server_hostname: str | None, **kwargs: Any,
        ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]: ...

    def __init__(self, driver: Driver) -> None:
        super().__init__()
        self._driver = driver
        self._tick_pending = False
        self._timer: Cancellable | None = None
        self._timer_when: float | None = None
        self._exit_exc: BaseException | None = None
        # fd -> (handle, the file object it was registered with)
        self._readers: dict[int, tuple[events.Handle, Any]] = {}
        self._writers: dict[int, tuple[events.Handle, Any]] = {}
        # The transport that owns each descriptor, indexed by descriptor, until
        # the transport lets go of it.  Descriptors are small and dense, so a
        # list costs a connection 8 bytes where a dict entry and its key cost
        # about 80.
        self._owners: list[asyncio.BaseTransport | None] = []
        self._listeners: dict[socket.socket, Any] = {}
        self._signal_handlers: dict[int, events.Handle] = {}
        self._signal_socks: tuple[socket.socket, socket.socket] | None = None
        # While a guest: whether it is the running loop, and the hooks it replaced.
        self._guest: tuple[bool, Any] | None = None
        driver.bind(self)

    @property
    def driver(self) -> Driver:
        """The framework driver this loop runs on."""
        return self._driver

    @property
    def wakes_on_signals(self) -> bool:
        """Whether core has installed the signal wakeup descriptor (for signal handlers)."""
        return self._signal_socks is not None

    # -- running ------------------------------------------------------------

    def _run_once(self) -> None:
        # BaseEventLoop.run_forever calls this until stop(); one call runs the
        # framework's own loop until a tick sees the stop request.
        self._request_tick()
        self._driver.run()
        exc, self._exit_exc = self._exit_exc, None
        if exc is not None:
            # The exit may have cut a timer callback short: forget the
            # framework timer, so the next run arms a new one.
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_when = None
            raise exc

    def stop(self) -> None:
        self._stopping = True
        self._request_tick()

    def _exit_with(self, exc: BaseException) -> None:
        """Stop the framework and re-raise ``exc`` from ``run_forever``.

        Frameworks swallow exceptions raised in their callbacks, so
        KeyboardInterrupt and SystemExit are carried out this way.
        """
        if self._exit_exc is None:
            self._exit_exc = exc
        self._driver.stop()

    def callback_failed(self, exc: BaseException, *, polling: bool = False) -> None:
        """Apply the one rule for an exception that escaped a framework callback.

        Every driver passes here whatever escapes a callback it runs for its
        framework (see :meth:`Driver.bind <protoshim._primitives.Driver.bind>`):

        * KeyboardInterrupt and SystemExit leave ``run_forever``, as they
          leave the stdlib loop;
        * so does anything raised while the framework polls rather than by a
          callback (``polling=True``): a ``signal.signal`` handler's
          exception propagates out of ``select()`` on the stdlib loop;
        * anything else goes to the loop's exception handler and the loop
          goes on, as an exception from an asyncio callback does.
        """
        if polling or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self._exit_with(exc)
            return
        self.call_exception_handler(
            {"message": "Unhandled exception in a framework callback", "exception": exc}
        )

    def _request_tick(self) -> None:
        if not self._tick_pending and not self._closed:
            self._tick_pending = True
            self._driver.call_soon(self._soon_tick)

    def _soon_tick(self) -> None:
        self._tick_pending = False
        self._tick()

    def _timer_tick(self) -> None:
        self._timer = None
        self._timer_when = None
        self._tick()

    def _tick(self) -> None:
        if self._closed:
            return
        ready = self._ready
        scheduled = self._scheduled
        if (
            len(scheduled) > _MIN_SCHEDULED_TO_COMPACT
            and self._timer_cancelled_count * 2 > len(scheduled)
        ):
            self._compact_timers()
        end = self.time() + self._clock_resolution
        while scheduled:
            handle = scheduled[0]
            if handle._cancelled:
                heapq.heappop(scheduled)
                handle._scheduled = False
                self._timer_cancelled_count -= 1
            elif handle._when <= end:
                heapq.heappop(scheduled)
                handle._scheduled = False
                ready.append(handle)
            else:
                break
        # Only the callbacks ready now: new ones wait for the next iteration,
        # so I/O gets polled in between, as in asyncio.
        for _ in range(len(ready)):
            callback = ready.popleft()
            if callback._cancelled:
                continue
            try:
                callback._run()
            except (SystemExit, KeyboardInterrupt) as exc:
                self._exit_with(exc)
                return
        if self._stopping:
            if self._guest is not None:
                # run_forever clears the request when it returns; a guest
                # never returns, and stays running for the next run.
                self._stopping = False
            self._driver.stop()
        elif ready:
            self._request_tick()
        self._arm_timer()

    def _compact_timers(self) -> None:
        live = []
        for handle in self._scheduled:
            if handle._cancelled:
                handle._scheduled = False
            else:
                live.append(handle)
        heapq.heapify(live)
        self._scheduled = live
        self._timer_cancelled_count = 0

    def _arm_timer(self) -> None:
        scheduled = self._scheduled
        while scheduled and scheduled[0]._cancelled:
            heapq.heappop(scheduled)._scheduled = False
            self._timer_cancelled_count -= 1
        if not scheduled:
            return
        when = scheduled[0]._when
        if self._timer_when is not None and self._timer_when <= when:
            return  # an earlier tick is already armed and will re-arm
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self.time()
        delay = min(max(0.0, when - now), MAX_TIMER_DELAY)
        self._timer_when = min(when, now + MAX_TIMER_DELAY)
        self._timer = self._driver.call_later(delay, self._timer_tick)

    # -- running as a guest -------------------------------------------------
    #
    # A loop attached to a framework loop that the application runs (the
    # global Twisted reactor, a Tornado IOLoop, a program's pyuv loop) never
    # enters run_forever, yet asyncio code on it must find it running.

    @property
    def guest(self) -> bool:
        """Whether the loop runs as a guest (see :meth:`begin_guest`)."""
        return self._guest is not None

    def begin_guest(self, *, running: bool = False) -> None:
        """Count as running in this thread from now, without ``run_forever``.

        ``run_forever`` then refuses to start, as on any running loop.  With
        ``running=True`` the loop also becomes the thread's running loop,
        with its async-generator hooks, until :meth:`end_guest`; otherwise
        the adapter enters it around each callback with
        :meth:`call_as_running`, because the framework's own asyncio loop
        (Tornado's, Twisted's asyncio reactor) is the running one between.
        """
        self._check_closed()
        if running:
            self._check_running()  # type: ignore[attr-defined]
        elif self.is_running():
            raise RuntimeError("This event loop is already running")
        self._set_coroutine_origin_tracking(self._debug)  # type: ignore[attr-defined]
        self._thread_id = threading.get_ident()
        hooks = None
        if running:
            hooks = sys.get_asyncgen_hooks()
            sys.set_asyncgen_hooks(*self._hooks())
            events._set_running_loop(self)
        self._guest = (running, hooks)
        # Callbacks left ready (by an interrupted run, say) need a tick, as
        # a run's start asks for one.
        self._request_tick()

    def end_guest(self) -> None:
        """Stop running as a guest; re-raise a KeyboardInterrupt or SystemExit it carried."""
        if self._guest is None:
            return
        (running, hooks), self._guest = self._guest, None
        self._stopping = False
        self._thread_id = None  # type: ignore[assignment]  # "not running", as BaseEventLoop uses it
        if running:
            events._set_running_loop(None)
            sys.set_asyncgen_hooks(*hooks)
        self._set_coroutine_origin_tracking(False)  # type: ignore[attr-defined]
        exc, self._exit_exc = self._exit_exc, None
        if exc is not None:
            raise exc

    def _hooks(self) -> tuple[Any, Any]:
        return (self._asyncgen_firstiter_hook, self._asyncgen_finalizer_hook)  # type: ignore[attr-defined]

    def call_as_running(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Return ``fn(*args)``, called with this loop as the thread's running loop.

        Its async-generator hooks are installed for the call too (generators
        capture their finalizer at the first iteration); both are restored
        after.
        """
        return self.call_as_running_from(events._get_running_loop(), fn, *args)

    def call_as_running_from(
        self, previous: asyncio.AbstractEventLoop | None, fn: Callable[[*Ts], T], *args: *Ts
    ) -> T:
        """:meth:`call_as_running` for a caller that knows the running loop, ``previous``.

        Looking it up costs a ``getpid()`` system call on Python 3.11.
        """
        if previous is self:
            return fn(*args)
        hooks = sys.get_asyncgen_hooks()
        events._set_running_loop(self)
        sys.set_asyncgen_hooks(*self._hooks())
        try:
            return fn(*args)
        finally:
            sys.set_asyncgen_hooks(*hooks)
            events._set_running_loop(previous)

    # -- scheduling ---------------------------------------------------------

    def _call_soon(self, callback: Any, args: Any, context: Any) -> events.Handle:
        handle = events.Handle(callback, args, self, context)
        if self._debug:
            # Point the recorded traceback at the caller, as asyncio does.
            traceback = getattr(handle, "_source_traceback", None)
            if traceback:
                del traceback[-1]
        self._ready.append(handle)
        if not self._tick_pending:
            self._request_tick()
        return handle

    def call_at(
        self,
        when: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: Context | None = None,
    ) -> events.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        if not self._tick_pending:
            self._arm_timer()
        return handle

    def call_soon_threadsafe(
        self, callback: Callable[[*Ts], object], *args: *Ts, context: Context | None = None
    ) -> events.Handle:
        self._check_closed()
        if self._debug:
            self._check_callback(callback, "call_soon_threadsafe")
        handle = events.Handle(callback, args, self, context)
        self._ready.append(handle)  # deque.append is atomic
        self._write_to_self()
        return handle

    def _write_to_self(self) -> None:
        self._driver.wakeup_threadsafe(self._request_tick)

    def _process_events(self, event_list: Any) -> None:  # pragma: no cover - never polled
        raise AssertionError("the framework polls; BaseEventLoop._run_once is not used")

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        interrupt: BaseException | None = None
        if self._guest is not None and not self._closed:
            try:
                self.end_guest()
            except BaseException as exc:  # raised once the loop is closed
                interrupt = exc
        try:
            self._close()
        finally:
            if interrupt is not None:
                raise interrupt

    def _close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().close()
        self._driver.close()

    # -- descriptors --------------------------------------------------------

    def _run_handle(self, handle: events.Handle) -> None:
        if handle._cancelled:
            return
        try:
            handle._run()
        except (SystemExit, KeyboardInterrupt) as exc:
            self._exit_with(exc)

    def _watch(
        self,
        table: dict[int, tuple[events.Handle, Any]],
        add: Callable[[int, Callable[[], None]], None],
        fileobj: Any,
        callback: Callable[..., object],
        args: tuple[Any, ...],
    ) -> events.Handle:
        self._check_closed()
        fd = _fileno(fileobj)
        handle = events.Handle(callback, args, self, None)
        # Watch first: if the driver refuses the fd, nothing is recorded.
        add(fd, functools.partial(self._run_handle, handle))
        old = table.pop(fd, None)
        if old is not None:
            old[0].cancel()
        table[fd] = (handle, fileobj)
        return handle

    def _unwatch(
        self,
        table: dict[int, tuple[events.Handle, Any]],
        remove: Callable[[int], bool],
        fileobj: Any,
    ) -> bool:
        if self._closed:
            return False
        fd = _registered_fd(table, fileobj)
        entry = table.pop(fd, None)
        if entry is None:
            return False
        entry[0].cancel()
        remove(fd)
        return True

    def _ensure_fd_no_transport(self, fileobj: Any) -> None:
        # A watcher on a transport's descriptor would steal its events.  A
        # closed socket object (fileno -1) passes: it owns nothing any more.
        fd = fileobj
        if not isinstance(fd, int):
            try:
                fd = int(fd.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fileobj!r}") from None
        owners = self._owners
        transport = owners[fd] if 0 <= fd < len(owners) else None
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fileobj!r} is used by transport {transport!r}")

    def _own(self, sock: socket.socket | None, transport: asyncio.BaseTransport) -> None:
        if sock is None or (fd := sock.fileno()) < 0:
            return
        owners = self._owners
        if fd >= len(owners):
            owners.extend([None] * (fd + 1 - len(owners)))
        owners[fd] = transport

    def _disown(self, sock: socket.socket | None, transport: asyncio.BaseTransport) -> None:
        """Forget ``transport``'s descriptor; it is about to be closed."""
        if sock is None:
            return
        owners, fd = self._owners, sock.fileno()
        if 0 <= fd < len(owners) and owners[fd] is transport:
            owners[fd] = None

    def add_reader(self, fd: Any, callback: Callable[[*Ts], Any], *args: *Ts) -> None:
        self._ensure_fd_no_transport(fd)
        self._watch(self._readers, self._driver.add_reader, fd, callback, args)

    def remove_reader(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return self._unwatch(self._readers, self._driver.remove_reader, fd)

    def add_writer(self, fd: Any, callback: Callable[[*Ts], Any], *args: *Ts) -> None:
        self._ensure_fd_no_transport(fd)
        self._watch(self._writers, self._driver.add_writer, fd, callback, args)

    def remove_writer(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return self._unwatch(self._writers, self._driver.remove_writer, fd)

    # asyncio's pipe transports watch their descriptors through these.
    def _add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> events.Handle:
        return self._watch(self._readers, self._driver.add_reader, fd, callback, args)

    def _remove_reader(self, fd: Any) -> bool:
        return self._unwatch(self._readers, self._driver.remove_reader, fd)

    def _add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> events.Handle:
        return self._watch(self._writers, self._driver.add_writer, fd, callback, args)

    def _remove_writer(self, fd: Any) -> bool:
        return self._unwatch(self._writers, self._driver.remove_writer, fd)

    async def _wait_fd(self, sock: socket.socket, *, write: bool) -> None:
        fut: asyncio.Future[None] = self.create_future()
        fd = sock.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        # As in asyncio, checked only when the call has to wait.
        self._ensure_fd_no_transport(fd)
        handle = self._add_writer(fd, ready) if write else self._add_reader(fd, ready)
        try:
            await fut
        finally:
            # A cancelled operation finishes a loop iteration late; by then a
            # racing one on the same socket may have replaced (so cancelled)
            # this watcher, and its own must stay.
            if not handle.cancelled():
                if write:
                    self._remove_writer(fd)
                else:
                    self._remove_reader(fd)

    async def _retry(self, sock: socket.socket, op: Callable[[], T], *, write: bool) -> T:
        if sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        while True:
            try:
                return op()
            except (BlockingIOError, InterruptedError):
                await self._wait_fd(sock, write=write)

    async def sock_recv(self, sock: socket.socket, nbytes: int) -> bytes:
        return await self._retry(sock, lambda: sock.recv(nbytes), write=False)

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        return await self._retry(sock, lambda: sock.recv_into(buf), write=False)

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        return await self._retry(sock, lambda: sock.recvfrom(bufsize), write=False)

    async def sock_recvfrom_into(
        self, sock: socket.socket, buf: Any, nbytes: int = 0
    ) -> tuple[int, Any]:
        # As in asyncio, 0 means the whole buffer.
        size = nbytes or len(buf)
        return await self._retry(sock, lambda: sock.recvfrom_into(buf, size), write=False)

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        return await self._retry(sock, lambda: sock.sendto(data, address), write=True)

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            sent = await self._retry(sock, functools.partial(sock.send, view), write=True)
            view = view[sent:]

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        conn, address = await self._retry(sock, sock.accept, write=False)
        conn.setblocking(False)
        return conn, address

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        if sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            address = resolved[0][4]
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass
        while True:
            await self._wait_fd(sock, write=True)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                return
            if err not in (errno.EINPROGRESS, errno.EINTR):
                raise OSError(err, f"Connect call failed {address}")

    async def _sock_sendfile_native(
        self, sock: socket.socket, file: Any, offset: int, count: int | None
    ) -> int:
        return await _sendfile.sock_sendfile(self, sock, file, offset, count)

    async def _sendfile_native(
        self, transp: asyncio.WriteTransport, file: Any, offset: int, count: int | None
    ) -> int:
        if not isinstance(transp, StreamTransport):
            raise asyncio.SendfileNotAvailableError("sendfile syscall is not supported")
        return await _sendfile.transport_sendfile(self, transp, file, offset, count)

    # -- transports ---------------------------------------------------------

    def _stream_transport(
        self,
        stream: Stream,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None,
        extra: dict[str, Any] | None,
        server: Any,
    ) -> StreamTransport:
        transport = StreamTransport(self, stream, protocol, waiter, extra, server)
        self._own(stream.socket(), transport)
        return transport

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> asyncio.Transport:
        stream = self._driver.open_stream(sock)
        return self._stream_transport(stream, protocol, waiter, extra, server)

    def _ssl_transport(
        self,
        stream: Stream,
        protocol: asyncio.BaseProtocol,
        sslcontext: Any,
        waiter: asyncio.Future[None] | None,
        *,
        server_side: bool,
        server_hostname: str | None,
        extra: dict[str, Any] | None,
        server: Any,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None,
    ) -> asyncio.Transport:
        # TLS is asyncio's memory-BIO protocol over a conformant stream, so it
        # is written once for every adapter.
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,  # type: ignore[arg-type]  # None is accepted: the stub is narrower
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._stream_transport(stream, ssl_protocol, None, extra, server)
        app_transport: asyncio.Transport = ssl_protocol._app_transport
        return app_transport

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: asyncio.BaseProtocol,
        sslcontext: Any,
        waiter: asyncio.Future[None] | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        call_connection_made: bool = True,
    ) -> asyncio.Transport:
        return self._ssl_transport(
            self._driver.open_stream(rawsock),
            protocol,
            sslcontext,
            waiter,
            server_side=server_side,
            server_hostname=server_hostname,
            extra=extra,
            server=server,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    # asyncio's own pipe and subprocess transports, as methods.
    _make_read_pipe_transport = read_pipe_transport
    _make_write_pipe_transport = write_pipe_transport
    _make_subprocess_transport = make_subprocess_transport

    def _make_datagram_transport(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        address: Any = None,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> asyncio.DatagramTransport:
        transport = DatagramTransport(
            self, self._driver.open_datagram(sock), protocol, address, waiter, extra
        )
        self._own(sock, transport)
        return transport

    # -- serving ------------------------------------------------------------

    def _start_serving(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> None:
        on_stream = functools.partial(
            self.serve_stream,
            protocol_factory=protocol_factory,
            ssl=sslcontext,
            server=server,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._listeners[sock] = self._driver.listen(sock, backlog, on_stream)

    def serve_stream(
        self,
        stream: Stream,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        ssl: Any = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> asyncio.Transport | None:
        """Run a new protocol over an accepted stream, as an asyncio server does.

        This is the one accept path: core's listeners use it, and so do
        adapters whose framework accepts connections itself (a Tornado
        ``TCPServer``, a Twisted ``Factory``, a gevent ``StreamServer``).
        Call it in this loop's context.  Return the transport the protocol
        sees (the TLS one with ``ssl``), or None if the protocol factory
        failed and the stream was aborted.
        """
        try:
            protocol = protocol_factory()
        except (SystemExit, KeyboardInterrupt):
            stream.abort()  # nobody else holds the accepted connection
            raise
        except BaseException as exc:
            stream.abort()
            self.call_exception_handler(
                {"message": "Error on transport creation for incoming connection", "exception": exc}
            )
            return None
        if ssl is None:
            return self._stream_transport(stream, protocol, None, None, server)
        waiter = self.create_future()
        transport = self._ssl_transport(
            stream,
            protocol,
            ssl,
            waiter,
            server_side=True,
            server_hostname=None,
            extra=None,
            server=server,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        waiter.add_done_callback(functools.partial(self._handshake_done, transport))
        return transport

    def _handshake_done(self, transport: asyncio.Transport, waiter: asyncio.Future[None]) -> None:
        if waiter.cancelled() or waiter.exception() is None:
            return
        transport.close()
        if self._debug:
            self.call_exception_handler(
                {
                    "message": "Error on transport creation for incoming connection",
                    "exception": waiter.exception(),
                }
            )

    def _stop_serving(self, sock: socket.socket) -> None:
        # asyncio's Server leaves closing the listening socket to the loop.
        listener = self._listeners.pop(sock, None)
        if listener is not None:
            listener.close()
        sock.close()

    # -- Unix sockets -------------------------------------------------------

    async def create_unix_connection(  # type: ignore[override]  # the stub's generics are narrower
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: str | os.PathLike[str] | None = None,
        *,
        ssl: Any = None,
        sock: socket.socket | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        if ssl and server_hostname is None:
            raise ValueError("you have to pass server_hostname when using ssl")
        if not ssl and server_hostname is not None:
            raise ValueError("server_hostname is only meaningful with ssl")
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, os.fspath(path))
            except BaseException:
                sock.close()
                raise
        elif sock is None:
            raise ValueError("no path and sock were specified")
        elif sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        sock.setblocking(False)
        result: tuple[asyncio.BaseTransport, asyncio.BaseProtocol]
        result = await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        return result

    async def create_unix_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: str | os.PathLike[str] | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
    ) -> asyncio.Server:
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            name = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if not name.startswith("\0"):
                # A stale socket file from a dead server would make bind fail.
                try:
                    if stat.S_ISSOCK(os.stat(name).st_mode):
                        os.remove(name)
                except FileNotFoundError:
                    pass
            try:
                sock.bind(name)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"Address {name!r} is already in use") from None
                raise
        elif sock is None:
            raise ValueError("path was not specified, and no sock specified")
        elif sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        sock.setblocking(False)
        server = base_events.Server(
            self,
            [sock],
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        if start_serving:
            server._start_serving()  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        return server

    # -- signals ------------------------------------------------------------

    def add_signal_handler(self, sig: int, callback: Callable[[*Ts], object], *args: *Ts) -> None:
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        # The signal module checks the OS thread itself.  threading cannot be
        # asked: monkey-patched (gevent), its current_thread() is the current
        # greenlet, and a loop run by a spawned greenlet of the main thread
        # would be refused.
        try:
            self._wake_on_signals()
        except RuntimeError:
            raise RuntimeError("signal handlers can only be added in the main thread") from None
        self._signal_handlers[sig] = events.Handle(callback, args, self, None)
        try:
            signal.signal(sig, self._on_signal)
            signal.siginterrupt(sig, False)
        except (OSError, ValueError) as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._stop_waking_on_signals()
            if isinstance(exc, ValueError):  # not the main OS thread
                raise RuntimeError("signal handlers can only be added in the main thread") from None
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig: int) -> bool:
        self._check_signal(sig)
        if self._signal_handlers.pop(sig, None) is None:
            return False
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, default)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise
        if not self._signal_handlers:
            self._stop_waking_on_signals()
        return True

    def _check_signal(self, sig: int) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _on_signal(self, signum: int, frame: object) -> None:
        handle = self._signal_handlers.get(signum)
        if handle is not None and not self._closed:
            self._ready.append(handle)
            self._write_to_self()

    def _wake_on_signals(self) -> None:
        # Frameworks that poll in C (libuv, libev) only return to Python, and
        # so only run Python signal handlers, when a watched fd is readable:
        # the interpreter's wakeup fd provides that.
        if self._signal_socks is not None:
            return
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        try:
            signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        except ValueError as exc:
            rsock.close()
            wsock.close()
            raise RuntimeError(str(exc)) from None
        self._signal_socks = (rsock, wsock)
        self._driver.add_reader(rsock.fileno(), functools.partial(_drain, rsock))

    def _stop_waking_on_signals(self) -> None:
        if self._signal_socks is None:
            return
        rsock, wsock = self._signal_socks
        self._signal_socks = None
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        self._driver.remove_reader(rsock.fileno())
        rsock.close()
        wsock.close()


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass
