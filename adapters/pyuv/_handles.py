"""Streams and datagram endpoints on libuv's TCP, Pipe and UDP handles.

A handle is opened on the descriptor of the socket that core created, and
from then on owns it: libuv closes the descriptor when the handle is closed,
and the Python socket object (kept for ``get_extra_info``) is detached at
that moment so that it never closes the number a second time.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import pyuv

from ...core import Address, DatagramSink, StreamSink

if TYPE_CHECKING:
    from ._driver import PyuvDriver

__all__ = ["UvDatagram", "UvPipeStream", "UvStream", "UvTcpStream", "uv_error"]

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


class _StreamHandle:
    """Move the bytes of one connected socket; the libuv handle *is* the stream.

    Mixed into a subclass of ``pyuv.TCP`` or ``pyuv.Pipe`` (below), so an idle
    connection costs one handle object with four more slots, and libuv calls
    module functions with the handle rather than bound methods of a second
    object.  ``write`` and ``close`` replace the handle's own methods of
    those names (the primitive's signatures), which are called through the
    base class.
    """

    # No slots here: a mixin with slots cannot share pyuv's C layout, so the
    # concrete classes declare them (hidden from mypy, which would check
    # assignments in these methods against the empty tuple).
    if not TYPE_CHECKING:
        __slots__ = ()

    _driver: PyuvDriver
    _sink: StreamSink  # bound by attach(), before any other call
    _sock: socket.socket
    _state: int

    if TYPE_CHECKING:  # pyuv's own API, which pyuv declares no types for
        closed: bool
        write_queue_size: int

        def _uv_write(self, data: bytes, callback: Callable[[Any, Any], None]) -> None: ...
        def start_read(self, callback: Callable[[Any, Any, Any], None]) -> None: ...
        def stop_read(self) -> None: ...
        def try_write(self, data: bytes) -> int: ...
        def shutdown(self, callback: Callable[[Any, Any], None]) -> None: ...

    def __init__(self, driver: PyuvDriver, sock: socket.socket) -> None:
        # pyuv.TCP(loop) / pyuv.Pipe(loop): ``super()`` is the pyuv class.
        super().__init__(driver.uv_loop)  # type: ignore[call-arg]
        self._driver = driver
        self._sock = sock
        self._state = _IDLE

    def __repr__(self) -> str:
        kind = "TCP" if isinstance(self, pyuv.TCP) else "Pipe"
        state = " closed" if self.closed else f" fd={self._sock.fileno()}"
        return f"<UvStream {kind}{state}>"

    def attach(self, sink: StreamSink) -> None:
        self._sink = sink

    def socket(self) -> socket.socket:
        return self._sock

    # -- reading ------------------------------------------------------------

    def start_reading(self) -> None:
        if self._state == _IDLE and not self.closed:
            self._state = _READING
            self.start_read(_on_read)

    def stop_reading(self) -> None:
        if self._state != _IDLE:
            # A pending EOF is dropped, as asyncio's pause cancels a read
            # event already polled; reading again reads the EOF again.
            self._state = _IDLE
            if not self.closed:
                self.stop_read()

    def _report_eof(self) -> None:
        if self._state != _EOF_SEEN or self.closed:
            return  # paused or closed meanwhile
        self._state = _IDLE
        self._sink._on_eof()

    # -- writing ------------------------------------------------------------

    def write(self, data: bytes) -> int:
        if not self.write_queue_size:
            # Writing now, in the caller, spares a write request and its callback.
            try:
                sent: int = self.try_write(data)
            except UVError:
                sent = 0  # EAGAIN, or an error that the queued write reports
            if sent == len(data):
                return 0
            if sent:
                data = memoryview(data)[sent:]  # type: ignore[assignment]
        try:
            self._uv_write(data, _on_written)
        except UVError as exc:
            # Reported later: a sink is never called from inside a primitive.
            self._driver._defer(_report_error, (self, uv_exception_error(exc)))
        return self.write_queue_size

    def queued(self) -> int:
        return self.write_queue_size

    def shutdown_write(self) -> None:
        try:
            self.shutdown(_on_shutdown)
        except UVError as exc:
            raise uv_exception_error(exc) from None

    # -- closing ------------------------------------------------------------

    def close(self, callback: Callable[[Any], None] | None = None) -> None:
        # pyuv's optional callback is kept for a program that closes every
        # handle of a shared loop (``for h in uv.handles: h.close(cb)``).
        if self.closed:
            return
        self._state = _IDLE
        self._driver._forget(self, self._sock.fileno())
        # uv_close closes the descriptor now and cancels queued writes; the
        # handle lives on in pyuv until its close callback has run.
        _uv_close(self, callback)
        release_socket(self._sock)

    def abort(self) -> None:
        self.close()


# The read state of a stream: a small int, so one slot holds both flags.
_IDLE = 0
_READING = 1
_EOF_SEEN = 2  # libuv reported EOF; the sink has not heard yet

_uv_close = pyuv.Handle.close  # the handle's own close(), which close() replaces


# libuv's callbacks, called with the handle (the stream): plain functions,
# so that reading and queued writes make no bound method per connection.


def _on_read(stream: _StreamHandle, data: bytes | None, error: int | None) -> None:
    if error is None:
        if data:  # libuv reports EAGAIN as an empty read
            stream._sink._on_data(data)
        return
    # pyuv has already stopped reading on any error, EOF included.
    if error == UV_EOF:
        # libuv reads until EAGAIN, and reports a hang-up in the same
        # callback as the data before it; asyncio reads once per
        # iteration, so the callbacks that data scheduled run before
        # eof_received.  Report it on the next iteration, after them.
        stream._state = _EOF_SEEN
        stream._driver._defer(_StreamHandle._report_eof, stream)
        return
    stream._state = _IDLE
    stream._sink._on_error(uv_error(error))


def _on_written(stream: _StreamHandle, error: int | None) -> None:
    if stream.closed:
        return  # close() cancels what is queued; nobody is listening
    if error is None:
        stream._sink._on_written()
    else:
        stream._sink._on_error(uv_error(error))


def _on_shutdown(stream: _StreamHandle, error: int | None) -> None:
    if error is not None and not stream.closed:
        stream._sink._on_error(uv_error(error))


def _report_error(report: tuple[_StreamHandle, BaseException]) -> None:
    stream, exc = report
    if not stream.closed:
        stream._sink._on_error(exc)


# pyuv ships no type information, so mypy sees its classes as Any.
class UvTcpStream(_StreamHandle, pyuv.TCP):  # type: ignore[misc]
    """A stream on a TCP handle (IPv4 and IPv6 sockets)."""

    __slots__ = ("_driver", "_sink", "_sock", "_state")
    _uv_write = pyuv.TCP.write  # bound on lookup: the handle's own write()


class UvPipeStream(_StreamHandle, pyuv.Pipe):  # type: ignore[misc]
    """A stream on a Pipe handle (Unix sockets)."""

    __slots__ = ("_driver", "_sink", "_sock", "_state")
    _uv_write = pyuv.Pipe.write  # bound on lookup: the handle's own write()


UvStream = UvTcpStream | UvPipeStream


class UvDatagram:
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

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reading = False
        self._driver._forget(self, self._fd)
        # uv_close closes the descriptor now and cancels queued sends.
        self._handle.close()
        release_socket(self._sock)

    def abort(self) -> None:
        self.close()

    def socket(self) -> socket.socket:
        return self._sock

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
