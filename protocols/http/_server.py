"""The HTTP/1.1 server protocol and the exchange object handlers receive.

The protocol is an :class:`asyncio.Protocol` that uses only PEP 3156
interfaces, so it runs unchanged on every protoshim loop.  It keeps its own
input buffer and takes one request head (``_parse``) and then its body
(``_body``) from it at a time, which lets it parse pipelined requests ahead
of the one being answered, answer strictly in order, and stop reading at
any limit without a parser holding bytes it has not handed over.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any, cast

from ._access import access_log, log_access
from ._blocking import BlockingRunner, blocking_runner_for
from ._body import BodyReader, ChunkedReader, FramingError, LengthReader
from ._config import HTTPConfig
from ._flow import FlowGate
from ._parse import RequestHead, head_parser
from ._proxy import forwarded_client
from ._response import CONTINUE, FramingMisuse, ResponseFramer
from ._validate import Rejection, check_fields, scan_head

__all__ = [
    "HTTPExchange",
    "HTTPServerProtocol",
    "Handler",
    "RequestBodyError",
    "ResponseError",
    "protocol_factory",
]

# Server events and application errors, as uvicorn's "uvicorn.error".
log = logging.getLogger("protoshim.error")

Handler = Callable[["HTTPExchange"], Awaitable[None]]
HeaderList = Iterable[tuple[bytes | str, bytes | str]]


class RequestBodyError(OSError):
    """Signal a request body that could not be read: malformed, too large or cut short.

    ``status`` is the response the request deserves if none has started.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class ResponseError(ValueError):
    """Signal a response whose framing the handler broke (e.g. fewer bytes than declared)."""


class _DateCache:
    """Format the ``Date`` header once a second, not once a response."""

    def __init__(self) -> None:
        # One tuple, replaced whole: loops in other threads may read it meanwhile.
        self._cached = (-1, b"")

    def now(self) -> bytes:
        second = int(time.time())
        cached_second, value = self._cached
        if second != cached_second:
            value = email.utils.formatdate(second, usegmt=True).encode("ascii")
            self._cached = (second, value)
        return value


_DATES = _DateCache()


_REASONS = {int(status): status.phrase.encode("ascii") for status in HTTPStatus}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


#: body pieces this large are written alone rather than copied into a join
_JOIN_LIMIT = 16 * 1024


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


class HTTPExchange:
    """Present one request to a handler and collect its response.

    The request is described by plain attributes; the body is read with
    :meth:`receive`.  The response is either :meth:`respond` (all at once) or
    :meth:`start_response`, any number of :meth:`write` and one :meth:`end`.
    Writes wait while the transport is paused, so a handler that awaits them
    never buffers more than the transport's high-water mark.
    """

    def __init__(self, protocol: HTTPServerProtocol, request: RequestHead) -> None:
        self._protocol = protocol
        #: the method, e.g. ``"GET"``
        self.method: str = request.method.decode("ascii")
        #: the request target exactly as received
        self.target: bytes = request.target
        #: ``"1.1"``, ``"1.0"`` (or a higher 1.x minor, served as 1.1)
        self.http_version: str = request.http_version.decode("ascii")
        #: header fields in order, names lower-cased
        self.headers: list[tuple[bytes, bytes]] = request.headers
        path, _, query = self.target.partition(b"?")
        if path[:1] != b"/" and b"://" in path:
            # absolute-form: keep only the path, the authority is in Host
            path = b"/" + path.split(b"://", 1)[1].partition(b"/")[2]
        #: the target's path, still percent-encoded
        self.path: bytes = path
        #: the target's query string, without ``?``
        self.query: bytes = query
        #: the client's (host, port) and ``"http"`` or ``"https"``: the peer's,
        #: or what a trusted proxy says (see ``HTTPConfig.proxy_headers``)
        self.client: tuple[str, int] | None = protocol.client
        self.scheme: str = protocol.scheme
        config = protocol.config
        if config.proxy_headers:
            self.client, self.scheme = forwarded_client(
                self.headers, self.client, self.scheme, config.trusted_proxies
            )
        self._body: collections.deque[bytes] = collections.deque()
        self._body_size = 0
        self._body_done = False
        self._body_error: RequestBodyError | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._reader: BodyReader | None = None
        # As h11: the client waits for "100 Continue" until body bytes arrive.
        self._expects_continue = self.http_version >= "1.1" and any(
            name == b"expect" and value.lower() == b"100-continue" for name, value in self.headers
        )
        self._sent_continue = False
        self._framer = ResponseFramer(self.method, self.http_version, not _closes(request))
        self._pending_head = b""
        self._started = False
        self._finished = False
        self._close_after = False
        self._status = 0
        self._sent = 0  # body bytes, for the access log
        self._logged = False
        #: set when the protocol refused the request before any handler saw it
        self._rejection: Rejection | None = None
        #: an Upgrade or "Connection: close" request: parse nothing after it yet
        self._blocks_parsing = False

    # -- request -----------------------------------------------------------

    def header(self, name: bytes) -> bytes | None:
        """Return the field ``name`` (lower-case), repeated fields joined by commas."""
        values = [value for key, value in self.headers if key == name]
        return b", ".join(values) if values else None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return the transport's extra info ``name`` (``peername``, ``sockname``...)."""
        return self._protocol.get_extra_info(name, default)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """Return the loop the connection runs on."""
        return self._protocol.loop

    @property
    def protocol(self) -> HTTPServerProtocol:
        """Return the connection's protocol (for :meth:`~HTTPServerProtocol.disconnect_future`)."""
        return self._protocol

    @property
    def config(self) -> HTTPConfig:
        """Return the server's configuration."""
        return self._protocol.config

    @property
    def blocking(self) -> BlockingRunner:
        """Return the runner for blocking code chosen for this server and loop."""
        return blocking_runner_for(self.loop, self.config.blocking_runner)

    @property
    def body_finished(self) -> bool:
        """Tell whether :meth:`receive` has returned every byte of the body."""
        return self._body_done and not self._body

    @property
    def body_error(self) -> RequestBodyError | None:
        """Return the error that ended reading the body, if any."""
        return self._body_error

    async def receive(self) -> bytes:
        """Return the next piece of the request body, or ``b""`` at its end.

        Raise :class:`RequestBodyError` if the body is malformed, too large or
        cut short, and :class:`ConnectionError` if the connection is gone.
        The first call answers ``Expect: 100-continue``.
        """
        if not self._sent_continue and not self._started:
            self._sent_continue = True
            if self._expects_continue:
                self._protocol._write([CONTINUE])
        while not self._body:
            if self._body_error is not None:
                raise self._body_error
            if self._body_done:
                return b""
            if self._protocol.lost:
                raise ConnectionResetError("connection lost while reading the request body")
            self._body_waiter = self.loop.create_future()
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None
        data = self._body.popleft()
        self._body_size -= len(data)
        self._protocol._body_consumed(self)
        return data

    async def read_body(self) -> bytes:
        """Return the whole request body (bounded by ``max_body_size``)."""
        parts = []
        while data := await self.receive():
            parts.append(data)
        return b"".join(parts)

    # -- response ----------------------------------------------------------

    @property
    def response_started(self) -> bool:
        """Tell whether :meth:`start_response` (or :meth:`respond`) has been called."""
        return self._started

    @property
    def finished(self) -> bool:
        """Tell whether the response is complete or the connection was handed over."""
        return self._finished

    def start_response(self, status: int, headers: HeaderList, reason: bytes | str = b"") -> None:
        """Prepare the status line and headers; they are sent with the first body bytes.

        ``Date`` and ``Server`` are added unless present.  Without
        ``Content-Length`` the body is sent chunked (or delimited by closing
        the connection for an HTTP/1.0 client).
        """
        if self._started:
            raise RuntimeError("the response has already started")
        fields = [(_bytes(name), _bytes(value)) for name, value in headers]
        names = {name.lower() for name, _ in fields}
        if b"date" not in names:
            fields.append((b"Date", _DATES.now()))
        if b"server" not in names and self.config.server_name:
            fields.append((b"Server", self.config.server_name.encode("latin-1")))
        if self._close_after and b"connection" not in names:
            fields.append((b"Connection", b"close"))
        if not reason:
            reason = _reason(status)
        # The framer checks everything before it changes any state.
        try:
            self._pending_head = self._framer.head(status, fields, _bytes(reason))
        except ValueError as exc:
            raise ValueError(f"invalid response: {exc}") from None
        self._started = True
        self._status = status

    def _frame(self, chunks: Iterable[bytes | bytearray | memoryview]) -> list[bytes]:
        """Return the pending head and ``chunks`` framed, each body chunk uncopied."""
        if not self._started:
            raise RuntimeError("start_response() must be called first")
        if self._finished:
            raise RuntimeError("the response is already complete")
        pieces = [self._pending_head] if self._pending_head else []
        self._pending_head = b""
        if self.method != "HEAD":
            for data in chunks:
                if data:
                    pieces += self._send_data(data)
        return pieces

    def _send_data(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        # ``data`` stays one of the pieces, uncopied, with any framing around it.
        self._sent += len(data)
        try:
            return self._framer.data(data if isinstance(data, bytes) else bytes(data))
        except FramingMisuse as exc:
            # More bytes than Content-Length promised.
            self._finished = True
            self._protocol._abandon(self, abort=True)
            raise ResponseError(str(exc)) from None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send part of the body (with the head if not sent yet) and wait for room."""
        pieces = self._frame((data,))
        if pieces:
            self._protocol._write(pieces)
        await self._protocol._drain()

    def write_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Send part of the body like :meth:`write`, without waiting for room.

        The caller is then responsible for not outrunning a paused transport
        (see :attr:`HTTPServerProtocol.writing_paused`).
        """
        if self._protocol.lost:
            raise ConnectionResetError("connection lost")
        pieces = self._frame((data,))
        if pieces:
            self._protocol._write(pieces)

    async def end(self, data: bytes | bytearray | memoryview = b"") -> None:
        """Send the last part of the body and end the response."""
        await self._end((data,))

    async def _end(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send the head if pending, every chunk and the end of the response, in one go."""
        pieces = self._frame(chunks)
        try:
            tail = self._framer.end()
        except FramingMisuse as exc:
            # Fewer bytes than Content-Length promised: the peer gets what
            # there is, as if it had been written piece by piece, then a close.
            self._finished = True
            if pieces and not self._protocol.lost:
                self._protocol._write(pieces)
            self._protocol._abandon(self, abort=False)
            raise ResponseError(str(exc)) from None
        if tail:
            pieces.append(tail)
        self._finished = True
        self._protocol._write(pieces)
        self._protocol._response_done(self)
        await self._protocol._drain()

    async def respond(
        self, status: int, headers: HeaderList, body: bytes = b"", reason: bytes | str = b""
    ) -> None:
        """Send a whole response in one write, with ``Content-Length``."""
        fields = list(headers)
        if not any(_bytes(name).lower() == b"content-length" for name, _ in fields):
            fields.append((b"Content-Length", str(len(body)).encode("ascii")))
        self.start_response(status, fields, reason)
        await self.end(body)

    def abort(self) -> None:
        """Drop the connection at once (after an error mid-response)."""
        self._finished = True
        self._protocol._abandon(self, abort=True)

    def switch_protocol(self, response: bytes, protocol: asyncio.BaseProtocol) -> None:
        """Send ``response`` (a complete 101) and hand the connection to ``protocol``.

        ``protocol`` gets ``connection_made`` with the transport, then
        ``data_received`` with any bytes that followed the request, then every
        later transport callback.
        """
        if self._started:
            raise RuntimeError("the response has already started")
        self._started = self._finished = True
        self._status = 101
        self._protocol._switch(self, response, protocol)
        # Logged now, not when the handler returns at the WebSocket's end.
        self._log()

    def _log(self) -> None:
        if not self._logged and self._status and access_log.isEnabledFor(logging.INFO):
            self._logged = True
            log_access(self, self._status, self._sent, self._rejection is None)

    # -- fed by the protocol -------------------------------------------------

    def _wake(self) -> None:
        if self._body_waiter is not None and not self._body_waiter.done():
            self._body_waiter.set_result(None)

    def _push_body(self, data: bytes) -> None:
        self._expects_continue = False
        self._body.append(data)
        self._body_size += len(data)
        self._wake()

    def _push_end(self) -> None:
        self._expects_continue = False
        self._body_done = True
        self._wake()

    def _fail_body(self, error: RequestBodyError) -> None:
        if self._body_error is None and not self._body_done:
            self._body_error = error
        self._wake()

    async def _send_error(self, status: int, reason: str) -> None:
        body = f"{status} {_reason(status).decode()}: {reason}\n".encode()
        self._close_after = True
        if self.method == "HEAD":
            body = b""
        self._framer = ResponseFramer("GET", "1.1", keep_alive=False)
        await self.respond(
            status,
            [
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Connection", b"close"),
            ],
            body,
        )


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None


class _State(enum.Enum):
    """Where a connection is in its life; ``lost`` and the peer's EOF are separate facts."""

    OPEN = "open"  # requests are parsed as they arrive
    DRAINING = "draining"  # no new request is parsed; those received are answered
    UPGRADED = "upgraded"  # the transport belongs to another protocol now
    CLOSING = "closing"  # close or half-close has begun


class _Timeout(enum.Enum):
    """What a connection's timer is waiting for."""

    HEADER = "header"  # a request head to be complete
    IDLE = "idle"  # a next request on a kept-alive connection
    LINGER = "linger"  # the peer to close after our last response


#: a timer firing this close to its deadline counts as on time (clock resolution)
_TIMER_SLACK = 0.001


def _closes(request: RequestHead) -> bool:
    # h11 answers HTTP/1.0 with "Connection: close" even if asked to keep alive.
    if request.http_version == b"1.0":
        return True
    return any(
        token.strip().lower() == b"close"
        for name, value in request.headers
        if name == b"connection"
        for token in value.split(b",")
    )


def _placeholder(method: bytes = b"GET") -> RequestHead:
    return RequestHead(method, b"/", b"1.1", [(b"host", b"")])


class ServerLoad:
    """Count the connections and running handlers of one server's protocols."""

    __slots__ = ("connections", "limit", "tasks")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.connections = 0
        self.tasks = 0

    @property
    def over(self) -> bool:
        """Tell whether the server holds more than its limit (this request included)."""
        return self.connections > self.limit or self.tasks > self.limit


class HTTPServerProtocol(asyncio.Protocol):
    """Serve HTTP/1.1 on one connection, calling ``handler`` once per request.

    ``handler(exchange)`` is a coroutine function; requests on a connection
    are handled one after another and answered in order.  Requests that break
    the protocol or a limit are answered by the protocol itself (400, 413,
    417, 431, 501, 503, 505) and never reach the handler.  ``load`` is shared
    by the protocols of one server to enforce ``limit_concurrency``.
    """

    def __init__(
        self, handler: Handler, config: HTTPConfig | None = None, load: ServerLoad | None = None
    ) -> None:
        self._handler = handler
        self.config: HTTPConfig = config or HTTPConfig()
        self._load = load
        #: called once per request parsed (``protoshim serve`` counts them
        #: for ``--limit-max-requests``)
        self.on_request: Callable[[], None] | None = None
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        #: ``"https"`` on a TLS transport, else ``"http"``
        self.scheme = "http"
        self._buffer = bytearray()
        self._exchanges: collections.deque[HTTPExchange] = collections.deque()
        self._reading: HTTPExchange | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._state = _State.OPEN
        self._eof = False
        self.lost = False
        self._reading_paused = False
        self._gate = FlowGate()
        # One armed handle serves every timeout in turn (see _set_timer).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind: _Timeout | None = None
        self._deadline = 0.0
        self._closed: asyncio.Future[None] | None = None
        self._disconnected: asyncio.Future[None] | None = None
        self._requests = 0
        self._parse = head_parser(self.config.parser)

    # -- public state ---------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """Return the loop this connection runs on."""
        if self._loop is None:
            raise RuntimeError("not connected yet")
        return self._loop

    @property
    def requests_in_flight(self) -> int:
        """Count the requests parsed but not yet completely answered."""
        return len(self._exchanges)

    @property
    def requests_served(self) -> int:
        """Count the requests parsed on this connection so far."""
        return self._requests

    @property
    def writing_paused(self) -> bool:
        """Tell whether the transport has asked us to stop writing."""
        return self._gate.paused

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return the transport's extra info ``name``."""
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)

    def disconnect_future(self) -> asyncio.Future[None]:
        """Return a future done once the peer has closed its side or the connection is lost.

        Responses already owed are still sent after the peer's end of input,
        but an application waiting for more will get none.  Await the future
        through :func:`asyncio.wait` or a shield: it is shared.
        """
        if self._disconnected is None:
            self._disconnected = self.loop.create_future()
            if self.lost or self._eof:
                self._disconnected.set_result(None)
        return self._disconnected

    def _peer_gone(self) -> None:
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until the connection is lost and every handler has returned."""
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
            self._check_closed()
        await asyncio.shield(self._closed)

    def begin_shutdown(self) -> None:
        """Answer the requests already received, then close; parse no new ones.

        ``protoshim serve`` calls this on Ctrl-C or SIGTERM, so in-flight
        requests finish within the grace period instead of being cut off.
        """
        if self.transport is None or self.lost or self._state is _State.CLOSING:
            return
        if self._state is _State.UPGRADED:
            self.transport.close()
            return
        self._stop()
        if self._exchanges:
            self._exchanges[-1]._close_after = True
        else:
            self._shutdown()

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start waiting for the first request head."""
        # Not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        #: the peer's and our own (host, port), None on a Unix socket; read
        #: once, not once a request
        self.client = _address(transport.get_extra_info("peername"))
        self.server = _address(transport.get_extra_info("sockname"))
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        if self._load is not None:
            self._load.connections += 1
        # TCP_NODELAY is already on: every loop's TCP transport sets it (the
        # conformance suite checks), so responses of several writes do not
        # wait on Nagle and the peer's delayed ACK.
        self._set_timer(_Timeout.HEADER, self.config.header_timeout)

    def data_received(self, data: bytes) -> None:
        """Parse as many requests as the limits allow."""
        if self._state is not _State.OPEN:
            return  # closing: discard what the peer still sends
        self._buffer += data
        self._run()

    def eof_received(self) -> bool | None:
        """Finish answering what was received, then close."""
        self._eof = True
        self._peer_gone()
        if self._state is _State.OPEN:
            self._run()  # parse what is left; an unfinished body or head fails
        return bool(self._exchanges)  # if answers are owed, keep writing them

    def connection_lost(self, exc: Exception | None) -> None:
        """Wake everything that waits on this connection."""
        self.lost = True
        if self._load is not None:
            self._load.connections -= 1
        self._cancel_timer()
        self._peer_gone()
        self._gate.fail("connection lost")
        for exchange in self._exchanges:
            exchange._wake()
        self._buffer.clear()
        self._check_closed()

    def pause_writing(self) -> None:
        """Make writers wait."""
        self._gate.pause()

    def resume_writing(self) -> None:
        """Let writers go on."""
        self._gate.resume()

    # -- writing -----------------------------------------------------------

    def _write(self, pieces: list[bytes]) -> None:
        """Write ``pieces`` in order: small ones joined, large ones as they are.

        Joining saves a system call per piece, but copying a large body costs
        more than a second ``write`` (and most loops' ``writelines`` join).
        """
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise ConnectionResetError("connection closed")
        if len(pieces) <= 1:
            if pieces:
                transport.write(pieces[0])
            return
        small: list[bytes] = []
        for piece in pieces:
            if len(piece) < _JOIN_LIMIT:
                small.append(piece)
                continue
            if small:
                transport.write(b"".join(small))
                small.clear()
            transport.write(piece)
        if small:
            transport.write(b"".join(small))

    async def _drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("connection lost")
        if self._gate.paused:
            await self._gate.wait()

    # -- parsing -------------------------------------------------------------

    def _run(self) -> None:
        try:
            wants_more = self._process()
        except Exception:
            # A bug here must not become a traceback in the loop: drop the peer.
            log.exception("HTTP protocol failure; aborting the connection")
            self._stop()
            if self.transport is not None:
                self.transport.abort()
            return
        self._set_reading(wants_more or self._state is not _State.OPEN)
        self._update_timer()

    def _set_reading(self, on: bool) -> None:
        if self.transport is None or self.lost or self._state is _State.CLOSING:
            return
        if on and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        elif not on and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _process(self) -> bool:
        """Parse what the buffer holds; return False when a limit says stop reading."""
        while self._state is _State.OPEN:
            exchange = self._reading
            if exchange is not None:
                if not self._feed_body(exchange):
                    return exchange._body_size < self.config.body_buffer_size
                continue
            if len(self._exchanges) >= self.config.max_pipelined:
                return False
            if self._exchanges and self._exchanges[-1]._blocks_parsing:
                return False  # what follows an upgrade may not be HTTP at all
            if not self._parse_head():
                return True
        return True

    def _feed_body(self, exchange: HTTPExchange) -> bool:
        """Move body bytes to ``exchange``; return True if its body is complete."""
        reader = exchange._reader
        assert reader is not None
        try:
            while not reader.done:
                room = self.config.body_buffer_size - exchange._body_size
                if room <= 0:
                    return False
                data = reader.read(self._buffer, room)
                if data:
                    exchange._push_body(data)
                elif not reader.done:
                    if self._eof:
                        raise FramingError(400, "connection closed inside the request body")
                    return False
        except FramingError as exc:
            self._body_failed(exchange, RequestBodyError(exc.status, exc.reason))
            return False
        self._reading = None
        exchange._push_end()
        return True

    def _body_failed(self, exchange: HTTPExchange, error: RequestBodyError) -> None:
        self._stop()
        self._buffer.clear()
        self._reading = None
        exchange._close_after = True
        exchange._fail_body(error)
        # Requests parsed after this one are never answered: the stream is lost.
        while self._exchanges and self._exchanges[-1] is not exchange:
            self._exchanges.pop()

    def _parse_head(self) -> bool:
        """Parse one request head from the buffer; return True if one was parsed."""
        buf = self._buffer
        # RFC 9112 section 2.2: ignore empty lines before a request line.
        while buf[:2] == b"\r\n":
            del buf[:2]
        if not buf:
            if self._eof:
                self._stop()
            return False
        if self._timer_kind is not _Timeout.HEADER:
            self._set_timer(_Timeout.HEADER, self.config.header_timeout)
        end = buf.find(b"\r\n\r\n")
        complete = end >= 0 and end + 4 <= self.config.max_header_size
        region = buf[: end + 2] if complete else buf[: self.config.max_header_size + 1]
        rejection = scan_head(region)
        if rejection is None and not complete:
            if len(buf) > self.config.max_header_size:
                rejection = Rejection(431, "request head too large")
            elif self._eof:
                rejection = Rejection(400, "connection closed inside a request head")
            else:
                return False
        head = bytes(buf[: end + 4])
        if rejection is None:
            rejection = check_fields(head, self.config.max_body_size)
        if rejection is not None:
            self._reject(rejection)
            return False
        del buf[: end + 4]
        request = self._parse(head, self.config.max_header_size)
        if isinstance(request, Rejection):
            self._reject(request)
            return False
        rejection = self._check_request(request)
        if rejection is not None:
            self._reject(rejection, request.method)
            return False
        exchange = HTTPExchange(self, request)
        # The head was checked: at most one Content-Length (digits, within the
        # limit), or Transfer-Encoding that is exactly "chunked", never both.
        if exchange.header(b"transfer-encoding") is not None:
            exchange._reader = ChunkedReader(self.config.max_body_size)
        elif (length := exchange.header(b"content-length")) not in (None, b"0"):
            exchange._reader = LengthReader(int(length))
        # After an upgrade the bytes may not be HTTP; after "close" nothing is read.
        exchange._blocks_parsing = _closes(request) or any(
            name == b"upgrade" for name, _ in request.headers
        )
        self._requests += 1
        if self.on_request is not None:
            self.on_request()
        self._exchanges.append(exchange)
        if exchange._reader is not None:
            self._reading = exchange
        else:
            exchange._push_end()
        if len(self._exchanges) == 1:
            self._dispatch(exchange)
        return True

    def _check_request(self, request: RequestHead) -> Rejection | None:
        target = request.target
        # RFC 9112 2.3: a higher 1.x minor version is served as 1.1.
        if not request.http_version.startswith(b"1."):
            return Rejection(505, "only HTTP/1.x is served")
        if request.method == b"CONNECT":
            return Rejection(501, "CONNECT is not supported")
        if not (
            target[:1] == b"/"
            or target.lower().startswith((b"http://", b"https://"))
            or (target == b"*" and request.method == b"OPTIONS")
        ):
            return Rejection(400, "malformed request target")
        return self._check_headers(request)

    def _check_headers(self, request: RequestHead) -> Rejection | None:
        for name, value in request.headers:
            if name == b"transfer-encoding" and request.http_version == b"1.0":
                return Rejection(400, "Transfer-Encoding in an HTTP/1.0 request")
            if name == b"expect" and value.lower() != b"100-continue":
                return Rejection(417, "unsupported expectation")
        return None

    def _reject(self, rejection: Rejection, method: bytes = b"GET") -> None:
        """Queue an error answer; nothing after it on this connection is parsed."""
        self._stop()
        self._buffer.clear()
        exchange = HTTPExchange(self, _placeholder(method))
        exchange._rejection = rejection
        exchange._body_done = True
        self._exchanges.append(exchange)
        if len(self._exchanges) == 1:
            self._dispatch(exchange)

    # -- handling ------------------------------------------------------------

    def _dispatch(self, exchange: HTTPExchange) -> None:
        task = self.loop.create_task(self._handle(exchange))
        self._tasks.add(task)
        if self._load is not None:
            self._load.tasks += 1
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._load is not None:
            self._load.tasks -= 1
        self._check_closed()

    async def _handle(self, exchange: HTTPExchange) -> None:
        try:
            if exchange._rejection is not None:
                await exchange._send_error(*exchange._rejection)
                return
            if self._load is not None and self._load.over:
                # As uvicorn: refuse rather than queue, and close to free the slot.
                await exchange._send_error(503, "the server is at its concurrency limit")
                return
            failed = exchange._body_error
            if failed is not None:
                # The body failed before the request reached the front of the queue.
                await exchange._send_error(failed.status, str(failed))
                return
            await self._handler(exchange)
            if not exchange._finished:
                if exchange._started:
                    await exchange.end()
                else:
                    log.error("handler returned without responding to %s", exchange.target)
                    await exchange._send_error(500, "no response")
        except RequestBodyError as exc:
            await self._fail(exchange, exc.status, str(exc))
        except ResponseError as exc:
            # The connection was already closed where the framing broke.
            log.warning("response to %s broke its framing: %s", exchange.target, exc)
        except ConnectionError as exc:
            log.debug("connection dropped during %s: %s", exchange.target, exc)
            exchange.abort()
        except Exception:
            log.exception("handler failed on %s", exchange.target)
            await self._fail(exchange, 500, "handler failed")
        finally:
            exchange._log()

    async def _fail(self, exchange: HTTPExchange, status: int, reason: str) -> None:
        if exchange._finished:
            return
        if exchange._started:
            exchange.abort()
            return
        try:
            await exchange._send_error(status, reason)
        except ConnectionError:
            exchange.abort()

    def _body_consumed(self, exchange: HTTPExchange) -> None:
        if exchange is self._reading and self._state is _State.OPEN:
            self._run()

    def _response_done(self, exchange: HTTPExchange) -> None:
        if not self._exchanges or self._exchanges[0] is not exchange:
            return
        self._exchanges.popleft()
        keep_alive = (
            not exchange._close_after
            and exchange._rejection is None
            and exchange._framer.keep_alive
            and exchange._body_done  # the request's body was read to its end
        )
        if not keep_alive:
            self._shutdown()
            return
        if self._exchanges:
            self._dispatch(self._exchanges[0])
        self._run()
        if not self._exchanges and (self._eof or self._state is not _State.OPEN):
            self._shutdown()

    def _abandon(self, exchange: HTTPExchange, abort: bool) -> None:
        """Give up the connection because ``exchange``'s response cannot be completed."""
        self._stop()
        self._exchanges.clear()
        self._cancel_timer()
        if self.transport is not None and not self.lost and self._state is not _State.CLOSING:
            self._state = _State.CLOSING
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def _switch(
        self, exchange: HTTPExchange, response: bytes, protocol: asyncio.BaseProtocol
    ) -> None:
        transport = self.transport
        assert transport is not None
        self._write([response])
        self._cancel_timer()
        self._state = _State.UPGRADED
        self._exchanges.clear()
        leftover = bytes(self._buffer)
        self._buffer.clear()
        # The transport talks to ``protocol`` directly from now on; only the
        # end of the connection is still ours to hear (wait_closed, shutdown).
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            try:
                lost(exc)
            finally:
                self.connection_lost(exc)

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.writing_paused:
            protocol.pause_writing()
        self._set_reading(True)
        if leftover:
            protocol.data_received(leftover)  # type: ignore[attr-defined]
        if self._eof and not protocol.eof_received():  # type: ignore[attr-defined]
            transport.close()

    def _shutdown(self) -> None:
        """Close after the last response, reading and discarding until the peer closes.

        Closing with unread input makes the kernel send a reset, which can
        destroy the response before the peer reads it; half-closing and
        lingering lets the peer see it.
        """
        if self._state is _State.CLOSING or self.transport is None:
            return
        self._state = _State.CLOSING
        self._buffer.clear()
        self._exchanges.clear()
        self._cancel_timer()
        if self.lost:
            return
        if self._eof or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self._set_timer(_Timeout.LINGER, self.config.linger_timeout)

    # -- timers --------------------------------------------------------------

    def _update_timer(self) -> None:
        if self._state is _State.CLOSING or self.lost:
            return
        if self._exchanges or self._state is not _State.OPEN:
            if self._timer_kind in (_Timeout.HEADER, _Timeout.IDLE):
                self._timer_kind = None  # the armed handle, when it fires, finds nothing to do
        elif not self._buffer and self._timer_kind is not _Timeout.IDLE and self._requests:
            self._set_timer(_Timeout.IDLE, self.config.keepalive_timeout)

    def _set_timer(self, kind: _Timeout, delay: float) -> None:
        """Make ``kind`` expire ``delay`` seconds from now.

        A handle already armed to fire sooner is kept and re-armed when it
        fires, so a busy keep-alive connection does not create and cancel
        two timers per request.
        """
        self._timer_kind = kind
        self._deadline = deadline = self.loop.time() + delay
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._timer_fired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_kind = None

    def _timer_fired(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if kind is None or self.transport is None or self.lost:
            return
        if self.loop.time() + _TIMER_SLACK < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._timer_fired)
            return
        self._timer_kind = None
        log.debug("closing connection: %s timeout", kind.value)
        self._state = _State.CLOSING
        self.transport.close()

    def _stop(self) -> None:
        """Parse no more requests; answer those already received."""
        if self._state is _State.OPEN:
            self._state = _State.DRAINING

    def _check_closed(self) -> None:
        if self._closed is not None and self.lost and not self._tasks and not self._closed.done():
            self._closed.set_result(None)


def protocol_factory(handler: Handler, config: HTTPConfig) -> Callable[[], HTTPServerProtocol]:
    """Return a factory of protocols serving ``handler``, as one server.

    Its protocols share one :class:`ServerLoad` when ``config`` limits
    concurrency.
    """
    limit = config.limit_concurrency
    load = ServerLoad(limit) if limit is not None else None

    def factory() -> HTTPServerProtocol:
        return HTTPServerProtocol(handler, config, load)

    return factory
