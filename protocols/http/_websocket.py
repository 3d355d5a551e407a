"""WebSocket (RFC 6455) over the HTTP protocol, framed by wsproto.

:class:`WebSocketUpgrade` is an HTTP handler: it checks the upgrade request
with wsproto, answers 101 and hands the connection to a
:class:`_WebSocketProtocol`, then runs the application's handler with a
:class:`WebSocket`.  A bad handshake gets 400 (or 426 with the supported
version, or when no upgrade was asked for at all).

:func:`accept` also negotiates permessage-deflate (RFC 7692) with wsproto's
extension, so every caller of it (the handler API, ASGI) compresses alike.
This module owns the one rule wsproto leaves out: inflating a message stops
at ``websocket_max_message_size``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import cast

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ._config import HTTPConfig
from ._flow import FlowGate
from ._server import HTTPExchange

__all__ = [
    "WebSocket",
    "WebSocketClosed",
    "WebSocketHandler",
    "WebSocketUpgrade",
    "accept",
    "check_upgrade",
    "reject",
    "run_handler",
]

log = logging.getLogger("protoshim.error")

WebSocketHandler = Callable[["WebSocket"], Awaitable[None]]

NORMAL_CLOSURE = 1000
INTERNAL_ERROR = 1011
MESSAGE_TOO_BIG = 1009
NO_STATUS = 1005


class WebSocketClosed(ConnectionError):
    """Signal a closed WebSocket; ``code`` is the close code received or sent."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed with code {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class _BoundedDeflate(PerMessageDeflate):
    """Speak permessage-deflate as wsproto does, inflating no message past a limit.

    wsproto inflates each received piece of a frame whole, so a few KiB of
    compressed zeros would become megabytes before the message size is even
    seen.  This inflates at most one byte past ``max_message_size`` and then
    fails the connection with 1009.
    """

    def __init__(self, max_message_size: int) -> None:
        super().__init__()
        self._max_message_size = max_message_size
        self._inflated = 0

    @staticmethod
    def acceptable(offer: str) -> bool:
        """Return True if wsproto would accept ``offer`` (a deflate offer)."""
        return PerMessageDeflate().accept(offer) is not None

    def accept(self, offer: str) -> bool | str | None:
        """Accept the first acceptable offer only (RFC 7692 section 5)."""
        # wsproto asks about every offer in turn and a later answer would
        # replace the earlier one; a declined offer must change nothing.
        if self.enabled() or not self.acceptable(offer):
            return None
        return super().accept(offer)

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        """Start counting anew at the first frame of each message."""
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            self._inflated = 0
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        """Inflate ``data``, but never more than one byte past the limit."""
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        room = self._max_message_size - self._inflated
        try:
            inflated = self._decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        return self._count(inflated)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        """Count what the end of the message flushes out."""
        # Bounded already: the payload was inflated without reaching the cap,
        # so zlib holds no output back and the tail is an empty block.
        tail = super().frame_inbound_complete(proto, fin)
        return self._count(tail) if isinstance(tail, bytes) else tail

    def _count(self, inflated: bytes) -> bytes | CloseReason:
        self._inflated += len(inflated)
        if self._inflated > self._max_message_size:
            return CloseReason.MESSAGE_TOO_BIG
        return inflated


def _extensions(config: HTTPConfig) -> list[Extension]:
    """Return the extensions the server agrees to when a client offers them."""
    if not config.websocket_compression:
        return []
    return [_BoundedDeflate(config.websocket_max_message_size)]


class _WebSocketProtocol(asyncio.Protocol):
    """Frame and unframe messages on a connection taken over from HTTP."""

    def __init__(self, ws: WSConnection, config: HTTPConfig) -> None:
        self._ws = ws
        self._config = config
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._messages: collections.deque[tuple[str | bytes, int]] = collections.deque()
        self._queued = 0
        self._parts: list[str | bytes] = []
        self._part_size = 0
        self._oversized = False
        self._reader: asyncio.Future[None] | None = None
        self._gate = FlowGate()
        self._reading_paused = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._linger: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport taken over from HTTP."""
        # Not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Turn frames into messages, answering pings and closes."""
        if self._ws.state is ConnectionState.CLOSED:
            return
        self._ws.receive_data(data)
        self._handle_events()

    def eof_received(self) -> bool:
        """Treat a half-close as the end of the connection."""
        if self._ws.state is not ConnectionState.CLOSED:
            self._ws.receive_data(None)
            self._handle_events()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Wake everyone: the connection is gone."""
        if self.close_code is None:
            self.close_code = 1006  # closed without a close frame (RFC 6455 7.1.5)
        if self._linger is not None:
            self._linger.cancel()
        self._wake_reader()
        self._gate.release()  # the next send() finds the connection closed
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        """Make senders wait."""
        self._gate.pause()

    def resume_writing(self) -> None:
        """Let senders go on."""
        self._gate.resume()

    # -- events ----------------------------------------------------------

    def _handle_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._on_message(event)
            elif isinstance(event, Ping):
                self._send_event(event.response())
            elif isinstance(event, CloseConnection):
                self._on_close(event)
                return
        if self._queued > self._config.websocket_max_message_size and not self._reading_paused:
            # The handler is not keeping up: stop reading until it catches up.
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _on_message(self, event: TextMessage | BytesMessage) -> None:
        if self._oversized:
            return
        data = event.data if isinstance(event.data, str) else bytes(event.data)
        self._part_size += len(data.encode() if isinstance(data, str) else data)
        if self._part_size > self._config.websocket_max_message_size:
            self._oversized = True
            self._parts.clear()
            self._close(MESSAGE_TOO_BIG, "message too big")
            return
        self._parts.append(data)
        if event.message_finished:
            message: str | bytes
            if isinstance(event, TextMessage):
                message = "".join(part for part in self._parts if isinstance(part, str))
            else:
                message = b"".join(part for part in self._parts if isinstance(part, bytes))
            self._parts.clear()
            self._messages.append((message, self._part_size))
            self._queued += self._part_size
            self._part_size = 0
            self._wake_reader()

    def _on_close(self, event: CloseConnection) -> None:
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            # The peer started the closing handshake: echo its code.
            self._record_close(event.code, event.reason or "")
            self._send_event(event.response())
        elif self._ws.state is ConnectionState.OPEN:
            # wsproto reports a malformed frame as a close event; fail the connection.
            self._record_close(event.code, event.reason or "")
            self._send_event(CloseConnection(code=event.code, reason=event.reason))
        assert self.transport is not None
        self.transport.close()  # RFC 6455 7.1.1: the server closes TCP first
        self._wake_reader()

    def _record_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason

    def _send_event(self, event: CloseConnection | TextMessage | BytesMessage | Pong) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            data = self._ws.send(event)
        except LocalProtocolError:
            return  # the state moved on (e.g. already closing): nothing to send
        self.transport.write(data)

    def _close(self, code: int, reason: str) -> None:
        if self._ws.state is not ConnectionState.OPEN:
            return
        self._record_close(code, reason)
        self._send_event(CloseConnection(code=code, reason=reason))
        self._wake_reader()
        # Wait for the peer's close frame, but not forever.
        self._linger = self._loop.call_later(self._config.linger_timeout, self._force_close)

    def _force_close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    # -- used by WebSocket ---------------------------------------------------

    async def receive(self) -> str | bytes:
        while not self._messages:
            if self.close_code is not None or self._ws.state is not ConnectionState.OPEN:
                raise WebSocketClosed(self.close_code or NO_STATUS, self.close_reason)
            self._reader = self._loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        message, size = self._messages.popleft()
        self._queued -= size
        if self._reading_paused and self._queued <= self._config.websocket_max_message_size:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return message

    async def send(self, message: str | bytes) -> None:
        if self._ws.state is not ConnectionState.OPEN or self.transport is None:
            raise WebSocketClosed(self.close_code or NO_STATUS, self.close_reason)
        event: TextMessage | BytesMessage
        if isinstance(message, str):
            event = TextMessage(data=message)
        else:
            event = BytesMessage(data=bytes(message))
        self.transport.write(self._ws.send(event))
        if self._gate.paused:
            await self._gate.wait()

    async def close(self, code: int, reason: str) -> None:
        self._close(code, reason)
        await asyncio.shield(self.closed)


class WebSocket:
    """Exchange messages with one WebSocket peer.

    Iterating yields messages (``str`` for text, ``bytes`` for binary) until
    the peer closes.  :meth:`send` waits while the transport is paused.
    """

    def __init__(
        self,
        exchange: HTTPExchange,
        protocol: _WebSocketProtocol,
        request: Request,
        subprotocol: str | None = None,
    ) -> None:
        self._protocol = protocol
        #: the subprotocols the client offered, and the one accepted (or None)
        self.subprotocols: list[str] = list(request.subprotocols)
        self.subprotocol = subprotocol
        #: the request path (still percent-encoded) and query of the upgrade
        self.path: bytes = exchange.path
        self.query: bytes = exchange.query
        #: the upgrade request's header fields, names lower-cased
        self.headers: list[tuple[bytes, bytes]] = exchange.headers

    @property
    def close_code(self) -> int | None:
        """Return the close code once closed, else None."""
        return self._protocol.close_code

    @property
    def close_reason(self) -> str:
        """Return the close reason received or sent ("" until closed)."""
        return self._protocol.close_reason

    async def receive(self) -> str | bytes:
        """Return the next message; raise :class:`WebSocketClosed` once closed."""
        return await self._protocol.receive()

    async def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) message."""
        await self._protocol.send(message)

    async def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake and wait until the connection is closed."""
        await self._protocol.close(code, reason)

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        while True:
            try:
                yield await self.receive()
            except WebSocketClosed:
                return


def check_upgrade(exchange: HTTPExchange) -> tuple[WSConnection, Request] | RejectConnection:
    """Check ``exchange`` as a WebSocket upgrade request.

    Return the server-side connection and the request wsproto parsed (its
    ``subprotocols`` and ``extensions`` are what the client offered), or the
    rejection to answer with.
    """
    ws = WSConnection(ConnectionType.SERVER)
    if exchange.header(b"upgrade") is None:
        return RejectConnection(status_code=426, headers=[(b"Upgrade", b"websocket")])
    if (
        exchange.method != "GET"  # wsproto re-creates the request as a GET: check here
        or exchange.header(b"content-length") not in (None, b"0")
        or exchange.header(b"transfer-encoding")
    ):
        return RejectConnection(status_code=400)
    try:
        ws.initiate_upgrade_connection(exchange.headers, exchange.target)
        request = next(ws.events())
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        return hint if isinstance(hint, RejectConnection) else RejectConnection()
    except (LocalProtocolError, h11.LocalProtocolError):
        return RejectConnection(status_code=400)
    assert isinstance(request, Request)
    return ws, request


async def reject(exchange: HTTPExchange, rejection: RejectConnection) -> None:
    """Answer a failed handshake with ``rejection``'s status and a short text body."""
    await exchange.respond(
        rejection.status_code,
        [*rejection.headers, (b"Content-Type", b"text/plain; charset=utf-8")],
        b"WebSocket handshake failed\n",
    )


def accept(
    exchange: HTTPExchange,
    ws: WSConnection,
    request: Request,
    subprotocol: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> WebSocket:
    """Answer 101 and return the :class:`WebSocket` that now owns the connection.

    permessage-deflate is agreed here when the client offers it and
    ``websocket_compression`` is on; ``headers`` must not carry
    ``Sec-WebSocket-Extensions``.
    """
    event = AcceptConnection(
        subprotocol=subprotocol,
        extensions=_extensions(exchange.config),
        extra_headers=list(headers),
    )
    protocol = _WebSocketProtocol(ws, exchange.config)
    exchange.switch_protocol(ws.send(event), protocol)
    return WebSocket(exchange, protocol, request, subprotocol)


async def run_handler(websocket: WebSocket, handler: WebSocketHandler, target: bytes) -> None:
    """Run ``handler`` on ``websocket``, then close it (1011 if the handler failed)."""
    try:
        await handler(websocket)
    except WebSocketClosed:
        pass
    except Exception:
        log.exception("WebSocket handler failed on %s", target)
        await websocket.close(INTERNAL_ERROR, "handler failed")
        return
    await websocket.close(NORMAL_CLOSURE, "")


class WebSocketUpgrade:
    """Upgrade an HTTP request to WebSocket and run ``handler`` on it."""

    def __init__(self, handler: WebSocketHandler) -> None:
        self.handler = handler

    async def __call__(self, exchange: HTTPExchange) -> None:
        """Answer the upgrade request, then run the WebSocket handler."""
        checked = check_upgrade(exchange)
        if isinstance(checked, RejectConnection):
            await reject(exchange, checked)
            return
        websocket = accept(exchange, *checked)
        await run_handler(websocket, self.handler, exchange.target)
