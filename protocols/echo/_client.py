"""An echo client that plays ping-pong: send a message, wait for all of it back."""

from __future__ import annotations

import asyncio
from typing import cast


class EchoClient(asyncio.Protocol):
    """Send ``message`` ``rounds`` times, each after the previous echo is complete.

    ``done`` resolves with the number of rounds completed, or with the error
    that ended the connection early.
    """

    def __init__(self, message: bytes, rounds: int) -> None:
        if not message:
            raise ValueError("message must not be empty")
        self.message = message
        self.rounds = rounds
        self.completed = 0
        self._pending = 0
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.completed >= self.rounds:
            self.transport.close()
            return
        self._pending = len(self.message)
        self.transport.write(self.message)

    def data_received(self, data: bytes) -> None:
        self._pending -= len(data)
        if self._pending < 0:
            self._fail(ValueError("received more bytes than were sent"))
        elif self._pending == 0:
            self.completed += 1
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if self.completed >= self.rounds:
            self.done.set_result(self.completed)
        else:
            self.done.set_exception(exc or ConnectionError("connection closed early"))

    def _fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


async def ping_pong(host: str, port: int, message: bytes, rounds: int) -> int:
    """Run one :class:`EchoClient` against ``host:port``; return rounds completed."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: EchoClient(message, rounds), host, port)
    return await client.done
