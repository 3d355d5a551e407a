"""Run an existing Twisted protocol as a PEP 3156 protocol, on any loop.

:func:`from_twisted` turns a Twisted protocol factory into an asyncio
protocol factory.  Each connection gets a Twisted protocol from the factory
and a transport providing ``ITCPTransport``'s everyday surface (``write``,
``writeSequence``, ``loseConnection``, ``abortConnection``,
``loseWriteConnection``, ``getPeer``, ``getHost``, the producer methods and
producer registration) on top of the asyncio transport.  No reactor is
involved: it works on the stdlib loop and on every adapter.

What is not provided: ``startTLS`` (use the loop's TLS instead), and
anything a protocol reaches through the global reactor (``callLater``,
``deferLater``); pass such a protocol a clock of your own.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import address, interfaces
from twisted.internet import error as tw_error
from twisted.python import failure
from zope.interface import implementer  # type: ignore[import-untyped]

__all__ = ["TwistedProtocolHost", "from_twisted"]


def _to_address(sockaddr: Any, family: int | None) -> Any:
    """Return the Twisted IAddress of a socket address."""
    if sockaddr is None:
        return None
    if family == socket.AF_UNIX or isinstance(sockaddr, (str, bytes)):
        return address.UNIXAddress(sockaddr or None)
    if family == socket.AF_INET6 or len(sockaddr) == 4:
        host, port, flowinfo, scope = sockaddr
        return address.IPv6Address("TCP", host, port, flowinfo, scope)
    host, port = sockaddr[:2]
    return address.IPv4Address("TCP", host, port)


@implementer(
    interfaces.ITCPTransport,
    interfaces.IConsumer,
    interfaces.IPushProducer,
    interfaces.ISystemHandle,
)
class _TransportFacade:
    """Present an asyncio transport as a Twisted one."""

    def __init__(self, host: TwistedProtocolHost, transport: asyncio.Transport) -> None:
        self._host = host
        self._transport = transport
        self.producer: Any = None
        self.streamingProducer = False
        self._aborted = False
        self.writes = 0  # lets a pull producer be asked again only after it wrote

    def __repr__(self) -> str:
        return f"<Twisted view of {self._transport!r}>"

    @property
    def disconnecting(self) -> bool:
        """True once the connection is closing (LineReceiver stops parsing then)."""
        return self._transport.is_closing()

    @property
    def connected(self) -> bool:
        """True until the connection is closing."""
        return not self._transport.is_closing()

    # -- ITransport ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"Data must be bytes, not {type(data).__name__}")
        self.writes += 1
        self._transport.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        chunks = list(data)
        for chunk in chunks:
            if not isinstance(chunk, bytes):
                raise TypeError(f"Data must be bytes, not {type(chunk).__name__}")
        self.writes += 1
        self._transport.writelines(chunks)

    def loseConnection(self) -> None:
        self._transport.close()

    def abortConnection(self) -> None:
        self._aborted = True
        self._transport.abort()

    def loseWriteConnection(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()
            self._host._write_side_closed()
        else:
            self._transport.close()

    def getPeer(self) -> Any:
        return _to_address(self._transport.get_extra_info("peername"), self._family())

    def getHost(self) -> Any:
        return _to_address(self._transport.get_extra_info("sockname"), self._family())

    def getHandle(self) -> Any:
        return self._transport.get_extra_info("socket")

    def _family(self) -> int | None:
        sock = self._transport.get_extra_info("socket")
        return sock.family if sock is not None else None

    def getTcpNoDelay(self) -> bool:
        sock = self.getHandle()
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.getHandle().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)

    def getTcpKeepAlive(self) -> bool:
        return bool(self.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    # -- IPushProducer: the protocol throttles what it receives ---------------

    def pauseProducing(self) -> None:
        self._transport.pause_reading()

    def resumeProducing(self) -> None:
        self._transport.resume_reading()

    def stopProducing(self) -> None:
        self._transport.close()

    # -- IConsumer: what the protocol sends is throttled by the water marks --

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, "
                f"because producer {self.producer!r} was never unregistered."
            )
        self.producer = producer
        self.streamingProducer = streaming
        if streaming:
            if self._host.writing_paused:
                producer.pauseProducing()
        else:
            self._host._pull_soon()

    def unregisterProducer(self) -> None:
        self.producer = None


class TwistedProtocolHost(asyncio.Protocol):
    """Drive one Twisted protocol from asyncio's protocol callbacks."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._protocol: Any = None
        self._facade: _TransportFacade | None = None
        self.writing_paused = False
        self._pull_scheduled = False

    @property
    def twisted_protocol(self) -> Any:
        """The Twisted protocol, once the connection is made (None if refused)."""
        return self._protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        facade = _TransportFacade(self, transport)
        self._facade = facade
        proto = self._factory.buildProtocol(facade.getPeer())
        if proto is None:
            transport.close()  # the factory refused the connection
            return
        self._protocol = proto
        proto.makeConnection(facade)

    def data_received(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.dataReceived(data)

    def eof_received(self) -> bool:
        half_closeable: Any = interfaces.IHalfCloseableProtocol(self._protocol, None)
        if half_closeable is None:
            return False  # close: the protocol hears connectionLost(ConnectionDone)
        half_closeable.readConnectionLost()
        return True

    def _write_side_closed(self) -> None:
        half_closeable: Any = interfaces.IHalfCloseableProtocol(self._protocol, None)
        if half_closeable is not None:
            half_closeable.writeConnectionLost()

    def connection_lost(self, exc: Exception | None) -> None:
        facade, proto = self._facade, self._protocol
        if facade is None or proto is None:
            return
        if facade.producer is not None:
            facade.producer.stopProducing()
            facade.producer = None
        reason: BaseException
        if exc is None:
            reason = tw_error.ConnectionAborted() if facade._aborted else tw_error.ConnectionDone()
        else:
            reason = tw_error.ConnectionLost(str(exc) or type(exc).__name__)
            reason.__cause__ = exc
        proto.connectionLost(failure.Failure(reason))  # type: ignore[no-untyped-call]

    # -- flow control ---------------------------------------------------------

    def pause_writing(self) -> None:
        self.writing_paused = True
        facade = self._facade
        if facade is not None and facade.producer is not None and facade.streamingProducer:
            facade.producer.pauseProducing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        facade = self._facade
        if facade is None or facade.producer is None:
            return
        if facade.streamingProducer:
            facade.producer.resumeProducing()
        else:
            self._pull_soon()

    def _pull_soon(self) -> None:
        if not self._pull_scheduled:
            self._pull_scheduled = True
            asyncio.get_running_loop().call_soon(self._pull)

    def _pull(self) -> None:
        # A pull producer writes one chunk per resumeProducing; Twisted asks
        # again each time that chunk has left, here whenever there is room.
        self._pull_scheduled = False
        facade = self._facade
        if facade is None or facade.producer is None or facade.streamingProducer:
            return
        if self.writing_paused or facade.disconnecting:
            return
        before = facade.writes
        facade.producer.resumeProducing()
        if facade.writes != before:
            self._pull_soon()


def from_twisted(factory: Any) -> Callable[[], asyncio.Protocol]:
    """Return an asyncio protocol factory serving the Twisted ``factory``.

    ``factory`` is an ``IProtocolFactory`` (for example a
    ``protocol.Factory.forProtocol(MyLineReceiver)``); it is started
    (``doStart``) when the first connection is made.
    """
    started = False

    def make_protocol() -> asyncio.Protocol:
        nonlocal started
        if not started:
            started = True
            factory.doStart()
        return TwistedProtocolHost(factory)

    return make_protocol
