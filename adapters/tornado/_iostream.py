"""Stream and listener primitives on Tornado's ``IOStream`` and ``TCPServer``.

``IOStream`` is built for request/response code, and three of its habits
would break the transport rules core enforces; the subclass below changes
exactly those, and nothing else:

* a 0-byte read closes the whole socket, so a protocol could not answer
  after the peer's EOF: here EOF completes the pending read with ``b""``
  and the socket stays open until core closes it;
* an idle stream keeps its socket registered for reading (to notice a close
  early) and reads up to a chunk into its buffer: here the socket is
  watched for reading only while a read is pending, so a paused protocol
  leaves the data in the kernel, where TCP pushes back on the peer;
* there is no way to take back a pending read: :meth:`HalfCloseIOStream.cancel_read`
  drops it, so ``stop_reading`` really stops reading.

It also reports to its owner without per-call futures (see the class), so
that a message costs one crossing into protoshim's loop and no extra loop
iteration.  Everything else (buffers, the socket reads and writes,
Tornado's error handling) is Tornado's own.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.platform.asyncio import BaseAsyncIOLoop
from tornado.tcpserver import TCPServer

from ..._fdio import ACCEPT_RETRY_DELAY, accept_pauses
from ..._primitives import OnStream, StreamSink

if TYPE_CHECKING:
    from ._loop import TornadoDriver

__all__ = ["HalfCloseIOStream", "PausingTCPServer", "TornadoListener", "TornadoStream"]


#: Bytes asked for per read, and the ``read_chunk_size`` of the adapter's
#: own streams: IOStream allocates (and zeroes) a chunk for every socket
#: read, so this is Tornado's default rather than asyncio's 256 KiB.
READ_SIZE = 64 * 1024


class HalfCloseIOStream(IOStream):
    """An ``IOStream`` that survives the peer's EOF and can stop reading.

    It also tells its owner about events without futures: :meth:`send` is
    ``write`` without the Future that ``write`` creates and resolves (with a
    callback of its own) on every call, and the owner learns that a read
    completed or the buffer shrank through :attr:`on_events`, called once
    after each IOLoop event, instead of through a future's done callback one
    loop iteration later.
    """

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.peer_eof = False
        #: whether the owner wants data; IOStream may then read ahead one chunk
        self.reads_wanted = False
        #: set when the write buffer shrank or a write failed; the owner clears it
        self.wrote = False
        #: called after each IOLoop event on the stream, in Tornado's context
        self.on_events: Callable[[], None] | None = None
        #: called when the stream is closed anywhere but in an IOLoop event
        self.on_close: Callable[[], None] | None = None
        self._in_events = False
        self._native_loop = cast(BaseAsyncIOLoop, self.io_loop).asyncio_loop

    def read_from_fd(self, buf: bytearray | memoryview) -> int | None:
        read = super().read_from_fd(buf)
        if read == 0:
            # IOStream would close the socket here, write side included.
            self.peer_eof = True
            return None
        return read

    def _find_read_pos(self) -> int | None:
        pos = super()._find_read_pos()
        if pos is None and self.peer_eof and self._read_bytes is not None:
            # Nothing buffered: the read completes with b"", the end of the stream.
            return 0 if self._read_buffer_size == 0 else None
        return pos

    def _start_read(self) -> asyncio.Future[Any]:
        if self._read_future is not None:
            return super()._start_read()  # raises Tornado's own error
        # Future() would look up the running loop (a getpid() on CPython
        # 3.11), and the owner starts reads from protoshim's context: name
        # the IOLoop's loop, the one Tornado would have found.
        future: asyncio.Future[Any] = asyncio.Future(loop=self._native_loop)
        self._read_future = future
        return future

    def _handle_events(self, fd: Any, events: int) -> None:
        self._in_events = True
        try:
            super()._handle_events(fd, events)
            self._unwatch_idle()
        finally:
            self._in_events = False
            if self.on_events is not None:
                self.on_events()

    def _signal_closed(self) -> None:
        super()._signal_closed()
        if not self._in_events and self.on_close is not None:
            self.on_close()

    def _unwatch_idle(self) -> None:
        # IOStream re-adds READ interest whenever it goes idle: harmless
        # between two reads, but it must not read while the owner is paused,
        # nor spin on a socket that stays readable after EOF.
        if self.reads_wanted and not self.peer_eof:
            return
        state = self._state
        reading = self._read_future is not None
        if state is not None and state & IOLoop.READ and not reading and not self.closed():
            self._state = state & ~IOLoop.READ
            self.io_loop.update_handler(self.fileno(), self._state)

    def read_partial(self, num_bytes: int, *, try_socket: bool) -> asyncio.Future[bytes]:
        """Return ``read_bytes(num_bytes, partial=True)``, trying the socket at once only if asked.

        ``read_bytes`` tries the socket before returning.  Right after a
        read that try mostly ends in EAGAIN (a zeroed chunk and an exception
        for nothing), and data that did arrive would only be delivered on
        the next iteration anyway.  Without ``try_socket`` the read is
        satisfied from the buffer, or waits for the IOLoop to report the
        socket readable.
        """
        if try_socket:
            # read_bytes is typed as returning an Awaitable; it is a Future.
            return cast("asyncio.Future[bytes]", self.read_bytes(num_bytes, True))
        future: asyncio.Future[bytes] = self._start_read()
        self._read_bytes = num_bytes
        self._read_partial = True
        pos = self._find_read_pos()
        if pos is not None:
            self._read_from_buffer(pos)
        elif not self.closed():
            self._add_io_state(IOLoop.READ)
        return future

    def cancel_read(self) -> None:
        """Forget the pending read; data already buffered stays for the next one."""
        self._read_future = None
        self._read_bytes = None
        self._read_partial = False
        self._unwatch_idle()

    def send(self, data: bytes) -> None:
        """Queue ``data`` and send what the socket takes now, as ``write`` does, without a Future.

        :attr:`wrote` is left alone when only ``data`` itself went out: the
        caller reads :meth:`queued` afterwards and sees that for itself.
        """
        self._check_closed()
        wrote = self.wrote
        backlog = self._total_write_index - self._total_write_done_index
        self._write_buffer.append(data)
        self._total_write_index += len(data)
        self._handle_write()
        if not backlog and not self.closed():
            self.wrote = wrote
        if self._write_buffer:  # None once closed
            self._add_io_state(IOLoop.WRITE)

    def _handle_write(self) -> None:
        before = self._total_write_done_index
        super()._handle_write()
        if self._total_write_done_index != before or self.closed():
            self.wrote = True

    def queued(self) -> int:
        """Return the bytes accepted by ``write`` and not yet sent."""
        if self.closed():
            return 0
        return self._total_write_index - self._total_write_done_index


def adopt(stream: IOStream) -> HalfCloseIOStream:
    """Return a :class:`HalfCloseIOStream` on the socket of an unused ``IOStream``.

    ``TCPServer`` hands out plain ``IOStream`` objects; one that has not read
    or written yet holds nothing but its socket and settings, so the socket
    is moved to a stream that keeps the transport rules.
    """
    if isinstance(stream, HalfCloseIOStream):
        return stream
    if type(stream) is not IOStream:
        raise TypeError(
            f"cannot serve a protocol on {type(stream).__name__}: TLS is done by protoshim "
            "(pass ssl= to the server instead of Tornado's ssl_options)"
        )
    if stream._state is not None or stream._write_buffer or stream._read_buffer_size:
        raise ValueError("the IOStream was already used")
    sock = stream.socket
    return HalfCloseIOStream(
        sock,
        max_buffer_size=stream.max_buffer_size,
        read_chunk_size=stream.read_chunk_size,
    )


class TornadoStream:
    """The :class:`~protoshim.Stream` primitive on a :class:`HalfCloseIOStream`.

    Events reach core in one crossing into protoshim's context per IOLoop
    event (:meth:`_deliver`): the completed read, then the write progress.
    A read that completes, or a stream that closes, inside a call core made
    (``start_reading``, ``write``...) is delivered on the IOLoop's next
    iteration instead, as a future's callback would have been.
    """

    def __init__(self, driver: TornadoDriver, stream: HalfCloseIOStream) -> None:
        self._driver = driver
        self._ios = stream
        self._sock: socket.socket = stream.socket
        self._sink: StreamSink | None = None
        self._reading = False
        self._read_fut: asyncio.Future[bytes] | None = None
        # A read that finished after stop_reading, kept for start_reading.
        self._held: asyncio.Future[bytes] | None = None
        self._deliver_pending = False
        self._failed = False
        self._fail_pending = False
        self._released = False
        stream.on_events = self._on_events
        stream.on_close = self._deliver_soon

    @classmethod
    def from_socket(cls, driver: TornadoDriver, sock: socket.socket) -> TornadoStream:
        """Wrap a connected socket in a new stream on the driver's IOLoop."""
        make = functools.partial(HalfCloseIOStream, sock, read_chunk_size=READ_SIZE)
        return cls(driver, driver.in_tornado(make))

    def __repr__(self) -> str:
        return f"<TornadoStream fd={self._sock.fileno()}>"

    @property
    def iostream(self) -> HalfCloseIOStream:
        """The Tornado stream underneath."""
        return self._ios

    def attach(self, sink: StreamSink) -> None:
        self._sink = sink

    # -- events -------------------------------------------------------------

    def _on_events(self) -> None:
        # Called by the IOStream after an IOLoop event, in Tornado's context.
        fut = self._read_fut
        if (fut is not None and fut.done()) or self._ios.wrote:
            self._driver.enter(self._deliver)

    def _deliver_soon(self) -> None:
        if not self._deliver_pending and not self._released:
            self._deliver_pending = True
            self._driver.add_callback(self._deliver_later)

    def _deliver_later(self) -> None:
        self._deliver_pending = False
        self._deliver()

    def _deliver(self) -> None:
        if self._released:
            return
        fut = self._read_fut
        if fut is not None and fut.done():
            self._read_fut = None
            self._read_done(fut)
        if self._ios.wrote:
            self._ios.wrote = False
            self._notify_written()

    # -- reading ------------------------------------------------------------

    def start_reading(self) -> None:
        if self._reading or self._released:
            return
        self._reading = True
        self._ios.reads_wanted = True
        held, self._held = self._held, None
        if held is not None:
            # Never call the sink from inside a primitive call.
            self._driver.add_callback(self._read_done, held)
        else:
            self._read()

    def stop_reading(self) -> None:
        if not self._reading:
            return
        self._reading = False
        self._ios.reads_wanted = False
        fut, self._read_fut = self._read_fut, None
        if fut is None:
            self._ios.cancel_read()  # drops any read-ahead watch
        elif fut.done():
            self._held = fut
        else:
            self._ios.cancel_read()
            fut.cancel()

    def _read(self) -> None:
        ios = self._ios
        if ios.closed():
            self._fail_soon(ios.error)
            return
        # Called from protoshim's context: this path looks up no running
        # loop (HalfCloseIOStream._start_read names its loop).
        # With nothing else queued the IOLoop polls and sleeps next; trying
        # the socket first, as read_bytes does, measurably cuts the round
        # trip of a lone connection on loopback.  Under load it only wastes
        # a read, and races the events the loop already polled.
        fut = ios.read_partial(READ_SIZE, try_socket=self._driver.native_idle())
        self._read_fut = fut
        if fut.done():
            # Completed from the buffer: never call the sink from here, and
            # let other connections have their turn first.
            self._deliver_soon()

    def _read_done(self, fut: asyncio.Future[bytes]) -> None:
        sink = self._sink
        if sink is None or self._released or fut.cancelled():
            return
        if not self._reading:
            self._held = fut
            return
        exc = fut.exception()
        if exc is not None:
            self._reading = self._ios.reads_wanted = False
            self._fail(exc)
            return
        data = fut.result()
        if not data:
            self._reading = self._ios.reads_wanted = False
            sink._on_eof()
            return
        sink._on_data(data)
        if self._reading and self._read_fut is None and not self._released:
            self._read()

    # -- writing ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        ios = self._ios
        if ios.closed():
            # Now, as the stdlib transport does: a writer that loops on
            # write() and an unpaused drain() never yields to a later report.
            self._fail(ios.error)
            return
        # Like _read, safe in protoshim's context: send() creates no Future.
        ios.send(data)
        if ios.closed():
            self._fail(ios.error)  # the send itself failed
        elif ios.wrote:
            # Bytes queued earlier went out, or the write failed: tell core
            # afterwards, so a queue that emptied here still resumes the protocol.
            self._deliver_soon()

    def queued(self) -> int:
        ios = self._ios
        if ios.closed():
            return 0
        return ios._total_write_index - ios._total_write_done_index

    def _notify_written(self) -> None:
        if self._sink is None or self._released:
            return
        if self._ios.closed():
            self._fail(self._ios.error)
        else:
            self._sink._on_written()

    def shutdown_write(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    # -- errors and closing -------------------------------------------------

    def _fail_soon(self, exc: BaseException | None) -> None:
        if not self._failed and not self._fail_pending:
            self._fail_pending = True
            self._driver.add_callback(self._fail, exc)

    def _fail(self, exc: BaseException | None) -> None:
        if self._failed or self._released or self._sink is None:
            return
        self._failed = True
        if isinstance(exc, StreamClosedError):
            exc = exc.real_error
        if exc is None:
            exc = ConnectionResetError("the connection was closed")
        self._sink._on_error(exc)

    def close(self) -> None:
        if self._released:
            return
        self._released = True
        self._sink = None
        self._ios.on_events = self._ios.on_close = None
        self.stop_reading()
        self._held = None
        self._driver.in_tornado(self._ios.close)

    def abort(self) -> None:
        # IOStream.close drops whatever is still buffered.
        self.close()

    def socket(self) -> socket.socket:
        return self._sock


class PausingTCPServer(TCPServer):
    """A ``TCPServer`` that stops accepting for a while when out of descriptors.

    Tornado's accept handler lets EMFILE escape; the listening socket stays
    readable, so the IOLoop would call it again at once, forever.  Core's
    rule applies instead (:func:`~protoshim._fdio.accept_pauses`): accepting
    pauses for :data:`ACCEPT_RETRY_DELAY` seconds, and the error goes on to
    the exception handler, as every failed accept does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._retries: dict[int, tuple[IOLoop, object]] = {}

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        sockets = list(sockets)
        super().add_sockets(sockets)
        io_loop = cast(BaseAsyncIOLoop, IOLoop.current())
        for sock in sockets:
            fd = sock.fileno()
            fileobj, handler = io_loop.handlers[fd]
            guarded = functools.partial(self._accept, io_loop, sock, handler)
            io_loop.handlers[fd] = (fileobj, guarded)

    def _accept(
        self,
        io_loop: BaseAsyncIOLoop,
        sock: socket.socket,
        handler: Callable[[Any, int], None],
        fileobj: Any,
        events: int,
    ) -> None:
        try:
            handler(fileobj, events)
        except OSError as exc:
            if accept_pauses(exc):
                fd = sock.fileno()
                io_loop.update_handler(fd, IOLoop.NONE)
                handle = io_loop.call_later(
                    ACCEPT_RETRY_DELAY, self._resume_accepting, io_loop, fd
                )
                self._retries[fd] = (io_loop, handle)
            raise

    def _resume_accepting(self, io_loop: BaseAsyncIOLoop, fd: int) -> None:
        self._retries.pop(fd, None)
        if fd in self._handlers:
            io_loop.update_handler(fd, IOLoop.READ)

    def _cancel_retry(self, fd: int) -> None:
        retry = self._retries.pop(fd, None)
        if retry is not None:
            io_loop, handle = retry
            io_loop.remove_timeout(handle)

    def stop(self) -> None:
        for fd in list(self._retries):
            self._cancel_retry(fd)
        super().stop()


class TornadoListener(PausingTCPServer):
    """Accept connections for core through Tornado's ``TCPServer``.

    Core creates, binds and closes the listening socket; this server only
    accepts on it (``add_socket``) and stops accepting on :meth:`close`.
    """

    def __init__(self, driver: TornadoDriver, sock: socket.socket, on_stream: OnStream) -> None:
        super().__init__(read_chunk_size=READ_SIZE)
        self._driver = driver
        self._on_stream = on_stream
        self._sock = sock
        self._fd = sock.fileno()
        driver.in_tornado(self.add_socket, sock)

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        primitive = TornadoStream(self._driver, adopt(stream))
        self._driver.in_protoshim(self._on_stream, primitive)

    def close(self) -> None:
        """Stop accepting, leaving the socket open for core to close."""
        self._cancel_retry(self._fd)
        remove = self._handlers.pop(self._fd, None)
        if remove is not None:
            remove()
        self._sockets.pop(self._fd, None)
