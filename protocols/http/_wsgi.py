"""Serve a PEP 3333 (WSGI) application from the HTTP protocol.

The application blocks, so it runs through the server's
:class:`~protoshim.protocols.http.BlockingRunner` (threads by default).  Every
interaction with the connection — reading ``wsgi.input``, sending the head,
sending each body chunk — is a coroutine run on the loop while the worker
waits for it, so a paused transport pauses the application itself.  A body
returned as a list or tuple is complete already: the worker hands it back
and the loop sends the whole response, with no waiting in between.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import urllib.parse
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from ._blocking import BlockingRunner
from ._server import HTTPExchange, RequestBodyError

__all__ = ["WSGIApp", "WSGIHandler", "build_environ"]

# wsgi.errors is the application's error stream: the server's error log.
log = logging.getLogger("protoshim.error")

T = TypeVar("T")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_READ_SIZE = 64 * 1024
#: body bytes a worker may hand to the loop before it waits for them to be sent
_POST_LIMIT = 64 * 1024


class _Errors:
    """Send ``wsgi.errors`` text to the ``protoshim.error`` logger, line by line."""

    def __init__(self) -> None:
        self._partial = ""

    def write(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            log.error("%s", line)

    def writelines(self, seq: Iterable[str]) -> None:
        for text in seq:
            self.write(text)

    def flush(self) -> None:
        if self._partial:
            log.error("%s", self._partial)
            self._partial = ""


class _Input:
    """Stream the request body to the application as ``wsgi.input``."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._call.wait(self._call.exchange.receive())
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self._buffer)
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = sys.maxsize if size is None or size < 0 else size
        while True:
            end = self._buffer.find(b"\n", 0, limit)
            if end >= 0:
                return self.read(end + 1)
            if len(self._buffer) >= limit or not self._fill():
                return self.read(min(limit, len(self._buffer)))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> _Input:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def build_environ(
    exchange: HTTPExchange, runner: BlockingRunner, root_path: str = ""
) -> dict[str, Any]:
    """Return the CGI-style environ of ``exchange`` (without ``wsgi.input``).

    ``root_path`` is the ``SCRIPT_NAME``: where the application is mounted.
    """
    server = exchange.protocol.server or ("localhost", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": exchange.method,
        "SCRIPT_NAME": root_path,
        # PEP 3333: bytes travel as latin-1 strings; the app decodes them.
        "PATH_INFO": urllib.parse.unquote_to_bytes(exchange.path).decode("latin-1"),
        "QUERY_STRING": exchange.query.decode("latin-1"),
        "REQUEST_URI": exchange.target.decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{exchange.http_version}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": exchange.scheme,
        "wsgi.errors": _Errors(),
        "wsgi.multithread": runner.multithread,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        # The input stream ends at the end of the body, chunked or not.
        "wsgi.input_terminated": True,
    }
    client = exchange.client
    if client is not None:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    for name, value in exchange.headers:
        if b"_" in name:
            continue  # X_Forwarded would collide with X-Forwarded: drop the ambiguous one
        key = name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = text
            continue
        key = "HTTP_" + key
        if key in environ:
            separator = "; " if key == "HTTP_COOKIE" else ", "
            environ[key] = environ[key] + separator + text
        else:
            environ[key] = text
    return environ


class _Call:
    """Run one request through the application, in the blocking runner."""

    def __init__(
        self,
        app: WSGIApp,
        exchange: HTTPExchange,
        runner: BlockingRunner,
        environ: dict[str, Any],
    ) -> None:
        self.app = app
        self.exchange = exchange
        self.loop = exchange.loop
        self.runner = runner
        self.environ = environ
        environ["wsgi.input"] = _Input(self)
        self.status: tuple[int, str] | None = None
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        # Chunks handed to the loop and not yet sent, and the first error
        # sending one of them (raised in the worker at its next write).
        self._lock = threading.Lock()
        self._posted = 0
        self._failure: BaseException | None = None

    def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.call(self.loop, coro)

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback cycle
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        code, _, reason = status.partition(" ")
        if len(code) != 3 or not code.isdigit():
            raise ValueError(f"invalid WSGI status {status!r}")
        self.status = (int(code), reason)
        self.headers = list(headers)
        return self.write

    def _start(self) -> None:
        exchange = self.exchange
        if not exchange.response_started:
            assert self.status is not None
            code, reason = self.status
            exchange.start_response(code, self.headers, reason)

    async def _send(self, data: bytes, end: bool) -> None:
        if self._failure is not None:
            raise self._failure
        self._start()
        if end:
            await self.exchange.end(data)
        else:
            await self.exchange.write(data)

    async def send_whole(self, body: list[bytes]) -> None:
        """Send the head, every item of ``body`` and the end, in one write if small."""
        self._start()
        await self.exchange._end(body)

    def write(self, data: bytes) -> None:
        """Send ``data`` (the PEP 3333 ``write`` callable, and each chunk).

        The chunk is handed to the loop without waiting while the connection
        has room; once the transport is paused, or ``_POST_LIMIT`` bytes are
        on their way, the worker waits for them to be sent, so a slow client
        still pauses the application.
        """
        if self.status is None:
            raise AssertionError("write() before start_response()")
        if not data:
            return  # PEP 3333: the head waits for the first non-empty chunk
        self.headers_sent = True
        if self._failure is not None:
            raise self._failure
        if self._posted >= _POST_LIMIT or self.exchange.protocol.writing_paused:
            self.wait(self._send(data, end=False))
            return
        data = bytes(data)
        with self._lock:
            self._posted += len(data)
        try:
            self.loop.call_soon_threadsafe(self._deliver, data)
        except RuntimeError as exc:  # the loop is closed
            raise ConnectionAbortedError("the event loop is closed") from exc

    def _deliver(self, data: bytes) -> None:
        """Send a chunk handed over by :meth:`write` (on the loop)."""
        with self._lock:
            self._posted -= len(data)
        if self._failure is not None:
            return
        try:
            self._start()
            self.exchange.write_nowait(data)
        except Exception as exc:
            self._failure = exc

    def _whole_body(self, result: Iterable[bytes]) -> list[bytes] | None:
        """Return the body if ``result`` holds all of it and nothing was sent yet."""
        if not isinstance(result, list | tuple) or self.status is None or self.headers_sent:
            return None
        body = [bytes(item) for item in result]
        if len(body) <= 1 and not any(name.lower() == "content-length" for name, _ in self.headers):
            # PEP 3333 lets the server compute it from a single-item body.
            self.headers.append(("Content-Length", str(len(body[0]) if body else 0)))
        self.headers_sent = True
        return body

    def run(self) -> list[bytes] | None:
        """Run the application; return the body if the loop should send all of it.

        A list or tuple returned after ``start_response`` (with no ``write()``
        before) is the whole response: it goes back to the loop, which sends
        it without the worker waiting for a single round trip.  Anything else
        is iterated here, each chunk waiting for the loop, so a paused
        transport pauses the application.
        """
        result = self.app(self.environ, self.start_response)
        close = getattr(result, "close", None)
        try:
            body = self._whole_body(result)
            if body is not None:
                if close is None:
                    return body
                # close() must follow the response, in this thread: one round trip.
                self.wait(self.send_whole(body))
                return None
            for chunk in result:
                self.write(chunk)
            if self.status is None:
                raise AssertionError("the application returned without start_response()")
            self.headers_sent = True
            self.wait(self._send(b"", end=True))
            return None
        finally:
            if close is not None:
                close()


class WSGIHandler:
    """Adapt a WSGI application into a handler for :class:`HTTPServerProtocol`.

    Errors follow PEP 3333: an exception before the head is sent becomes a
    500; one after it aborts the connection; a body shorter or longer than
    the declared ``Content-Length`` closes the connection.
    """

    def __init__(self, app: WSGIApp, root_path: str = "") -> None:
        self.app = app
        #: where the application is mounted, as ``SCRIPT_NAME`` (no trailing slash)
        self.root_path = root_path.rstrip("/")

    async def __call__(self, exchange: HTTPExchange) -> None:
        """Run the application for ``exchange`` off the loop."""
        runner = exchange.blocking
        call = _Call(self.app, exchange, runner, build_environ(exchange, runner, self.root_path))
        try:
            body = await runner.run(exchange.loop, call.run)
            if body is not None:
                await call.send_whole(body)
        except asyncio.CancelledError:
            raise
        except RequestBodyError:
            raise
        except Exception:
            if exchange.body_error is not None:
                # The application failed because the body did: answer for the body.
                raise exchange.body_error from None
            raise
