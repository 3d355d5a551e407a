"""The protocol the framework examples share: written once, served by each.

:class:`Shout` is plain asyncio code, and so is :func:`ask`, its client. The
Twisted, Tornado and gevent examples serve and call them unchanged, each from
inside an application of its own framework.
"""

from __future__ import annotations

import asyncio
from typing import cast

__all__ = ["Shout", "ask"]


class Shout(asyncio.Protocol):
    """Send back every byte upper-cased; close when the peer has finished sending."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


async def ask(host: str, port: int, text: bytes) -> bytes:
    """Send ``text`` to a :class:`Shout` server and return its whole reply."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(text)
        writer.write_eof()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
