"""The stream transport state machine, written once for every adapter.

A protocol sees exactly this grammar::

    start -> connection_made [-> data_received]* [-> eof_received]? -> connection_lost -> end

and these rules, whatever framework moves the bytes:

* ``connection_made`` comes before any data; reading starts only after it;
* ``connection_lost`` is called exactly once, even if ``connection_made`` raised;
* a true return from ``eof_received`` keeps the write side open, anything
  else closes the transport;
* ``close()`` flushes, then closes; ``abort()`` drops the buffer; both end in
  ``connection_lost(None)``;
* ``write_eof()`` shuts the write side once the buffer has drained, is
  idempotent, and makes a later ``write()`` raise RuntimeError;
* writes after close are sent while the buffer drains, and dropped once
  ``connection_lost`` is on its way, with a warning from the fifth on;
* an exception from a protocol callback reaches the loop's exception handler;
* ``loop.sendfile()`` sends after the buffer, with reading paused, and
  ``write()`` raises RuntimeError until it returns (see ``_sendfile``).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from asyncio import constants, transports, trsock
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._lifecycle import LIFECYCLE_SLOTS, Lifecycle
from ._primitives import Stream

if TYPE_CHECKING:
    from ._loop import EventLoop

__all__ = ["StreamTransport", "peer_address"]

AFTER_EOF = "Cannot call write() after write_eof()"


def _set_nodelay(sock: socket.socket | None) -> None:
    # Without TCP_NODELAY, a small write after a small write waits for the
    # peer's delayed ACK; asyncio turns it on for every TCP transport.
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    if sock.type != socket.SOCK_STREAM or sock.proto not in (0, socket.IPPROTO_TCP):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def socket_extra(sock: socket.socket | None) -> dict[str, Any]:
    """Return the ``socket``, ``sockname`` and ``peername`` extra info of ``sock``."""
    extra: dict[str, Any] = {}
    if sock is None:
        return extra
    extra["socket"] = trsock.TransportSocket(sock)
    for key, query in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
        try:
            extra[key] = query()
        except OSError:
            extra[key] = None
    return extra


class StreamTransport(Lifecycle, transports._FlowControlMixin):
    """Drive one protocol over one adapter :class:`Stream`.

    It is an asyncio ``_FlowControlMixin`` (whose methods :class:`FlowControl`
    replaces) because asyncio's sendfile fallback accepts no other transport.
    """

    # No __dict__: an idle connection costs only these slots (issue: memory
    # per connection at 10k+ connections).
    __slots__ = (
        *LIFECYCLE_SLOTS,
        "__weakref__",  # asyncio.Server keeps its transports in a WeakSet from 3.13
        "_primitive",
        "_server",
        "_eof",
        "_shut",
        "_reading_paused",
        "_protocol",
        "_buffered",
        "_refusing",
        "_flush_waiter",
        "_peername",
        "_sockname",
        "_transport_socket",
    )

    _primitive: Stream

    # BaseEventLoop.start_tls() checks for this: the transport supports
    # set_protocol() and pause/resume_reading as SSLProtocol needs.
    _start_tls_compatible = True
    # BaseEventLoop.sendfile() tries the loop's _sendfile_native first.
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(
        self,
        loop: EventLoop,
        stream: Stream,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: Mapping[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        Lifecycle.__init__(self)
        sock = stream.socket()
        _set_nodelay(sock)
        # Extra info the caller gave; the socket's own is kept apart (below).
        asyncio.Transport.__init__(self, _NO_EXTRA if extra is None else dict(extra))
        # The peer's address now, as asyncio does: after a reset the kernel
        # no longer knows it.  The socket wrapper and our own address are made
        # on first use (or before the socket closes), saving two objects and a
        # dict on every idle connection.
        known = getattr(stream, "peername", None)
        self._peername: Any = (
            known() if known is not None else None if sock is None else peer_address(sock)
        )
        self._sockname: Any = _UNKNOWN
        self._transport_socket: trsock.TransportSocket | None = None
        self._loop = loop
        self._primitive = stream
        self._server = server
        self._eof = False  # write_eof() was called
        self._shut = False  # the write side is actually shut
        self._reading_paused = False
        self._protocol: Any = None
        self._buffered = False
        # Why write() raises now (after write_eof(), during a sendfile), or
        # None: one check on the hot path for both.
        self._refusing: str | None = None
        self._flush_waiter: asyncio.Future[None] | None = None
        self.set_protocol(protocol)
        if server is not None:
            _attach(server, self)
        stream.attach(self)
        loop.call_soon(self._connection_made)
        if waiter is None:
            loop.call_soon(self._start_reading)
        else:
            loop.call_soon(_set_result_unless_cancelled, waiter)
            # asyncio queues the first read events behind the task that awaits
            # the waiter, so ``create_connection()`` has returned before any
            # data_received.  Frameworks deliver I/O at once: start reading
            # only once that task has run.
            loop.call_soon(loop.call_soon, self._start_reading)

    def __repr__(self) -> str:
        state = "closed" if self._released else "closing" if self._closing else "open"
        return f"<{type(self).__name__} {state} stream={self._primitive!r}>"

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra: Mapping[str, Any] = self._extra  # type: ignore[attr-defined]
        if name in extra:
            return extra[name]
        sock = self._primitive.socket()
        if sock is None or name not in _SOCKET_INFO:
            return default
        if name == "peername":
            return self._peername
        if name == "sockname":
            if self._sockname is _UNKNOWN:
                self._sockname = _address(sock.getsockname)
            return self._sockname
        if self._transport_socket is None:
            self._transport_socket = trsock.TransportSocket(sock)
        return self._transport_socket

    def _release(self, *, abort: bool) -> None:
        # Our address is asked of the socket, so ask before it closes.
        if not self._released and self._sockname is _UNKNOWN:
            sock = self._primitive.socket()
            if sock is not None:
                self._sockname = _address(sock.getsockname)
        super()._release(abort=abort)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def _connection_made(self) -> None:
        # Raising here reaches the exception handler through the Handle, and
        # the connection carries on, as in asyncio: connection_lost still
        # follows exactly once.
        self._protocol.connection_made(self)

    def _start_reading(self) -> None:
        if not self._closing and not self._reading_paused:
            self._primitive.start_reading()

    # -- reading ------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        if not self.is_reading():
            return
        self._reading_paused = True
        self._primitive.stop_reading()

    def resume_reading(self) -> None:
        if self._closing or not self._reading_paused:
            return
        self._reading_paused = False
        self._primitive.start_reading()

    def _on_data(self, data: bytes) -> None:
        if self._lost_scheduled:
            return
        try:
            if self._buffered:
                _feed_buffered(self._protocol, data)
            else:
                self._protocol.data_received(data)
        except BaseException as exc:
            self._protocol_failed(exc, "data_received")

    def _on_eof(self) -> None:
        if self._lost_scheduled:
            return
        self._primitive.stop_reading()
        try:
            keep_open = self._protocol.eof_received()
        except BaseException as exc:
            self._protocol_failed(exc, "eof_received")
            return
        if not keep_open:
            self.close()

    def _on_error(self, exc: BaseException) -> None:
        self._fatal_error(exc, "Fatal error on transport")

    # -- writing ------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # The hot path: bytes on an open transport below its high-water mark
        # costs two primitive calls and no other method call.
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(
                    f"data argument must be a bytes-like object, not {type(data).__name__!r}"
                )
            data = bytes(data)
        if self._refusing is not None:
            raise RuntimeError(self._refusing)
        if not data:
            return
        if self._closing and self._dropped_write("send"):
            return
        if self._primitive.write(data) > self._high_water and not self._protocol_paused:
            self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        self._refusing = AFTER_EOF
        if self._primitive.queued() == 0:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        self._shut = True
        try:
            self._primitive.shutdown_write()
        except OSError as exc:
            self._fatal_error(exc, "Fatal error on shutdown")

    def _on_written(self) -> None:
        if not self._drained():
            return
        waiter, self._flush_waiter = self._flush_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._closing and self._eof and not self._shut:
            self._shutdown_write()

    def _flushed(self) -> asyncio.Future[None]:
        """Return a future done once the stream has sent every queued byte.

        It fails with ConnectionError if the connection is lost first.
        """
        waiter: asyncio.Future[None] = self._loop.create_future()
        if self._lost_scheduled:
            waiter.set_exception(ConnectionError("Connection is closed by peer"))
        elif not self._primitive.queued():
            waiter.set_result(None)
        else:
            self._flush_waiter = waiter
        return waiter

    def _direct_socket(self) -> socket.socket | None:
        """Return the socket that core may write to itself, if the stream has one."""
        stream: Any = self._primitive
        direct = getattr(stream, "direct_socket", None)
        sock: socket.socket | None = direct() if direct is not None else stream.socket()
        return sock

    # -- closing ------------------------------------------------------------

    def _connection_lost_done(self) -> None:
        waiter, self._flush_waiter = self._flush_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("Connection is closed by peer"))
        if self._server is not None:
            _detach(self._server, self)
            self._server = None


# asyncio.Server counts its connections; from 3.13 it also keeps them.
if sys.version_info >= (3, 13):

    def _attach(server: Any, transport: asyncio.BaseTransport) -> None:
        server._attach(transport)

    def _detach(server: Any, transport: asyncio.BaseTransport) -> None:
        server._detach(transport)

else:

    def _attach(server: Any, transport: asyncio.BaseTransport) -> None:
        server._attach()

    def _detach(server: Any, transport: asyncio.BaseTransport) -> None:
        server._detach()


#: ``extra`` when the caller gave none: shared, since it is never written to.
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
#: the extra info keys that come from the transport's socket
_SOCKET_INFO = frozenset({"socket", "sockname", "peername"})
_UNKNOWN: Any = object()  # not asked of the socket yet


def peer_address(sock: socket.socket) -> Any:
    """Return ``sock.getpeername()``, or None if the socket has no peer now.

    Connections from one host (a proxy, a load balancer, a test client)
    share its name string instead of keeping a copy each.
    """
    try:
        address = sock.getpeername()
    except OSError:
        return None
    if type(address) is tuple and type(address[0]) is str:
        address = (sys.intern(address[0]), *address[1:])
    return address


def _address(query: Callable[[], Any]) -> Any:
    try:
        return query()
    except OSError:
        return None


def _feed_buffered(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    view = memoryview(data)
    while view:
        buf = memoryview(protocol.get_buffer(len(view))).cast("B")
        if not buf:
            raise RuntimeError("get_buffer() returned an empty buffer")
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


def _set_result_unless_cancelled(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.set_result(None)
