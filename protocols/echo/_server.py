"""Echo servers: every byte or datagram goes back to where it came from."""

from __future__ import annotations

import asyncio
from typing import Any, cast


class EchoServer(asyncio.Protocol):
    """Write back every byte received; close once the peer has sent everything.

    Reading pauses while the transport's write buffer is above its high-water
    mark, so a peer that sends without reading cannot grow server memory.
    """

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not inherit
        # from asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        # Close: the transport flushes what is still being echoed first.
        return False

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class DatagramEcho(asyncio.DatagramProtocol):
    """Send every datagram back to its sender."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)
