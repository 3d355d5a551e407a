"""The datagram transport, written once for every adapter.

A datagram protocol sees ``connection_made``, then any number of
``datagram_received`` and ``error_received``, then ``connection_lost``
exactly once.  ``sendto`` on a connected endpoint rejects a foreign address,
and flow control uses the same water marks as streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._lifecycle import Lifecycle
from ._primitives import Address, Datagram
from ._stream import _set_result_unless_cancelled, socket_extra

if TYPE_CHECKING:
    from ._loop import EventLoop

__all__ = ["DatagramTransport"]


class DatagramTransport(Lifecycle, asyncio.Transport, asyncio.DatagramTransport):
    """Drive one datagram protocol over one adapter :class:`Datagram`."""

    # The stdlib's datagram transports are also stream-shaped Transports
    # (they share a base with its socket transports); code checks for that.

    def __init__(
        self,
        loop: EventLoop,
        endpoint: Datagram,
        protocol: asyncio.BaseProtocol,
        address: Address | None = None,
        waiter: asyncio.Future[None] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        Lifecycle.__init__(self)
        sock = endpoint.socket()
        asyncio.DatagramTransport.__init__(self, {**socket_extra(sock), **(extra or {})})
        self._loop = loop
        self._endpoint = self._primitive = endpoint
        self._protocol: Any = protocol
        self._address = address
        endpoint.attach(self)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter)

    def _start_reading(self) -> None:
        if not self._closing:
            self._endpoint.start_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def sendto(self, data: bytes | bytearray | memoryview, addr: Address | None = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._address is not None:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = None
        if self._dropped_write("sendto"):
            return
        self._endpoint.sendto(bytes(data), addr)
        self._maybe_pause_protocol()

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        if self._lost_scheduled:
            return
        try:
            self._protocol.datagram_received(data, addr)
        except BaseException as exc:
            self._protocol_failed(exc, "datagram_received")

    def _on_error_received(self, exc: OSError) -> None:
        if self._lost_scheduled:
            return
        try:
            self._protocol.error_received(exc)
        except BaseException as cb_exc:
            self._protocol_failed(cb_exc, "error_received")

    def _on_error(self, exc: BaseException) -> None:
        self._fatal_error(exc, "Fatal error on datagram transport")

    def _on_written(self) -> None:
        self._drained()
