"""Serve a PEP 3156 protocol factory from a :class:`gevent.server.StreamServer`.

gevent's server keeps doing what it does (accepting, ``spawn=`` pools that
limit concurrency, ``stop(timeout)``); each accepted socket is handed to a
protoshim gevent loop, which runs the protocol through core's transport.
The handler greenlet lives as long as the connection, so pools count
connections and ``stop()`` ends them as it ends any handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import gevent  # type: ignore[import-untyped]
from gevent.event import Event  # type: ignore[import-untyped]
from gevent.server import StreamServer  # type: ignore[import-untyped]

from ...core import EventLoop, FdStream
from ._greenlets import POLL_INTERVAL
from ._loop import GeventDriver, new_event_loop

__all__ = ["ProtocolHandler", "ProtocolStreamServer"]

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

#: Seconds a killed handler waits for its aborted connection to be released.
ABORT_TIMEOUT = 1.0


class _Stream(FdStream):
    """An :class:`FdStream` that tells its handler greenlet when core releases it."""

    def __init__(self, driver: GeventDriver, sock: socket.socket, released: Any) -> None:
        super().__init__(driver, sock)
        self._released = released

    def close(self) -> None:
        # core calls close or abort (which closes) exactly once
        super().close()
        self._released.set()


class _Connection:
    """One accepted socket on its way through core, seen from its handler greenlet."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stream: _Stream | None = None
        # the transport the protocol sees: under TLS, the TLS one
        self.transport: asyncio.Transport | None = None
        self.dropped = False  # abandoned before the loop took the socket
        self.released = Event()

    def start(self, handler: ProtocolHandler, loop: EventLoop) -> None:
        # In the loop's runner greenlet.
        if self.dropped:
            return
        self.stream = _Stream(_driver_of(loop), self.sock, self.released)
        # core's own accept rules: factory errors, TLS handshake failures
        self.transport = loop.serve_stream(
            self.stream,
            handler._factory,
            ssl=handler._ssl,
            ssl_handshake_timeout=handler._ssl_handshake_timeout,
            ssl_shutdown_timeout=handler._ssl_shutdown_timeout,
        )

    def end(self, abort: bool) -> None:
        # In the loop's runner greenlet.
        if self.stream is None:
            self.dropped = True
            self.sock.close()
            self.released.set()
            return
        if self.transport is None:
            return
        if abort:
            self.transport.abort()
        else:
            self.transport.close()


class ProtocolHandler:
    """Run ``protocol_factory()`` on each connection: a ``handle`` for gevent servers.

    Use it as ``StreamServer(listener, ProtocolHandler(factory))``.  Each call
    takes over the accepted socket, runs the protocol on it on ``loop``
    (over TLS if ``ssl`` is an :class:`ssl.SSLContext`), and returns when
    the connection is lost.  If the handler greenlet is killed, the
    connection is aborted.

    Without ``loop``, the handler creates a protoshim gevent loop and runs
    it in a greenlet of its own; :meth:`close` then stops and closes it.
    A given ``loop`` must be a protoshim gevent loop of the same thread, run
    by the application.
    """

    def __init__(
        self,
        protocol_factory: ProtocolFactory,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> None:
        if loop is not None:
            _driver_of(loop)
        self._factory = protocol_factory
        self._loop = loop
        self._owned = loop is None
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._runner: Any = None
        self._live: set[_Connection] = set()
        self._idle = Event()
        self._idle.set()
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the connections run on (created and started on first use if owned)."""
        if self._closed:
            raise RuntimeError("the ProtocolHandler is closed")
        if self._loop is None:
            self._loop = new_event_loop()
        if self._owned and self._runner is None:
            self._runner = gevent.spawn(self._loop.run_forever)
        return self._loop

    def __call__(self, sock: socket.socket, address: Any) -> None:
        """Serve one accepted connection; return once it is lost."""
        loop = self.loop
        assert isinstance(loop, EventLoop)
        # The loop takes the descriptor over: gevent's server closes its own
        # socket object when this handler returns, which is then a no-op.
        conn = _Connection(socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach()))
        self._live.add(conn)
        self._idle.clear()
        try:
            try:
                loop.call_soon_threadsafe(conn.start, self, loop)
            except RuntimeError:  # the loop is closed
                conn.sock.close()
                return
            while not conn.released.wait(POLL_INTERVAL):
                if loop.is_closed():
                    conn.sock.close()
                    return
        except BaseException:
            # Killed (a pool's stop), interrupted, or the loop went away.
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(conn.end, True)
            conn.released.wait(ABORT_TIMEOUT)
            raise
        finally:
            self._live.discard(conn)
            if not self._live:
                self._idle.set()

    def close(self, timeout: float | None = None) -> None:
        """Close the open connections, then the loop if the handler created it.

        Connections are closed gracefully (their buffers flushed); those
        still open after ``timeout`` seconds are aborted.  Call it from a
        greenlet, not from a protocol callback.
        """
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is None:
            return
        if self._live and not loop.is_closed():
            loop.call_soon_threadsafe(self._end_all, False)
            if not self._idle.wait(timeout):
                loop.call_soon_threadsafe(self._end_all, True)
                self._idle.wait(ABORT_TIMEOUT)
        if self._owned:
            if self._runner is not None:
                loop.call_soon_threadsafe(loop.stop)
                self._runner.join()
                self._runner = None
            if not loop.is_closed():
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

    def _end_all(self, abort: bool) -> None:
        for conn in list(self._live):
            conn.end(abort)


class ProtocolStreamServer(StreamServer):  # type: ignore[misc]
    """A :class:`gevent.server.StreamServer` that serves a PEP 3156 protocol factory.

    ``listener``, ``backlog`` and ``spawn`` mean what they mean for
    ``StreamServer``; the other arguments are those of
    :class:`ProtocolHandler` (TLS is done by protoshim, so gevent's own
    ``ssl_args`` are not accepted).  :meth:`stop` stops accepting, lets a
    ``spawn`` pool end its handlers as gevent does, then closes the
    remaining connections within the same timeout.
    """

    def __init__(
        self,
        listener: Any,
        protocol_factory: ProtocolFactory,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        backlog: int | None = None,
        spawn: Any = "default",
    ) -> None:
        self.protocol_handler = ProtocolHandler(
            protocol_factory,
            loop=loop,
            ssl=ssl,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        super().__init__(listener, handle=self.protocol_handler, backlog=backlog, spawn=spawn)

    @property
    def protocol_loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop the protocols run on."""
        return self.protocol_handler.loop

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, end the handlers, and close the protocol connections."""
        super().stop(timeout)
        self.protocol_handler.close(self.stop_timeout if timeout is None else timeout)


def _driver_of(loop: asyncio.AbstractEventLoop) -> GeventDriver:
    driver = loop.driver if isinstance(loop, EventLoop) else None
    if not isinstance(driver, GeventDriver):
        raise TypeError(f"a protoshim gevent loop is required, not {loop!r}")
    return driver
