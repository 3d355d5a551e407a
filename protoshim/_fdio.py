"""Streams, datagrams and listeners built on descriptor watchers alone.

An adapter whose framework can watch a file descriptor, and nothing more
(or whose own stream machinery is slower or less faithful), inherits these
through :class:`FdDriver`: it then implements only the loop primitives of
:class:`~protoshim._primitives.Driver`.  These classes are also the plainest
reading of the primitive contract.
"""

from __future__ import annotations

import collections
import errno
import socket
from typing import Any, Generic, TypeVar

from ._primitives import Address, Cancellable, DatagramSink, Driver, OnStream, StreamSink
from ._watches import Watch

__all__ = [
    "ACCEPT_NOTHING",
    "ACCEPT_RETRY_DELAY",
    "FdDatagram",
    "FdDriver",
    "FdListener",
    "FdStream",
    "accept_pauses",
]


SinkT = TypeVar("SinkT", StreamSink, DatagramSink)

READ_SIZE = 256 * 1024
#: Seconds to stop accepting after running out of descriptors, as asyncio does.
ACCEPT_RETRY_DELAY = 1.0
#: accept() errors that only mean nothing is left to accept now, as in asyncio.
ACCEPT_NOTHING = (BlockingIOError, InterruptedError, ConnectionAbortedError)
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def accept_pauses(exc: OSError) -> bool:
    """Return whether an ``accept()`` error must pause accepting for a while.

    Out of descriptors or memory, the connection stays pending and the
    listening socket readable, so without a pause the loop would spin.  The
    error is raised after pausing, like any other, so that it reaches the
    loop's exception handler.
    """
    return exc.errno in _OUT_OF_RESOURCES


class _Watched(Watch, Generic[SinkT]):
    """Own a non-blocking socket, its sink, and its read watcher.

    It is also its descriptor's :class:`Watch`: a :class:`WatchTable` keeps
    it as the watch of the descriptor instead of a separate object, and calls
    it to read (``__call__``), so an idle connection pays for neither a watch
    nor a bound method (about 100 bytes).
    """

    # One per connection: no __dict__.
    __slots__ = ("_driver", "_reading", "_sink", "_sock")

    def __init__(self, driver: Driver, sock: socket.socket) -> None:
        sock.setblocking(False)
        Watch.__init__(self, sock.fileno())
        self._driver = driver
        self._sock = sock
        self._sink: SinkT | None = None
        self._reading = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self.fd}>"

    def attach(self, sink: SinkT) -> None:
        self._sink = sink

    def start_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._driver.add_reader(self.fd, self)

    def stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._driver.remove_reader(self.fd)

    def _read_ready(self) -> None:
        raise NotImplementedError

    def __call__(self) -> None:
        self._read_ready()

    def socket(self) -> socket.socket:
        return self._sock


class FdStream(_Watched[StreamSink]):
    """Move a stream socket's bytes with non-blocking calls and fd watchers."""

    __slots__ = ("_buffer",)

    def __init__(self, driver: Driver, sock: socket.socket) -> None:
        super().__init__(driver, sock)
        # A bytearray only while a tail is unsent: idle connections share b"".
        self._buffer: bytes | bytearray = b""

    def _read_ready(self) -> None:
        assert self._sink is not None
        try:
            data = self._sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.stop_reading()
            self._sink._on_error(exc)
            return
        if data:
            self._sink._on_data(data)
        else:
            self.stop_reading()
            self._sink._on_eof()

    __call__ = _read_ready  # no extra call per read

    def write(self, data: bytes) -> int:
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                # Now, as the stdlib transport does: a writer that loops on
                # write() and an unpaused drain() would not see a later report.
                assert self._sink is not None
                self._sink._on_error(exc)
                return 0
            if sent == len(data):
                return 0
            self._driver.add_writer(self.fd, self._write_ready)
            # The one copy of the unsent tail.
            self._buffer = bytearray(memoryview(data)[sent:])
            return len(data) - sent
        self._buffer += data
        return len(self._buffer)

    def _write_ready(self) -> None:
        assert self._sink is not None
        try:
            sent = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._driver.remove_writer(self.fd)
            self._buffer = b""
            self._sink._on_error(exc)
            return
        del self._buffer[:sent]  # type: ignore[union-attr]
        if not self._buffer:
            self._buffer = b""  # give the drained buffer's memory back
            self._driver.remove_writer(self.fd)
        self._sink._on_written()

    def queued(self) -> int:
        return len(self._buffer)

    def shutdown_write(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stop_reading()
        self._buffer = b""
        self._driver.remove_writer(self.fd)
        self._sock.close()

    def abort(self) -> None:
        self.close()


class FdDatagram(_Watched[DatagramSink]):
    """Move a datagram socket's packets with non-blocking calls and fd watchers."""

    __slots__ = ("_queue", "_queued")

    def __init__(self, driver: Driver, sock: socket.socket) -> None:
        super().__init__(driver, sock)
        self._queue: collections.deque[tuple[bytes, Address | None]] = collections.deque()
        self._queued = 0

    def _read_ready(self) -> None:
        assert self._sink is not None
        try:
            data, addr = self._sock.recvfrom(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._sink._on_error_received(exc)
            return
        self._sink._on_datagram(data, addr)

    def _send(self, data: bytes, addr: Address | None) -> None:
        if addr is None:
            self._sock.send(data)
        else:
            self._sock.sendto(data, addr)

    def sendto(self, data: bytes, addr: Address | None) -> None:
        assert self._sink is not None
        if not self._queue:
            try:
                self._send(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._driver.add_writer(self.fd, self._write_ready)
            except OSError as exc:
                # Datagram errors are not fatal; asyncio reports them at once.
                self._sink._on_error_received(exc)
                return
        self._queue.append((data, addr))
        self._queued += len(data)

    def _write_ready(self) -> None:
        assert self._sink is not None
        while self._queue:
            data, addr = self._queue[0]
            try:
                self._send(data, addr)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._sink._on_error_received(exc)
            self._queue.popleft()
            self._queued -= len(data)
        if not self._queue:
            self._driver.remove_writer(self.fd)
        self._sink._on_written()

    def queued(self) -> int:
        return self._queued

    def close(self) -> None:
        self.stop_reading()
        self._queue.clear()
        self._queued = 0
        self._driver.remove_writer(self.fd)
        self._sock.close()

    def abort(self) -> None:
        self.close()


class FdListener:
    """Accept connections with non-blocking ``accept`` and an fd watcher."""

    def __init__(
        self, driver: Driver, sock: socket.socket, backlog: int, on_stream: OnStream
    ) -> None:
        self._driver = driver
        self._sock = sock
        self._fd = sock.fileno()
        self._backlog = backlog
        self._on_stream = on_stream
        self._retry: Cancellable | None = None
        self._closed = False
        driver.add_reader(self._fd, self._accept_ready)

    def _accept_ready(self) -> None:
        # Accept a bounded batch, so one busy listener cannot starve the loop.
        for _ in range(self._backlog):
            try:
                conn, _addr = self._sock.accept()
            except ACCEPT_NOTHING:
                return
            except OSError as exc:
                if accept_pauses(exc):
                    self._driver.remove_reader(self._fd)
                    self._retry = self._driver.call_later(ACCEPT_RETRY_DELAY, self._resume)
                # Out of this callback, the driver hands it to the loop's
                # exception handler, and the loop goes on.
                raise
            conn.setblocking(False)
            self._on_stream(self._driver.open_stream(conn))

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._driver.add_reader(self._fd, self._accept_ready)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        else:
            self._driver.remove_reader(self._fd)


class FdDriver:
    """Provide streams, datagrams and listeners from a driver's fd watchers.

    Mix in before a class that implements the loop primitives of
    :class:`~protoshim._primitives.Driver`.
    """

    def open_stream(self: Any, sock: socket.socket) -> FdStream:
        return FdStream(self, sock)

    def listen(self: Any, sock: socket.socket, backlog: int, on_stream: OnStream) -> FdListener:
        return FdListener(self, sock, backlog, on_stream)

    def open_datagram(self: Any, sock: socket.socket) -> FdDatagram:
        return FdDatagram(self, sock)
