"""Servers, raw clients and response parsing shared by the HTTP conformance tests.

Both ends run on the loop under test: the server is the protocol factory
being tested, the client a plain :class:`asyncio.Protocol` made with the
loop's ``create_connection``.  Responses are parsed with h11's client side,
so a malformed response fails the test instead of being misread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from wsgiref.validate import validator

import h11
from wsproto import ConnectionType, WSConnection
from wsproto import events as wsevents
from wsproto.connection import ConnectionState
from wsproto.extensions import Extension
from wsproto.utilities import LocalProtocolError

from protoshim.conformance._helpers import Recorder, wait, wait_until
from protoshim.protocols.http import (
    BlockingRunner,
    HTTPConfig,
    HTTPServerProtocol,
    ThreadRunner,
    WSGIApp,
    http_server,
)

__all__ = [
    "Client",
    "CountingRunner",
    "Environ",
    "Response",
    "Served",
    "StartResponse",
    "WebSocketClient",
    "request",
    "serving",
    "small_config",
    "validated",
    "websocket",
]

StartResponse = Callable[..., Callable[[bytes], None]]
Environ = dict[str, Any]


def validated(app: WSGIApp) -> WSGIApp:
    """Wrap ``app`` in :func:`wsgiref.validate.validator` (typed)."""
    checked: WSGIApp = validator(cast(Any, app))  # typeshed's start_response type is narrower
    return checked


def request(
    method: str = "GET",
    target: str = "/",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: bool = True,
) -> bytes:
    """Format a request by hand (tests also send malformed ones by hand)."""
    lines = [f"{method} {target} HTTP/1.1"]
    if host:
        lines.append("Host: test")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Response:
    """Hold one parsed response."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """Return the (last) value of header ``name``, or None."""
        wanted = name.lower().encode("ascii")
        values = [value for key, value in self.headers if key == wanted]
        return values[-1].decode("latin-1") if values else None


class Client(Recorder):
    """Connect raw and parse the responses received."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._parsed = 0

    def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.tr.write(data)

    async def _more(self, what: str) -> bool:
        """Wait for more bytes; return False at end of stream."""
        if self.eof.done() or self.lost.done():
            return False
        have = len(self.data)
        with contextlib.suppress(AssertionError):
            await self.received(have + 1, what)
            return True
        if self.eof.done() or self.lost.done():
            return False
        raise AssertionError(f"timed out waiting for {what}")

    async def response(self, method: str = "GET") -> Response:
        """Parse the next response (``method`` is the request's, for HEAD)."""
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "test")]))
        conn.send(h11.EndOfMessage())
        pending = bytes(self.data[self._parsed :])
        if pending:  # h11 takes b"" for end of stream
            conn.receive_data(pending)
        informational: list[int] = []
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                before = len(self.data)
                if await self._more("a response"):
                    conn.receive_data(bytes(self.data[before:]))
                else:
                    conn.receive_data(b"")
                continue
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = [(bytes(k), bytes(v)) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected event {event!r}")
        self._parsed = len(self.data) - len(conn.trailing_data[0])
        return Response(status, headers, bytes(body), informational)

    async def closed(self) -> None:
        """Wait until the server closes (EOF or connection lost)."""
        await wait_until(lambda: self.eof.done() or self.lost.done(), "the server to close")

    async def everything(self) -> bytes:
        """Wait for the server to close; return the bytes not yet parsed."""
        await self.closed()
        return bytes(self.data[self._parsed :])


@dataclass
class Served:
    """Describe a running server and its connections; add clients."""

    loop: asyncio.AbstractEventLoop
    port: int
    protocols: list[HTTPServerProtocol]
    clients: list[Client] = field(default_factory=list)
    websockets: list[WebSocketClient] = field(default_factory=list)

    async def connect(self, kind: type[Client] | None = None) -> Client:
        """Open a new client connection (of class ``kind``, default :class:`Client`)."""
        _, client = await wait(
            self.loop.create_connection(
                functools.partial(kind or Client, self.loop), "127.0.0.1", self.port
            ),
            "create_connection",
        )
        self.clients.append(client)
        return client

    async def exchange(self, data: bytes, method: str = "GET") -> Response:
        """Send ``data`` on a new connection and return the one response."""
        client = await self.connect()
        client.send(data)
        return await client.response(method)

    async def server_protocol(self, index: int = 0) -> HTTPServerProtocol:
        """Return the server side of the ``index``-th accepted connection."""
        await wait_until(lambda: len(self.protocols) > index, "the server to accept")
        return self.protocols[index]


@contextlib.asynccontextmanager
async def serving(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], HTTPServerProtocol] | None = None,
    **kwargs: Any,
) -> AsyncIterator[Served]:
    """Serve ``factory`` (or ``http_server(**kwargs)``) on 127.0.0.1 until the block ends.

    On exit every client is closed and every server connection must close
    and finish its handlers, so nothing outlives the test.
    """
    make = factory if factory is not None else http_server(**kwargs)
    protocols: list[HTTPServerProtocol] = []

    def track() -> HTTPServerProtocol:
        protocol = make()
        protocols.append(protocol)
        return protocol

    server = await loop.create_server(track, "127.0.0.1", 0)
    served = Served(loop, server.sockets[0].getsockname()[1], protocols)
    try:
        yield served
    finally:
        server.close()
        for client in served.clients:
            if client.transport is not None and not client.lost.done():
                client.transport.close()
        for ws in served.websockets:
            if ws.transport is not None and not ws.lost.done():
                ws.transport.close()
        for client in served.clients:
            await wait(asyncio.shield(client.lost), "the client connection to close")
        for ws in served.websockets:
            await wait(asyncio.shield(ws.lost), "the WebSocket client to close")
        await wait(
            asyncio.gather(*(protocol.wait_closed() for protocol in protocols)),
            "server connections to close and their handlers to return",
        )
        await wait(server.wait_closed(), "Server.wait_closed()")


class CountingRunner:
    """Count blocking-runner calls and delegate them to threads."""

    multithread = True

    def __init__(self) -> None:
        self._threads: BlockingRunner = ThreadRunner()
        self.runs = 0
        self.calls = 0

    def run(self, loop: asyncio.AbstractEventLoop, func: Callable[[], Any]) -> Any:
        """Count, then run ``func`` in a thread."""
        self.runs += 1
        return self._threads.run(loop, func)

    def call(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
        """Count, then run ``coro`` on the loop and wait."""
        self.calls += 1
        return self._threads.call(loop, coro)


def small_config(**overrides: Any) -> HTTPConfig:
    """Return a config with short timeouts so timeout tests end quickly."""
    settings: dict[str, Any] = {
        "header_timeout": 0.3,
        "keepalive_timeout": 0.3,
        "linger_timeout": 0.5,
    }
    settings.update(overrides)
    return HTTPConfig(**settings)


class WebSocketClient(asyncio.Protocol):
    """Speak WebSocket (wsproto) on a raw connection of the loop under test."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.events: collections.deque[wsevents.Event] = collections.deque()
        #: every byte received, handshake response included, as on the wire
        self.raw = bytearray()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.accepted: wsevents.AcceptConnection | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Parse frames into events."""
        self.raw += data
        self.ws.receive_data(data)
        self.events.extend(self.ws.events())
        self._wake()

    def eof_received(self) -> None:
        """Let wsproto see the end of the stream."""
        with contextlib.suppress(LocalProtocolError):
            self.ws.receive_data(None)
            self.events.extend(self.ws.events())
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve ``lost``."""
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def send(self, event: wsevents.Event) -> None:
        """Send a wsproto event."""
        assert self.transport is not None
        self.transport.write(self.ws.send(event))

    def send_raw(self, data: bytes) -> None:
        """Send bytes that bypass wsproto (to test malformed frames)."""
        assert self.transport is not None
        self.transport.write(data)

    async def next_event(self) -> wsevents.Event:
        """Return the next event from the server."""
        while not self.events:
            if self.lost.done():
                raise AssertionError("connection lost while waiting for a WebSocket event")
            self._waiter = self.loop.create_future()
            await wait(self._waiter, "a WebSocket event")
        return self.events.popleft()

    async def message(self) -> str | bytes:
        """Return the next whole message, skipping pongs."""
        parts: list[Any] = []
        while True:
            event = await self.next_event()
            if isinstance(event, wsevents.TextMessage | wsevents.BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    if isinstance(event, wsevents.TextMessage):
                        return "".join(parts)
                    return b"".join(parts)
            elif not isinstance(event, wsevents.Pong):
                raise AssertionError(f"expected a message, got {event!r}")

    async def close_code(self) -> int:
        """Wait for the server's close frame; answer it if needed; return its code."""
        while True:
            event = await self.next_event()
            if isinstance(event, wsevents.CloseConnection):
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.send(event.response())
                return event.code
            if not isinstance(event, wsevents.TextMessage | wsevents.BytesMessage | wsevents.Pong):
                raise AssertionError(f"expected a close, got {event!r}")

    def response_header(self, name: str) -> str | None:
        """Return header ``name`` of the handshake response, or None."""
        head = bytes(self.raw).split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def frames_after_handshake(self) -> bytes:
        """Return the raw bytes received after the handshake response."""
        return bytes(self.raw).split(b"\r\n\r\n", 1)[1]


async def websocket(
    served: Served,
    path: str = "/ws",
    extensions: Sequence[Extension] = (),
    subprotocols: Iterable[str] = (),
) -> WebSocketClient:
    """Open a WebSocket to ``path`` offering ``extensions``; fail unless the server accepts.

    The server's :class:`~wsproto.events.AcceptConnection` is kept as
    ``client.accepted``.
    """
    _, client = await wait(
        served.loop.create_connection(
            functools.partial(WebSocketClient, served.loop), "127.0.0.1", served.port
        ),
        "create_connection",
    )
    request = wsevents.Request(
        host="test", target=path, extensions=list(extensions), subprotocols=list(subprotocols)
    )
    client.send(request)
    event = await client.next_event()
    if not isinstance(event, wsevents.AcceptConnection):
        if client.transport is not None:
            client.transport.abort()
        raise AssertionError(f"the WebSocket upgrade was refused: {event!r}")
    client.accepted = event
    served.websockets.append(client)
    return client
