"""Streams and datagram endpoints on libuv's TCP, Pipe and UDP handles.

A handle is opened on the descriptor of the socket that core created, and
from then on owns it: libuv closes the descriptor when the handle is closed,
and the Python socket object (kept for ``get_extra_info``) is detached at
that moment so that it never closes the number a second time.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, cast

import pyuv

from ...core import Address, DatagramSink, StreamSink

if TYPE_CHECKING:
    from ._driver import PyuvDriver

__all__ = ["UvDatagram", "UvStream", "uv_error"]

UVError: type[Exception] = pyuv.error.UVError
UV_EOF: int = pyuv.errno.UV_EOF
UV_EAGAIN: int = pyuv.errno.UV_EAGAIN
UV_ECANCELED: int = pyuv.errno.UV_ECANCELED

# libuv reports system errors as negated errno values; its own codes start here.
_FIRST_UV_CODE = 3000


def uv_error(code: int) -> OSError:
    """Return the OSError (with its errno subclass) for a libuv error code."""
    if 0 < -code < _FIRST_UV_CODE:
        return OSError(-code, os.strerror(-code))
    return OSError(-code, pyuv.errno.strerror(code))


def uv_exception_error(exc: Exception) -> OSError:
    """Return the OSError for an exception raised by a pyuv call."""
    code = exc.args[0] if exc.args else None
    if isinstance(code, int):
        return uv_error(code)
    return OSError(str(exc))


def release_socket(sock: socket.socket) -> None:
    """Make ``sock`` forget the descriptor that libuv has just closed."""
    sock.detach()


class _Closing:
    """Close a libuv handle and release its socket: the same for every handle."""

    _closed: bool
    _reading: bool
    _driver: PyuvDriver
    _fd: int
    _handle: Any
    _sock: socket.socket

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reading = False
        self._driver._open.discard(self)
        # uv_close closes the descriptor now and cancels queued writes; the
        # handle object lives on in pyuv until its close callback has run.
        self._handle.close()
        release_socket(self._sock)

    def abort(self) -> None:
        self.close()

    def socket(self) -> socket.socket:
        return self._sock


class UvStream(_Closing):
    """Move the bytes of one connected socket through a TCP or Pipe handle."""

    __slots__ = (
        "_closed",
        "_driver",
        "_eof_seen",
        "_fd",
        "_handle",
        "_reading",
        "_sink",
        "_sock",
    )

    _sink: StreamSink  # bound by attach(), before any other call

    def __init__(self, driver: PyuvDriver, handle: Any, sock: socket.socket) -> None:
        self._driver = driver
        self._handle = handle
        self._sock = sock
        self._fd = sock.fileno()
        self._reading = False
        self._eof_seen = False  # libuv reported EOF; the sink has not heard yet
        self._closed = False

    def __repr__(self) -> str:
        kind = type(self._handle).__name__
        return f"<UvStream {kind} fd={self._fd}{' closed' if self._closed else ''}>"

    def attach(self, sink: StreamSink) -> None:
        self._sink = sink

    # -- reading ------------------------------------------------------------

    def start_reading(self) -> None:
        if not self._reading and not self._closed:
            self._reading = True
            self._handle.start_read(self._on_read)

    def stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            # A pending EOF is dropped, as asyncio's pause cancels a read
            # event already polled; reading again reads the EOF again.
            self._eof_seen = False
            if not self._closed:
                self._handle.stop_read()

    def _on_read(self, handle: Any, data: bytes | None, error: int | None) -> None:
        if error is None:
            if data:  # libuv reports EAGAIN as an empty read
                self._sink._on_data(data)
            return
        # pyuv has already stopped reading on any error, EOF included.
        if error == UV_EOF:
            # libuv reads until EAGAIN, and reports a hang-up in the same
            # callback as the data before it; asyncio reads once per
            # iteration, so the callbacks that data scheduled run before
            # eof_received.  Report it on the next iteration, after them.
            self._eof_seen = True
            self._driver._defer(self._report_eof, None)
            return
        self._reading = False
        self._sink._on_error(uv_error(error))

    def _report_eof(self, _: object) -> None:
        if not self._eof_seen or self._closed:
            return  # paused or closed meanwhile
        self._eof_seen = False
        self._reading = False
        self._sink._on_eof()

    # -- writing ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        handle = self._handle
        if not handle.write_queue_size:
            # Writing now, in the caller, spares a write request and its callback.
            try:
                sent: int = handle.try_write(data)
            except UVError:
                sent = 0  # EAGAIN, or an error that the queued write reports
            if sent == len(data):
                return
            if sent:
                data = memoryview(data)[sent:]  # type: ignore[assignment]
        try:
            handle.write(data, self._on_write)
        except UVError as exc:
            # Reported later: a sink is never called from inside a primitive.
            self._driver._defer(self._report, uv_exception_error(exc))

    def _on_write(self, handle: Any, error: int | None) -> None:
        if self._closed:
            return  # close() cancels what is queued; nobody is listening
        if error is None:
            self._sink._on_written()
        else:
            self._sink._on_error(uv_error(error))

    def _report(self, exc: BaseException) -> None:
        if not self._closed:
            self._sink._on_error(exc)

    def queued(self) -> int:
        size: int = self._handle.write_queue_size
        return size

    def shutdown_write(self) -> None:
        try:
            self._handle.shutdown(self._on_shutdown)
        except UVError as exc:
            raise uv_exception_error(exc) from None

    def _on_shutdown(self, handle: Any, error: int | None) -> None:
        if error is not None and not self._closed:
            self._sink._on_error(uv_error(error))


class UvDatagram(_Closing):
    """Move the packets of one IPv4 or IPv6 datagram socket through a UDP handle."""

    __slots__ = (
        "_closed",
        "_driver",
        "_fd",
        "_handle",
        "_peer",
        "_reading",
        "_sink",
        "_sock",
    )

    _sink: DatagramSink  # bound by attach(), before any other call

    def __init__(self, driver: PyuvDriver, handle: Any, sock: socket.socket) -> None:
        self._driver = driver
        self._handle = handle
        self._sock = sock
        self._fd = sock.fileno()
        self._reading = False
        self._closed = False
        try:
            # libuv 1.x sends only with an explicit address, so a connected
            # endpoint sends to its peer by name.
            self._peer: Address | None = sock.getpeername()
        except OSError:
            self._peer = None

    def __repr__(self) -> str:
        return f"<UvDatagram fd={self._fd}{' closed' if self._closed else ''}>"

    def attach(self, sink: DatagramSink) -> None:
        self._sink = sink

    def start_reading(self) -> None:
        if not self._reading and not self._closed:
            self._reading = True
            self._handle.start_recv(self._on_recv)

    def stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            if not self._closed:
                self._handle.stop_recv()

    def _on_recv(
        self, handle: Any, addr: Address, flags: int, data: bytes | None, error: int | None
    ) -> None:
        if error is None:
            self._sink._on_datagram(data or b"", addr)
        else:
            self._sink._on_error_received(uv_error(error))

    def sendto(self, data: bytes, addr: Address | None) -> None:
        if addr is None:
            addr = self._peer
        handle = self._handle
        try:
            if not handle.send_queue_size:
                try:
                    handle.try_send(addr, data)
                    return
                except UVError as exc:
                    if exc.args[0] != UV_EAGAIN:
                        # Datagram errors are not fatal; asyncio reports them at once.
                        self._sink._on_error_received(uv_exception_error(exc))
                        return
            handle.send(addr, data, self._on_sent)
        except (TypeError, ValueError, OverflowError):
            # pyuv takes numeric addresses only: let the socket module resolve
            # or reject anything else, with the errors asyncio would give.
            try:
                self._sock.sendto(data, cast(Any, addr))
            except OSError as exc:
                self._sink._on_error_received(exc)
        except UVError as exc:
            self._sink._on_error_received(uv_exception_error(exc))

    def _on_sent(self, handle: Any, error: int | None) -> None:
        if self._closed:
            return
        if error is not None:
            self._sink._on_error_received(uv_error(error))
        self._sink._on_written()

    def queued(self) -> int:
        size: int = self._handle.send_queue_size
        return size
