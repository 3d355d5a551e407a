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
import ssl as ssl_module
import threading
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from ..._loop import EventLoop
from ._iostream import PausingTCPServer, TornadoStream, adopt
from ._loop import TornadoDriver

__all__ = ["AttachedEventLoop", "ProtocolServer", "attach"]

T = TypeVar("T")

_attached: dict[IOLoop, AttachedEventLoop] = {}


class AttachedEventLoop(EventLoop):
    """A protoshim loop that runs on an IOLoop someone else runs.

    It counts as running from creation until :meth:`close`: ``run_forever``
    and ``run_until_complete`` raise, as on any running loop, and
    :meth:`stop` has no run to end.  From Tornado code, use :meth:`submit`
    to run a coroutine on it and await the result.
    """

    def __init__(self, driver: TornadoDriver) -> None:
        super().__init__(driver)
        self._tornado_driver = driver
        # BaseEventLoop.is_running() is "has a thread"; the IOLoop's thread runs it.
        self._thread_id = threading.get_ident()

    @property
    def io_loop(self) -> IOLoop:
        """The Tornado IOLoop this loop is attached to."""
        return self._tornado_driver.io_loop

    def stop(self) -> None:
        """Do nothing: the loop runs for as long as its IOLoop; :meth:`close` detaches it."""

    def _exit_with(self, exc: BaseException) -> NoReturn:
        # No run_forever of ours carries it out: raise it into the IOLoop's
        # callback, whose asyncio loop re-raises KeyboardInterrupt/SystemExit.
        raise exc

    def close(self) -> None:
        """Detach from the IOLoop: unregister everything; the IOLoop keeps running."""
        if self.is_closed():
            return
        self._thread_id = None  # type: ignore[assignment]  # "not running", as BaseEventLoop uses it
        super().close()
        if _attached.get(self.io_loop) is self:
            del _attached[self.io_loop]

    def submit(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``coro`` as a task of this loop; return a future of the IOLoop's own loop.

        Await the result from Tornado code (a handler, ``IOLoop.run_sync``...);
        cancelling that future cancels the task.
        """
        outer: asyncio.Future[T] = self._tornado_driver.native_loop.create_future()
        task = self.create_task(coro)

        def task_done(task: asyncio.Task[T]) -> None:
            if outer.done():
                return
            if task.cancelled():
                outer.cancel()
            elif (exc := task.exception()) is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(task.result())

        def outer_done(outer: asyncio.Future[T]) -> None:
            if outer.cancelled():
                task.cancel()

        task.add_done_callback(task_done)
        outer.add_done_callback(outer_done)
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


class ProtocolServer(PausingTCPServer):
    """A ``TCPServer`` that serves a PEP 3156 protocol factory.

    Use it like Tornado's ``HTTPServer``: ``listen(port)``, ``add_sockets``
    (``tornado.netutil.bind_sockets`` or ``bind_unix_socket``), ``stop()``.
    Each accepted ``IOStream`` becomes an asyncio transport on the loop
    :func:`attach` gives for the IOLoop, and ``protocol_factory`` is called
    with that loop running.

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
        max_buffer_size: int | None = None,
        read_chunk_size: int | None = None,
    ) -> None:
        super().__init__(max_buffer_size=max_buffer_size, read_chunk_size=read_chunk_size)
        self._protocol_factory = protocol_factory
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        loop = attach(stream.io_loop)
        driver = loop._tornado_driver
        driver.in_protoshim(self._serve, loop, TornadoStream(driver, adopt(stream)))

    def _serve(self, loop: AttachedEventLoop, stream: TornadoStream) -> None:
        # The same steps as core's own accept path (EventLoop._start_serving).
        try:
            protocol = self._protocol_factory()
        except (SystemExit, KeyboardInterrupt):
            stream.abort()
            raise
        except BaseException as exc:
            stream.abort()
            loop.call_exception_handler(
                {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                    "socket": stream.socket(),
                }
            )
            return
        if self._ssl is None:
            loop._stream_transport(stream, protocol, None, None, None)
            return
        waiter = loop.create_future()
        transport = loop._ssl_transport(
            stream,
            protocol,
            self._ssl,
            waiter,
            server_side=True,
            server_hostname=None,
            extra=None,
            server=None,
            ssl_handshake_timeout=self._ssl_handshake_timeout,
            ssl_shutdown_timeout=self._ssl_shutdown_timeout,
        )
        waiter.add_done_callback(functools.partial(loop._handshake_done, transport))
