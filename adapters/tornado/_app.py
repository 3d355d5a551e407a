"""Protocols inside a Tornado application: :func:`attach` and :class:`ProtocolServer`.

A Tornado 6 application already runs an asyncio loop (usually through
``asyncio.run``), and its ``IOLoop`` is a thin wrapper over that loop.
:func:`attach` puts a protoshim loop *on* that IOLoop: its callbacks, timers
and sockets are registered with the IOLoop, which the application keeps
running.  Protocols and tasks on the attached loop see it as their running
loop; Tornado handlers keep seeing the application's loop.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl as ssl_module
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from ...core import EventLoop, Listener, Stream, relay
from ._loop import TornadoDriver

__all__ = ["AttachedEventLoop", "ProtocolServer", "attach"]

T = TypeVar("T")

#: Connections accepted per readable event, as many as asyncio's default backlog.
_ACCEPT_BATCH = 100

_attached: dict[IOLoop, AttachedEventLoop] = {}


class AttachedEventLoop(EventLoop):
    """A protoshim loop that runs on an IOLoop someone else runs.

    It runs as a guest from creation until :meth:`close`: ``run_forever``
    and ``run_until_complete`` raise, as on any running loop, and
    :meth:`stop` has no run to end.  From Tornado code, use :meth:`submit`
    to run a coroutine on it and await the result.
    """

    def __init__(self, driver: TornadoDriver) -> None:
        super().__init__(driver)
        self._tornado_driver = driver
        # The IOLoop's asyncio loop is the running one between callbacks;
        # the driver enters this loop around each of them.
        self.begin_guest()

    @property
    def io_loop(self) -> IOLoop:
        """The Tornado IOLoop this loop is attached to."""
        return self._tornado_driver.io_loop

    def stop(self) -> None:
        """Do nothing: the loop runs for as long as its IOLoop; :meth:`close` detaches it."""
        # Core would stop the driver, and an attached driver stops only to
        # carry a KeyboardInterrupt or SystemExit out (TornadoDriver.stop).

    def close(self) -> None:
        """Detach from the IOLoop: unregister everything; the IOLoop keeps running."""
        if self.is_closed():
            return
        try:
            super().close()  # re-raises an interrupt that nobody consumed
        finally:
            if _attached.get(self.io_loop) is self:
                del _attached[self.io_loop]

    def submit(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``coro`` as a task of this loop; return a future of the IOLoop's own loop.

        Await the result from Tornado code (a handler, ``IOLoop.run_sync``...);
        cancelling that future cancels the task.
        """
        outer: asyncio.Future[T] = self._tornado_driver.native_loop.create_future()
        relay(self.create_task(coro), outer)
        return outer


def attach(io_loop: IOLoop | None = None) -> AttachedEventLoop:
    """Return the protoshim loop attached to ``io_loop``, creating it on first use.

    ``io_loop`` defaults to ``IOLoop.current()``; call this on the IOLoop's
    thread, from code it runs.  There is one attached loop per IOLoop until
    that loop is closed.
    """
    if io_loop is None:
        io_loop = IOLoop.current()
    for stale in [key for key, loop in _attached.items() if loop.is_closed()]:
        del _attached[stale]
    loop = _attached.get(io_loop)
    if loop is None:
        driver = TornadoDriver(io_loop, owned=False)
        loop = AttachedEventLoop(driver)
        _attached[io_loop] = loop
    return loop


class ProtocolServer:
    """Serve a PEP 3156 protocol factory from a Tornado application.

    Use it like Tornado's ``TCPServer``: ``listen(port)``, ``add_sockets``
    (``tornado.netutil.bind_sockets`` or ``bind_unix_socket``),
    ``add_socket``, ``stop()``.  Connections are accepted on the loop
    :func:`attach` gives for the current IOLoop, as that loop's own servers
    accept them, and ``protocol_factory`` is called with that loop running.

    TLS is asyncio's own (pass an ``ssl.SSLContext`` as ``ssl``), not
    Tornado's ``ssl_options``, so that ``start_tls``, half-close and the
    handshake and shutdown timeouts behave as on asyncio.
    """

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        ssl: ssl_module.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> None:
        self._protocol_factory = protocol_factory
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._listeners: dict[socket.socket, Listener] = {}

    def listen(self, port: int, address: str | None = None, **kwargs: Any) -> None:
        """Accept on ``port``, as ``TCPServer.listen``: ``kwargs`` go to ``bind_sockets``."""
        self.add_sockets(bind_sockets(port, address, **kwargs))

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Accept on listening sockets; :meth:`stop` closes them."""
        loop = attach()
        serve = functools.partial(self._serve, loop)
        for sock in sockets:
            sock.setblocking(False)
            self._listeners[sock] = loop.driver.listen(sock, _ACCEPT_BATCH, serve)

    def add_socket(self, sock: socket.socket) -> None:
        """Accept on one listening socket."""
        self.add_sockets([sock])

    def _serve(self, loop: AttachedEventLoop, stream: Stream) -> None:
        loop.serve_stream(
            stream,
            self._protocol_factory,
            ssl=self._ssl,
            ssl_handshake_timeout=self._ssl_handshake_timeout,
            ssl_shutdown_timeout=self._ssl_shutdown_timeout,
        )

    def stop(self) -> None:
        """Stop accepting and close the sockets; established connections stay."""
        listeners, self._listeners = self._listeners, {}
        for sock, listener in listeners.items():
            listener.close()
            sock.close()
