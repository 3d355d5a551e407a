"""Servers under test: the HTTP protocol with a watched connection, and its handlers.

:class:`Watched` is the HTTP server protocol, unchanged, that also records
its callbacks, so a test can check the grammar (``connection_lost`` exactly
once, with the error) from the server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from protoshim.conformance._helpers import wait
from protoshim.protocols.http import (
    HTTPConfig,
    HTTPExchange,
    HTTPServerProtocol,
    WebSocket,
    WebSocketUpgrade,
)

__all__ = [
    "PATTERN",
    "App",
    "Watched",
    "Watching",
    "no_tracebacks",
    "watching",
]

#: 64 KiB of a recognisable pattern, the unit of every generated body
PATTERN = bytes(range(256)) * 256


class Watched(HTTPServerProtocol):
    """Count ``connection_made`` calls and reads; record every ``connection_lost`` call."""

    def __init__(self, handler: Any, config: HTTPConfig | None = None) -> None:
        super().__init__(handler, config)
        self.made = 0
        self.reads = 0
        self.lost_calls: list[Exception | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count, then serve."""
        self.made += 1
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Count the reads, then parse."""
        self.reads += 1
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        """Record the error, then let the protocol clean up."""
        self.lost_calls.append(exc)
        super().connection_lost(exc)


@dataclass
class App:
    """Route a few paths used by the fault tests; count what each handler saw.

    * ``/upload``: read the whole body, answer with its length;
    * ``/big?n=N``: stream N pattern blocks (64 KiB each) with ``Content-Length``;
    * ``/ws``: a WebSocket that echoes messages (see :meth:`websocket`);
    * anything else: ``ok``.
    """

    calls: int = 0
    body_bytes: int = 0
    finished: int = 0
    failed: list[BaseException] = field(default_factory=list)
    produced: int = 0
    ws_messages: list[str | bytes] = field(default_factory=list)
    ws_handlers_done: int = 0

    async def __call__(self, exchange: HTTPExchange) -> None:
        """Handle one request."""
        if exchange.path == b"/ws":
            await WebSocketUpgrade(self.websocket)(exchange)
            return
        self.calls += 1
        try:
            if exchange.path == b"/upload":
                size = 0
                while data := await exchange.receive():
                    size += len(data)
                    self.body_bytes += len(data)
                await exchange.respond(200, [], b"%d" % size)
            elif exchange.path == b"/big":
                blocks = int(exchange.query.partition(b"=")[2] or b"16")
                exchange.start_response(200, [(b"Content-Length", b"%d" % (blocks * len(PATTERN)))])
                for _ in range(blocks):
                    self.produced += len(PATTERN)
                    await exchange.write(PATTERN)
                await exchange.end()
            else:
                await exchange.respond(200, [], b"ok")
        except BaseException as exc:
            self.failed.append(exc)
            raise
        self.finished += 1

    async def websocket(self, ws: WebSocket) -> None:
        """Echo every message; count the handlers that returned."""
        try:
            async for message in ws:
                self.ws_messages.append(message)
                await ws.send(message)
        finally:
            self.ws_handlers_done += 1


@dataclass
class Watching:
    """A running server and the protocols it made."""

    port: int
    protocols: list[Watched]
    server: asyncio.Server

    async def all_closed(self) -> None:
        """Wait until every connection made is lost and its handlers have returned."""
        made = [protocol for protocol in self.protocols if protocol.made]
        await wait(
            asyncio.gather(*(protocol.wait_closed() for protocol in made)),
            "every server connection to close and its handlers to return",
        )


@contextlib.asynccontextmanager
async def watching(
    loop: asyncio.AbstractEventLoop,
    make: Callable[[], Watched],
    **server_options: Any,
) -> AsyncIterator[Watching]:
    """Serve ``make`` on 127.0.0.1; on exit close the server and wait for every connection."""
    protocols: list[Watched] = []

    def factory() -> Watched:
        protocols.append(make())
        return protocols[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0, **server_options)
    served = Watching(server.sockets[0].getsockname()[1], protocols, server)
    try:
        yield served
    finally:
        server.close()
        for protocol in protocols:
            if protocol.transport is not None and not protocol.lost:
                protocol.transport.abort()
        await served.all_closed()
        await wait(server.wait_closed(), "Server.wait_closed()")


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """Fail if anything was logged at ERROR or with a traceback."""
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [f"{r.name}: {r.getMessage()}" for r in bad]
