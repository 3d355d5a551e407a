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

Everything else (buffers, the write path, Tornado's error handling) is
Tornado's own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.platform.asyncio import BaseAsyncIOLoop
from tornado.tcpserver import TCPServer

from ..._fdio import _OUT_OF_RESOURCES, ACCEPT_RETRY_DELAY
from ..._primitives import OnStream, StreamSink

if TYPE_CHECKING:
    from ._loop import TornadoDriver

__all__ = ["HalfCloseIOStream", "PausingTCPServer", "TornadoListener", "TornadoStream"]

logger = logging.getLogger("protoshim")

#: Bytes asked for per read; IOStream reads ``read_chunk_size`` at a time
#: from the socket until it has this much or the socket is drained.
READ_SIZE = 256 * 1024


class HalfCloseIOStream(IOStream):
    """An ``IOStream`` that survives the peer's EOF and can stop reading."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.peer_eof = False
        #: whether the owner wants data; IOStream may then read ahead one chunk
        self.reads_wanted = False
        #: called after the write buffer shrank or a write failed
        self.on_write_progress: Callable[[], None] | None = None

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

    def _handle_events(self, fd: Any, events: int) -> None:
        super()._handle_events(fd, events)
        self._unwatch_idle()

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

    def cancel_read(self) -> None:
        """Forget the pending read; data already buffered stays for the next one."""
        self._read_future = None
        self._read_bytes = None
        self._read_partial = False
        self._unwatch_idle()

    def _handle_write(self) -> None:
        before = self._total_write_done_index
        super()._handle_write()
        if self.on_write_progress is not None and (
            self._total_write_done_index != before or self.closed()
        ):
            self.on_write_progress()

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
    """The :class:`~protoshim.Stream` primitive on a :class:`HalfCloseIOStream`."""

    def __init__(self, driver: TornadoDriver, stream: HalfCloseIOStream) -> None:
        self._driver = driver
        self._ios = stream
        self._sock: socket.socket = stream.socket
        self._sink: StreamSink | None = None
        self._reading = False
        self._read_fut: asyncio.Future[bytes] | None = None
        # A read that finished after stop_reading, kept for start_reading.
        self._held: asyncio.Future[bytes] | None = None
        self._in_call = False
        self._notify_pending = False
        self._failed = False
        self._released = False
        stream.on_write_progress = self._write_progress

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
            return
        fut.remove_done_callback(self._on_read_future)
        if fut.done():
            self._held = fut
        else:
            self._ios.cancel_read()
            fut.cancel()

    def _read(self) -> None:
        if self._ios.closed():
            self._fail_soon(self._ios.error)
            return
        # read_bytes is typed as returning an Awaitable; it is a Future.
        fut = cast(
            "asyncio.Future[bytes]", self._driver.in_tornado(self._ios.read_bytes, READ_SIZE, True)
        )
        self._read_fut = fut
        fut.add_done_callback(self._on_read_future)

    def _on_read_future(self, fut: asyncio.Future[bytes]) -> None:
        # A Tornado future: its callbacks run in Tornado's context.
        if fut is self._read_fut:
            self._read_fut = None
            self._driver.in_protoshim(self._read_done, fut)

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
        if self._ios.closed():
            self._fail_soon(self._ios.error)
            return
        self._in_call = True
        try:
            self._driver.in_tornado(self._ios.write, data)
        finally:
            self._in_call = False

    def queued(self) -> int:
        return self._ios.queued()

    def _write_progress(self) -> None:
        if self._in_call:
            # Bytes went out inside write(): tell core afterwards, so a
            # queue that emptied here still resumes the protocol.
            if not self._notify_pending:
                self._notify_pending = True
                self._driver.add_callback(self._notify_written)
        else:
            self._driver.in_protoshim(self._notify_written)

    def _notify_written(self) -> None:
        self._notify_pending = False
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
        if not self._failed:
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
        self._ios.on_write_progress = None
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
    readable, so the IOLoop would call it again at once, forever.  Like
    asyncio, this pauses accepting for :data:`ACCEPT_RETRY_DELAY` seconds.
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
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            logger.error(
                "accept on %r failed (%s); retrying in %.1f s",
                sock.getsockname(),
                exc.strerror,
                ACCEPT_RETRY_DELAY,
            )
            fd = sock.fileno()
            io_loop.update_handler(fd, IOLoop.NONE)
            handle = io_loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting, io_loop, fd)
            self._retries[fd] = (io_loop, handle)

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
