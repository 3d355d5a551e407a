"""Core's :class:`~protoshim.Stream` primitive over a Twisted transport.

Sockets that core connects become Twisted's own ``tcp.Server`` or
``unix.Server`` transport (the class ``adoptStreamConnection`` builds, here
around the very socket object core hands over, so no descriptor is
duplicated).  Any other Twisted transport, such as a TLS-wrapped one from an
endpoint, is driven through Twisted's producer/consumer interfaces.

How Twisted's behaviour maps onto the primitive contract:

* ``queued()`` is Twisted's real user-space buffer and ``_on_written``
  follows every ``doWrite`` that shrank it (see ``_compat``);
* the peer's EOF arrives through ``IHalfCloseableProtocol.readConnectionLost``
  and becomes ``_on_eof``; ``shutdown_write`` is ``loseWriteConnection``;
* ``stop_reading``/``start_reading`` are ``pauseProducing``/``resumeProducing``;
* after core's ``close``/``abort`` the transport's ``connectionLost`` is
  swallowed; an unsolicited one becomes ``_on_error`` with an OSError: the
  very one ``recv`` or ``send`` raised, on a socket connection.

The stream is itself the connection's Twisted protocol: no forwarding
object per connection.  The transports made here are built as ``_compat``'s
subclass, whose ``__repr__`` makes Twisted's ``repstr`` only when asked, and
keep the one copy of the peer's address, which core's transport shares.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.internet import error as tw_error
from twisted.internet import interfaces, protocol, tcp
from twisted.python import failure
from zope.interface import implementer  # type: ignore[import-untyped]

from ...core import StreamSink, peer_address
from ._compat import buffered, drop_buffer, keeping_errno, take_over_socket

if TYPE_CHECKING:
    from ._loop import TwistedDriver

__all__ = ["OpenStreams", "TwistedStream", "open_socket_stream"]

# The client address of a TCP connection whose peer was gone before it was
# made: tcp.Server needs a (host, port); peername() gives None for it.
_NO_PEER = ("", 0)


@implementer(interfaces.IProtocol, interfaces.IHalfCloseableProtocol, interfaces.IPushProducer)
class TwistedStream:
    """Move one connection's bytes through a Twisted transport, as its protocol.

    The stream is the Twisted protocol of its connection (Twisted calls its
    ``makeConnection``, ``dataReceived``, ``readConnectionLost`` and
    ``connectionLost``), so a connection pays for no forwarding object.
    """

    # One per connection: no __dict__.
    __slots__ = (
        "_dead",
        "_delivery_scheduled",
        "_driver",
        "_eof_held",
        "_eof_seen",
        "_exact",
        "_held",
        "_next",
        "_prev",
        "_reading",
        "_released",
        "_since_drain",
        "_sink",
        "_sock",
        "_throttled",
        "_transport",
    )

    def __init__(self, driver: TwistedDriver) -> None:
        self._driver = driver
        self._transport: Any = None
        self._exact = False
        self._sock: socket.socket | None = None
        self._sink: StreamSink | None = None
        self._reading = False
        # Data that arrived while not reading; a list only while there is some.
        self._held: list[bytes] | None = None
        self._eof_held = False
        self._eof_seen = False
        self._released = False  # core closed or aborted us
        self._dead = False  # the Twisted transport is gone
        self._since_drain = 0
        self._throttled = False
        self._delivery_scheduled = False
        # Our links in the driver's OpenStreams, while we are in it.
        self._prev: TwistedStream | OpenStreams | None = None
        self._next: TwistedStream | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._transport!r}>"

    # -- IProtocol: the transport arrives -------------------------------------

    @property
    def transport(self) -> Any:
        """The Twisted transport of the connection (None until it is made)."""
        return self._transport

    @property
    def connected(self) -> bool:
        """Whether the Twisted transport is there and not lost."""
        return self._transport is not None and not self._dead

    def makeConnection(self, transport: Any) -> None:
        self._transport = transport
        # A socket connection exposes its buffer, so queued() is exact there;
        # any other transport only says "full" and "drained" to its producer.
        self._exact = isinstance(transport, tcp.Connection)
        # Twisted forgets the handle when the connection is lost: keep it.
        handle = getattr(transport, "getHandle", None)
        sock = handle() if handle is not None else None
        self._sock = sock if isinstance(sock, socket.socket) else None
        transport.pauseProducing()  # core starts reading after connection_made
        if self._exact:
            take_over_socket(transport)
        else:
            transport.registerProducer(self, True)
        self._driver.open_streams.add(self)
        self.connectionMade()

    def connectionMade(self) -> None:
        """Do nothing more: core's transport is made by whoever opened the stream."""

    def peername(self) -> Any:
        """Return the peer's address, shared with the transport open_socket_stream made."""
        client = self._transport.client
        if client is _NO_PEER:
            return None
        # A unix.Server keeps (peer, None).
        return client[0] if client[1] is None else client

    # -- the Stream primitive -------------------------------------------------

    def attach(self, sink: StreamSink) -> None:
        self._sink = sink

    def start_reading(self) -> None:
        if self._reading or self._released or self._dead:
            return
        self._reading = True
        if self._held or self._eof_held:
            # Never call the sink from inside a primitive: deliver next turn.
            self._schedule_delivery()
            return
        if not self._eof_seen:
            self._transport.resumeProducing()

    def stop_reading(self) -> None:
        if not self._reading:
            return
        self._reading = False
        if not self._dead and not self._released:
            self._transport.pauseProducing()

    def write(self, data: bytes) -> int:
        transport = self._transport
        if self._dead:
            return 0
        if self._exact and not buffered(transport):
            # Send at once, as asyncio does, so small writes leave nothing
            # queued, and a failure is reported now, with its own errno.
            sent = transport.writeSomeData(data)
            if isinstance(sent, BaseException):
                assert self._sink is not None
                self._sink._on_error(sent)
                return 0
            if sent == len(data):
                return 0
            data = data[sent:]
        elif not self._exact:
            self._since_drain += len(data)
        transport.write(data)
        return self.queued()

    def queued(self) -> int:
        if self._dead or self._released:
            return 0
        if self._exact:
            return buffered(self._transport)
        return self._since_drain if self._throttled else 0

    def shutdown_write(self) -> None:
        if not self._dead:
            self._transport.loseWriteConnection()

    def close(self) -> None:
        self._release(abort=False)

    def abort(self) -> None:
        self._release(abort=True)

    def direct_socket(self) -> socket.socket | None:
        # Only a FileDescriptor writes straight to the socket with an exact
        # queued(); a wrapper may buffer or transform the bytes.
        return self._sock if self._exact else None

    def socket(self) -> socket.socket | None:
        return self._sock

    # -- IPushProducer: a non-FileDescriptor transport's buffer -------------

    def pauseProducing(self) -> None:
        self._throttled = True

    def resumeProducing(self) -> None:
        # Twisted resumes a streaming producer once its buffer is empty.
        self._throttled = False
        self._since_drain = 0
        self._notify(lambda sink: sink._on_written())

    def stopProducing(self) -> None:
        """Ignore: connectionLost follows and reports the loss."""

    # -- Twisted's events: IProtocol, IHalfCloseableProtocol, _compat's hook --

    def _notify(self, event: Callable[..., None], *args: Any) -> None:
        sink = self._sink
        if sink is None or self._released or self._driver.closed:
            return
        self._driver.run_callback(event, sink, *args)

    def bufferShrank(self) -> None:
        """Hear from the transport that it sent some of its buffer."""
        if not self._dead:
            self._notify(lambda sink: sink._on_written())

    def dataReceived(self, data: bytes) -> None:
        if self._released or self._dead:
            return
        if not self._reading or self._held:
            if self._held is None:
                self._held = [data]
            else:
                self._held.append(data)
            return
        self._notify(_deliver_data, data)

    def readConnectionLost(self) -> None:
        if self._released or self._dead or self._eof_seen:
            return
        # A reset after the peer's FIN reads as a clean end of input; the
        # socket's pending error tells the two apart.
        error = self._pending_error()
        if error is not None:
            # Core answers with abort(), which releases the Twisted transport.
            self._notify(lambda sink: sink._on_error(error))
            return
        self._eof_seen = True
        if not self._reading or self._held:
            self._eof_held = True
            return
        self._reading = False
        self._notify(lambda sink: sink._on_eof())

    def _pending_error(self) -> OSError | None:
        try:
            code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if self._sock else 0
        except OSError:
            return None
        # OSError picks the subclass: EPIPE after a FIN, ECONNRESET before.
        return OSError(code, os.strerror(code)) if code not in (0, errno.EAGAIN) else None

    def _schedule_delivery(self) -> None:
        if not self._delivery_scheduled:
            self._delivery_scheduled = True
            self._driver.call_soon(self._deliver_held)

    def _deliver_held(self) -> None:
        self._delivery_scheduled = False
        while self._held and self._reading and not self._released and not self._dead:
            self._notify(_deliver_data, self._held.pop(0))
        if self._held or not self._reading or self._released or self._dead:
            return
        if self._eof_held:
            self._eof_held = False
            self._reading = False
            self._notify(lambda sink: sink._on_eof())
        elif not self._eof_seen:
            self._transport.resumeProducing()

    def writeConnectionLost(self) -> None:
        """Ignore: core shut the write side itself and expects nothing back."""

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        if self._dead:
            return
        self._dead = True
        self._leave_open_streams()
        if self._released:
            return  # our own close or abort: Twisted's report is redundant
        exc = reason.value
        if isinstance(exc, tw_error.ConnectionDone):
            # A transport that cannot half-close reports the peer's EOF as
            # the end of the connection: deliver the EOF first.
            if not self._eof_seen:
                self._eof_seen = True
                self._reading = False
                self._notify(lambda sink: sink._on_eof())
            if self._released:
                return
            error: BaseException = BrokenPipeError(errno.EPIPE, "Connection closed")
        elif isinstance(exc, tw_error.ConnectionAborted):
            error = ConnectionAbortedError(errno.ECONNABORTED, "Connection aborted")
        elif isinstance(exc, tw_error.ConnectionLost):
            # The reactor's own report of a hang-up, or a transport that is
            # not a socket connection: no errno to keep (a socket connection
            # reports recv and send failures with their OSError, below).
            error = ConnectionResetError(errno.ECONNRESET, "Connection lost")
        else:
            assert exc is not None  # a Failure always wraps an exception
            error = exc
        self._notify(lambda sink: sink._on_error(error))

    # -- releasing ------------------------------------------------------------

    def _leave_open_streams(self) -> None:
        prev = self._prev
        if prev is None:
            return
        following = self._next
        prev._next = following
        if following is not None:
            following._prev = prev
        self._prev = self._next = None

    def _release(self, *, abort: bool) -> None:
        if self._released:
            return
        self._released = True
        self._held = None
        self._leave_open_streams()
        if self._dead:
            return
        transport = self._transport
        if self._exact:
            if abort:
                drop_buffer(transport)
            # Core closes only once the buffer is empty (or drops it on
            # abort), so Twisted's flush-then-close has nothing left to do:
            # end the connection now, as asyncio does, instead of on the next
            # iteration.  loseConnection does the same after a write shutdown.
            self._dead = True
            transport.connectionLost(failure.Failure(tw_error.ConnectionDone()))  # type: ignore[no-untyped-call]
            return
        # A registered producer would keep loseConnection waiting forever.
        transport.unregisterProducer()
        abort_connection = getattr(transport, "abortConnection", None)
        if abort and abort_connection is not None:
            abort_connection()
        else:
            transport.loseConnection()


def _deliver_data(sink: StreamSink, data: bytes) -> None:
    sink._on_data(data)


def open_socket_stream(driver: TwistedDriver, sock: socket.socket) -> TwistedStream:
    """Wrap a connected socket in Twisted's own server-side transport."""
    stream = TwistedStream(driver)
    reactor: Any = driver.reactor
    # The very object core's transport keeps as its peername (see peername()).
    peer = peer_address(sock)
    transport: tcp.Server
    if sock.family == socket.AF_UNIX:
        from twisted.internet import unix

        transport = keeping_errno(unix.Server)(sock, stream, peer, None, 0, reactor)
    else:
        client = _NO_PEER if peer is None else peer
        transport = keeping_errno(tcp.Server)(sock, stream, client, None, 0, reactor)  # type: ignore[arg-type]
    stream.makeConnection(transport)
    return stream


class OpenStreams:
    """The streams of one driver that are neither released nor lost.

    Linked through two slots of each stream, so the driver can abort them
    when it closes: a WeakSet cost each connection 124 bytes, the slots 16.
    """

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next: TwistedStream | None = None

    def add(self, stream: TwistedStream) -> None:
        """Link ``stream`` in; it unlinks itself once released or lost."""
        first = self._next
        stream._prev = self
        stream._next = first
        if first is not None:
            first._prev = stream
        self._next = stream

    def __iter__(self) -> Iterator[TwistedStream]:
        """Iterate over a snapshot, so streams may leave meanwhile."""
        streams = []
        stream = self._next
        while stream is not None:
            streams.append(stream)
            stream = stream._next
        return iter(streams)
