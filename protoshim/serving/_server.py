"""One process serving on its listening sockets until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl as _ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .._registry import get_adapter
from ._errors import AppError, CliError
from ._listen import DEFAULT_BACKLOG
from ._logs import configure_logging, logging_configured
from ._target import Target

__all__ = ["REQUEST_HOOK", "SHUTDOWN_GRACE", "SHUTDOWN_HOOK", "Server", "run_loop", "run_server"]

logger = logging.getLogger("protoshim.error")

#: Seconds that open connections get to finish after Ctrl-C or SIGTERM.
SHUTDOWN_GRACE = 5.0
#: A protocol with this method is asked to finish its current work and then
#: close; any other protocol's transport is closed (flushed) at once.
SHUTDOWN_HOOK = "begin_shutdown"
#: A protocol with this attribute gets it set to a function to call once per
#: request, which ``--limit-max-requests`` counts.
REQUEST_HOOK = "on_request"


def _hooked(
    factory: Callable[[], asyncio.BaseProtocol], on_request: Callable[[], None]
) -> Callable[[], asyncio.BaseProtocol]:
    """Wrap ``factory`` so that each protocol that has the hook calls ``on_request``."""

    def hooked() -> asyncio.BaseProtocol:
        protocol = factory()
        if hasattr(protocol, REQUEST_HOOK):
            setattr(protocol, REQUEST_HOOK, on_request)
        return protocol

    return hooked


def _limit(limit: int, stop: Callable[[], None]) -> Callable[[], None]:
    """Return a request counter whose ``limit``-th call calls ``stop``."""
    count = 0

    def on_request() -> None:
        nonlocal count
        count += 1
        if count == limit:
            logger.info("protoshim: served %d requests (--limit-max-requests)", limit)
            stop()

    return on_request


class _Connections:
    """Track the transports of a server so shutdown can close each one."""

    def __init__(self) -> None:
        self.open: dict[asyncio.BaseTransport, asyncio.BaseProtocol] = {}
        self.idle: asyncio.Event | None = None

    def wrap(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        on_connection: Callable[[], None] | None = None,
    ) -> Callable[[], Any]:
        def tracked() -> asyncio.BaseProtocol:
            protocol = factory()
            made, lost = protocol.connection_made, protocol.connection_lost
            transports: list[asyncio.BaseTransport] = []

            def connection_made(transport: asyncio.BaseTransport) -> None:
                transports.append(transport)
                self.open[transport] = protocol
                if on_connection is not None:
                    on_connection()
                made(transport)

            def connection_lost(exc: Exception | None) -> None:
                try:
                    lost(exc)
                finally:
                    for transport in transports:
                        self.open.pop(transport, None)
                    if not self.open and self.idle is not None:
                        self.idle.set()

            # Instance attributes shadow the class's methods, so the protocol's
            # own class (Protocol or BufferedProtocol) is left untouched.
            protocol.connection_made = connection_made  # type: ignore[method-assign]
            protocol.connection_lost = connection_lost  # type: ignore[method-assign]
            return protocol

        return tracked

    async def close_all(self, timeout: float) -> bool:
        """Close every connection; return True if some had to be aborted."""
        if not self.open:
            return False
        self.idle = asyncio.Event()
        for transport, protocol in list(self.open.items()):
            hook = getattr(protocol, SHUTDOWN_HOOK, None)
            if callable(hook):
                hook()
            else:
                transport.close()
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            for transport in list(self.open):
                # Not an isinstance check: uvloop's transports do not
                # inherit from asyncio's classes.
                abort = getattr(transport, "abort", None)
                if callable(abort):
                    abort()
            return True
        return False


class Server:
    """Serve one target on listening sockets, from inside a running loop.

    :meth:`start` runs the ASGI lifespan startup and begins accepting;
    :meth:`stop` closes the listeners, gives open connections ``grace``
    seconds to finish, aborts the rest and runs the lifespan shutdown.  The
    ``protoshim serve`` command and the gunicorn worker both drive one, each
    with its own signals.  ``on_connection`` is called for every accepted
    connection and ``on_request`` for every HTTP request (by protocols with
    the :data:`REQUEST_HOOK`), so a caller can count them.
    """

    def __init__(
        self,
        target: Target,
        on_connection: Callable[[], None] | None = None,
        on_request: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self._connections = _Connections()
        self._servers: list[asyncio.AbstractServer] = []
        self._on_connection = on_connection
        self._on_request = on_request
        self.sockets: list[socket.socket] = []

    async def start(
        self,
        sockets: list[socket.socket],
        ssl: _ssl.SSLContext | None = None,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        """Run the lifespan startup, then accept on every socket."""
        loop = asyncio.get_running_loop()
        lifespan = self.target.lifespan
        if lifespan is not None:
            await _lifespan_step(lifespan.startup)
        factory = self.target.factory
        if self._on_request is not None:
            factory = _hooked(factory, self._on_request)
        factory = self._connections.wrap(factory, self._on_connection)
        try:
            for sock in sockets:
                self._servers.append(await loop.create_server(factory, sock=sock, ssl=ssl))
                # create_server listened again with its default of 100; restore
                # ours.  Not through its ``backlog``: the stdlib loop accepts up
                # to that many per wakeup and, out of descriptors, logs each
                # failure.
                sock.listen(backlog)
        except OSError as exc:
            for server in self._servers:
                server.close()
            if lifespan is not None:
                await _lifespan_step(lifespan.shutdown)
            raise CliError(f"cannot serve: {exc.strerror or exc}") from None
        self.sockets = list(sockets)

    @property
    def addresses(self) -> str:
        """The addresses served, as ``host:port`` joined by commas."""
        return ", ".join(_format(s.getsockname()) for s in self.sockets)

    async def stop(self, grace: float) -> bool:
        """Stop accepting and close every connection, the lifespan last;
        return True if some connections outlived ``grace`` and were aborted."""
        for server in self._servers:
            server.close()
        forced = await self._connections.close_all(grace)
        for server in self._servers:
            await server.wait_closed()
        if self.target.lifespan is not None:
            await _lifespan_step(self.target.lifespan.shutdown)
        return forced


async def _serve(
    target: Target,
    sockets: list[socket.socket],
    framework: str,
    grace: float,
    ssl: _ssl.SSLContext | None,
    backlog: int,
    max_requests: int | None,
    started: Callable[[Callable[[], None]], None] | None,
) -> bool:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = Server(target, on_request=_limit(max_requests, stop.set) if max_requests else None)
    await server.start(sockets, ssl, backlog)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Scripts and tests read this line (on stdout by default) for the port.
    logger.info(
        "protoshim: serving %s on %s at %s (Ctrl-C to stop)",
        target.label,
        framework,
        server.addresses,
    )
    try:
        if started is not None:
            started(stop.set)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        logger.info("protoshim: shutting down")
        forced = await server.stop(grace)
    return forced


async def _lifespan_step(step: Callable[[], Awaitable[None]]) -> None:
    from ..protocols.http import LifespanFailed

    try:
        await step()
    except LifespanFailed as exc:
        raise AppError(str(exc)) from None


def _format(address: Any) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


def run_server(
    target: Target,
    sockets: list[socket.socket],
    framework: str = "asyncio",
    grace: float = SHUTDOWN_GRACE,
    ssl: _ssl.SSLContext | None = None,
    backlog: int = DEFAULT_BACKLOG,
    *,
    max_requests: int | None = None,
    started: Callable[[Callable[[], None]], None] | None = None,
) -> None:
    """Serve ``target`` on ``sockets`` with a new loop of ``framework`` until
    SIGINT or SIGTERM (or ``max_requests`` requests), then give open
    connections ``grace`` seconds to finish.

    With ``ssl``, every connection is TLS; ``backlog`` is the listen queue
    the sockets keep once serving starts.  ``started`` is called on the loop
    once the server accepts, with a function that stops it as the signals do.
    """
    if grace < 0:
        raise CliError(f"--grace must be >= 0, got {grace}")
    if max_requests is not None and max_requests < 1:
        raise CliError(f"--limit-max-requests must be at least 1, got {max_requests}")
    if not logging_configured():
        configure_logging()  # the defaults: the startup line still reaches stdout
    run_loop(
        framework,
        _serve(target, sockets, framework, grace, ssl, backlog, max_requests, started),
    )


def run_loop(framework: str, main: Coroutine[Any, Any, bool]) -> None:
    """Run ``main`` on a new loop of ``framework``; if it returns True
    (connections were aborted), exit the process at once."""
    adapter = get_adapter(framework)
    with asyncio.Runner(loop_factory=adapter.new_event_loop) as runner:
        forced = runner.run(main)
        if forced:
            # Work that outlived the grace period may still hold executor
            # threads, which no one can stop and the interpreter would wait
            # for at exit: the connections are gone, so leave now.
            logger.warning("protoshim: connections outlived the grace period and were aborted")
            logging.shutdown()  # flush every handler: os._exit skips it
            os._exit(0)
