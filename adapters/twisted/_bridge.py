"""Bridges for a Twisted application: Deferred <-> Future, and protocol factories.

* :func:`as_future` turns a Deferred into an asyncio Future, and
  :func:`as_deferred` a Future, Task or coroutine into a Deferred; both
  propagate cancellation.
* :class:`ProtocolFactory` serves any PEP 3156 protocol factory as a Twisted
  ``IProtocolFactory``, usable with ``listenTCP``, endpoints, strports and
  services: each connection's Twisted transport becomes core's stream
  primitive, so the protocol sees exactly the transport it sees everywhere.
"""

from __future__ import annotations

import asyncio
import functools
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet import defer, interfaces, protocol

from ...core import peer_address
from ._loop import TwistedEventLoop, attach
from ._stream import TwistedStream

__all__ = ["ProtocolFactory", "as_deferred", "as_future"]

T = TypeVar("T")


def as_future(
    deferred: defer.Deferred[T], loop: asyncio.AbstractEventLoop | None = None
) -> asyncio.Future[T]:
    """Return a Future of ``loop`` (default: the running one) that follows ``deferred``.

    Cancelling the Future cancels the Deferred.  The loop must run on the
    reactor that fires the Deferred (a loop from :func:`attach`, or a
    ``new_event_loop("twisted")`` loop for Deferreds of ``loop.reactor``).
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    return deferred.asFuture(loop)


def as_deferred(
    awaitable: Awaitable[T], loop: asyncio.AbstractEventLoop | None = None
) -> defer.Deferred[T]:
    """Return a Deferred that fires with the result of ``awaitable``.

    A coroutine is scheduled as a Task on ``loop`` (default: the running
    loop, else the loop attached to the global reactor).  Cancelling the
    Deferred cancels the Task or Future, and the Deferred then fails with
    :class:`asyncio.CancelledError` (``Deferred.fromFuture``'s convention).
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = attach()
    future = asyncio.ensure_future(awaitable, loop=loop)
    return defer.Deferred.fromFuture(future)


class _Host(TwistedStream):
    """Host one PEP 3156 protocol on the Twisted transport of one connection."""

    __slots__ = ("_factory",)

    def __init__(self, factory: ProtocolFactory) -> None:
        super().__init__(factory.loop.driver)
        self._factory = factory

    def connectionMade(self) -> None:
        factory = self._factory
        # Core's accept rules (factory errors, TLS handshake) apply as for
        # create_server; run them as a loop callback, so asyncio finds its loop.
        self._driver.run_callback(
            functools.partial(
                factory.loop.serve_stream,
                self,
                factory.protocol_factory,
                ssl=factory.ssl,
                ssl_handshake_timeout=factory.ssl_handshake_timeout,
            )
        )

    def peername(self) -> Any:
        # Twisted made the transport: ask the socket, as core would.
        sock = self.socket()
        return None if sock is None else peer_address(sock)


class ProtocolFactory(protocol.Factory):
    """Serve a PEP 3156 protocol factory as a Twisted ``IProtocolFactory``.

    ``loop`` must be a Twisted loop on the reactor that accepts the
    connections; by default it is :func:`attach` of the global reactor,
    looked up when the first connection arrives.  With ``ssl`` (an
    :class:`ssl.SSLContext`), each connection is TLS with asyncio's own
    memory-BIO implementation over the plain Twisted transport, as for
    ``create_server(ssl=...)``.
    """

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> None:
        if loop is not None and not isinstance(loop, TwistedEventLoop):
            raise TypeError(f"loop must be a Twisted loop of protoshim, not {loop!r}")
        if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
            raise TypeError(f"ssl must be an SSLContext, not {ssl!r}")
        self.protocol_factory = protocol_factory
        self.ssl = ssl
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self._loop: TwistedEventLoop | None = loop

    def __repr__(self) -> str:
        return f"<ProtocolFactory of {self.protocol_factory!r}>"

    @property
    def loop(self) -> TwistedEventLoop:
        """The loop the protocols run on."""
        if self._loop is None:
            self._loop = attach()
        return self._loop

    # The protocol is a slotted IProtocol provider, not a Protocol subclass.
    def buildProtocol(self, addr: interfaces.IAddress | None) -> TwistedStream:  # type: ignore[override]
        return _Host(self)
