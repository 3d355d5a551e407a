"""Serve ASGI 3.0 applications: HTTP, WebSocket and lifespan.

:class:`ASGIHandler` is an HTTP handler like the WSGI one: it turns each
:class:`~protoshim.protocols.http.HTTPExchange` into an ASGI ``http`` or
``websocket`` scope and translates the application's messages into calls
on the exchange (or on the :class:`WebSocket` it upgrades to).  The HTTP
protocol under it still parses, validates, pipelines and paces, so an ASGI
application gets the same limits and refusals as every other handler, on
every protoshim loop.

:class:`Lifespan` runs the ``lifespan`` scope around a server's life.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Literal

from wsproto.events import RejectConnection, Request

from ._config import HTTPConfig
from ._server import HTTPExchange, HTTPServerProtocol, RequestBodyError, protocol_factory
from ._static import _open_regular, send_file
from ._websocket import (
    INTERNAL_ERROR,
    NORMAL_CLOSURE,
    WebSocket,
    WebSocketClosed,
    accept,
    check_upgrade,
    reject,
)

__all__ = [
    "ASGIApp",
    "ASGIHandler",
    "Lifespan",
    "LifespanFailed",
    "asgi_server",
]

log = logging.getLogger("protoshim.error")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: Loosely typed on purpose: applications annotate scope and messages with
#: their own (narrower or wider) types, and each must be accepted.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

#: 2.4: ``send`` raises an ``OSError`` once the client is gone, so
#: applications need not listen for ``http.disconnect`` while streaming.
SPEC_VERSION = "2.4"
_DISCONNECT: Message = {"type": "http.disconnect"}
_EXTENSIONS = ("http.response.pathsend", "websocket.http.response")
_FORBIDDEN = 403


def _decode_path(raw: bytes) -> str:
    if b"%" not in raw:
        return raw.decode("utf-8", "replace")
    return urllib.parse.unquote_to_bytes(raw).decode("utf-8", "replace")


def _wants_websocket(exchange: HTTPExchange) -> bool:
    for name, value in exchange.headers:
        if name == b"upgrade":
            return b"websocket" in value.lower()
    return False


def _abort_unfinished(exchange: HTTPExchange) -> None:
    """Cut the connection if the application returned in the middle of its response."""
    if exchange.response_started and not exchange.finished:
        log.error("ASGI application returned mid-response to %s", exchange.target)
        exchange.abort()


class _Response:
    """Send an ASGI response (``http.response.*`` or a WebSocket denial) on an exchange.

    The head waits for the first body message, so an application that fails
    between the two still gets a clean 500 rather than a cut connection.
    """

    __slots__ = ("_exchange", "_waiter", "complete", "headers", "status")

    def __init__(self, exchange: HTTPExchange) -> None:
        self._exchange = exchange
        self.status: int | None = None
        self.headers: Iterable[tuple[bytes, bytes]] = ()
        self.complete = False
        self._waiter: asyncio.Future[None] | None = None

    def start(self, message: Message) -> None:
        if self.status is not None:
            raise RuntimeError("the ASGI response has already started")
        self.status = int(message["status"])
        self.headers = message.get("headers") or ()

    def _head(self, kind: str) -> HTTPExchange:
        """Return the exchange with the response head prepared, or raise if out of order."""
        exchange = self._exchange
        if self.complete:
            if exchange.protocol.lost:
                raise ConnectionResetError("connection lost")
            raise RuntimeError(f"{kind} sent after the response was complete")
        if self.status is None:
            raise RuntimeError(f"{kind} sent before the response started")
        if not exchange.response_started:
            exchange.start_response(self.status, self.headers)
        return exchange

    async def body(self, message: Message) -> None:
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if not more and self.status is not None and not self._exchange.response_started:
            self._add_length(len(body))
        exchange = self._head("http.response.body")
        if more:
            await exchange.write(body)
            return
        self._finish()
        await exchange.end(body)

    def _add_length(self, length: int) -> None:
        """Frame a response whose whole body is in one message by length, not chunks."""
        if self.status in (204, 304) or self._exchange.method == "HEAD":
            return  # no body, or the length of a body that is not sent
        for name, _ in self.headers:
            if name.lower() in (b"content-length", b"transfer-encoding"):
                return
        self.headers = [*self.headers, (b"content-length", str(length).encode("ascii"))]

    async def pathsend(self, message: Message) -> None:
        exchange = self._head("http.response.pathsend")
        self._finish()
        runner = exchange.blocking
        opened = await runner.run(exchange.loop, functools.partial(_open_regular, message["path"]))
        if opened is None:
            raise FileNotFoundError(f"http.response.pathsend: cannot open {message['path']!r}")
        file, info = opened
        try:
            await send_file(exchange, file, 0, info.st_size)
        finally:
            file.close()

    def _finish(self) -> None:
        self.complete = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_complete_or_disconnect(self) -> None:
        if self.complete:
            return
        # Shared: an application may wait in two tasks at once.
        if self._waiter is None:
            self._waiter = self._exchange.loop.create_future()
        gone = self._exchange.protocol.disconnect_future()
        await asyncio.wait((gone, self._waiter), return_when=asyncio.FIRST_COMPLETED)


class _HTTPCycle:
    """One HTTP request seen through ASGI's ``receive`` and ``send``."""

    __slots__ = ("_body_done", "_exchange", "_response", "body_error")

    def __init__(self, exchange: HTTPExchange) -> None:
        self._exchange = exchange
        self._response = _Response(exchange)
        self._body_done = False
        self.body_error: RequestBodyError | None = None

    async def receive(self) -> Message:
        if self._body_done:
            await self._response.wait_complete_or_disconnect()
            return _DISCONNECT
        exchange = self._exchange
        try:
            data = await exchange.receive()
        except RequestBodyError as exc:
            # The protocol answers it (413, 400...) once the application returns.
            self.body_error = exc
            self._body_done = True
            return _DISCONNECT
        except ConnectionError:
            self._body_done = True
            return _DISCONNECT
        more = bool(data) and not exchange.body_finished
        self._body_done = not more
        return {"type": "http.request", "body": data, "more_body": more}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            await self._response.body(message)
        elif kind == "http.response.start":
            self._response.start(message)
        elif kind == "http.response.pathsend":
            await self._response.pathsend(message)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in an HTTP scope")


class _WebSocketCycle:
    """One WebSocket connection seen through ASGI's ``receive`` and ``send``."""

    def __init__(self, exchange: HTTPExchange, handshake: tuple[Any, Request]) -> None:
        self._exchange = exchange
        self._handshake = handshake
        self._connected = False
        self._refused = False
        self.response = _Response(exchange)
        self.websocket: WebSocket | None = None

    async def receive(self) -> Message:
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        websocket = self.websocket
        if websocket is None:
            # Not accepted (yet): nothing arrives but the end of the connection.
            if not self._exchange.finished:
                await asyncio.shield(self._exchange.protocol.disconnect_future())
            return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        try:
            message = await websocket.receive()
        except WebSocketClosed as exc:
            return {"type": "websocket.disconnect", "code": exc.code, "reason": exc.reason}
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        websocket = self.websocket
        if websocket is not None:
            if kind == "websocket.send":
                text, data = message.get("text"), message.get("bytes")
                if text is not None:
                    await websocket.send(text)
                elif data is not None:
                    await websocket.send(bytes(data))
                else:
                    raise RuntimeError("websocket.send needs 'text' or 'bytes'")
            elif kind == "websocket.close":
                code = message.get("code") or NORMAL_CLOSURE
                await websocket.close(code, message.get("reason") or "")
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r} after websocket.accept")
            return
        if self._refused:
            raise ConnectionResetError("the WebSocket handshake was refused")
        if kind == "websocket.accept":
            if self.response.status is not None:
                raise RuntimeError("websocket.accept sent after a denial response started")
            headers = [(bytes(name), bytes(value)) for name, value in message.get("headers", ())]
            ws, request = self._handshake
            subprotocol = message.get("subprotocol")
            self.websocket = accept(self._exchange, ws, request, subprotocol, headers)
        elif kind == "websocket.close":
            self._refused = True
            await reject(self._exchange, RejectConnection(status_code=_FORBIDDEN))
        elif kind == "websocket.http.response.start":
            self.response.start(message)
        elif kind == "websocket.http.response.body":
            await self.response.body(message)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} before websocket.accept")


class ASGIHandler:
    """Run an ASGI 3.0 application for each request of an HTTP server.

    ``root_path`` is where the application is mounted; ``state`` is the
    lifespan state, of which every request gets a shallow copy.
    """

    def __init__(
        self, app: ASGIApp, root_path: str = "", state: dict[str, Any] | None = None
    ) -> None:
        self.app = app
        self.root_path = root_path.rstrip("/")
        self._raw_root = self.root_path.encode("utf-8")
        self.state: dict[str, Any] = {} if state is None else state

    def _scope(self, exchange: HTTPExchange, kind: str, scheme: str) -> Scope:
        version = exchange.http_version
        raw_path = self._raw_root + exchange.path
        protocol = exchange.protocol
        return {
            "type": kind,
            "asgi": {"version": "3.0", "spec_version": SPEC_VERSION},
            "http_version": version if version in ("1.0", "1.1") else "1.1",
            "method": exchange.method,
            "scheme": scheme,
            "path": _decode_path(raw_path),
            "raw_path": raw_path,
            "query_string": exchange.query,
            "root_path": self.root_path,
            "headers": exchange.headers,
            "client": exchange.client,
            "server": protocol.server,
            "state": self.state.copy(),
            "extensions": {name: {} for name in _EXTENSIONS},
        }

    async def __call__(self, exchange: HTTPExchange) -> None:
        """Answer ``exchange`` with the application."""
        if _wants_websocket(exchange):
            await self._websocket(exchange, "wss" if exchange.scheme == "https" else "ws")
            return
        cycle = _HTTPCycle(exchange)
        scope = self._scope(exchange, "http", exchange.scheme)
        await self.app(scope, cycle.receive, cycle.send)
        if cycle.body_error is not None:
            raise cycle.body_error  # the protocol answers it, or closes if too late
        _abort_unfinished(exchange)
        # Not started at all: the protocol logs it and answers 500.

    async def _websocket(self, exchange: HTTPExchange, scheme: str) -> None:
        handshake = check_upgrade(exchange)
        if isinstance(handshake, RejectConnection):
            await reject(exchange, handshake)
            return
        scope = self._scope(exchange, "websocket", scheme)
        del scope["method"]
        scope["subprotocols"] = list(handshake[1].subprotocols)
        cycle = _WebSocketCycle(exchange, handshake)
        try:
            await self.app(scope, cycle.receive, cycle.send)
        except Exception:
            if cycle.websocket is None:
                raise  # not accepted: the protocol answers 500, or closes
            log.exception("ASGI application failed on WebSocket %s", exchange.target)
            await cycle.websocket.close(INTERNAL_ERROR, "")
            return
        if cycle.websocket is not None:
            await cycle.websocket.close(NORMAL_CLOSURE, "")
        else:
            _abort_unfinished(exchange)


class LifespanFailed(RuntimeError):
    """Signal that the application's startup (or shutdown) failed."""


class Lifespan:
    """Run an application's ``lifespan`` scope: startup, then shutdown.

    ``mode`` is ``"auto"`` (an application that raises before startup
    completes is taken not to support lifespan), ``"on"`` (that is a
    failure) or ``"off"`` (no lifespan scope at all).  :attr:`state` is the
    dict the application fills at startup; pass it to :class:`ASGIHandler`.
    """

    def __init__(self, app: ASGIApp, mode: Literal["auto", "on", "off"] = "auto") -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"lifespan mode must be auto, on or off, not {mode!r}")
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self._queue: asyncio.Queue[Message] | None = None
        self._replies: dict[str, asyncio.Future[str | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._unsupported = False

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait; raise :class:`LifespanFailed` if it failed."""
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._replies = {phase: loop.create_future() for phase in ("startup", "shutdown")}
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        self._task = loop.create_task(self._main(scope))
        await self._step("startup")

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait; raise :class:`LifespanFailed` if it failed."""
        if self._task is None or self._unsupported or self._task.done():
            return
        await self._step("shutdown")
        await self._task

    async def _step(self, phase: str) -> None:
        assert self._queue is not None
        self._queue.put_nowait({"type": f"lifespan.{phase}"})
        failure = await self._replies[phase]
        if failure is not None:
            raise LifespanFailed(f"application {phase} failed: {failure}".rstrip(": "))

    async def _main(self, scope: Scope) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            startup = self._replies["startup"]
            if not startup.done() and self.mode == "auto":
                self._unsupported = True
                log.info("the application does not support lifespan (%r); going on without", exc)
            else:
                log.exception("the application's lifespan failed")
            for reply in self._replies.values():
                if not reply.done():
                    reply.set_result(None if self._unsupported else repr(exc))
        finally:
            for reply in self._replies.values():
                if not reply.done():
                    reply.set_result(None)

    async def _receive(self) -> Message:
        assert self._queue is not None
        return await self._queue.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        prefix, _, outcome = kind.rpartition(".")
        phase = prefix.removeprefix("lifespan.")
        reply = self._replies.get(phase)
        known = prefix.startswith("lifespan.") and outcome in ("complete", "failed")
        if not known or reply is None:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in the lifespan scope")
        if reply.done():
            raise RuntimeError(f"{kind} sent twice")
        reply.set_result(None if outcome == "complete" else message.get("message", ""))


def asgi_server(
    app: ASGIApp,
    config: HTTPConfig | None = None,
    root_path: str = "",
    lifespan: Lifespan | None = None,
) -> Callable[[], HTTPServerProtocol]:
    """Return a protocol factory for ``loop.create_server`` serving ASGI ``app``.

    Give the :class:`Lifespan` you run around the server so that requests
    see its state.
    """
    handler = ASGIHandler(app, root_path, lifespan.state if lifespan is not None else None)
    return protocol_factory(handler, config or HTTPConfig())
