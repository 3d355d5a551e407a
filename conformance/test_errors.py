"""Exceptions that escape callbacks, and failures injected into serving.

One rule, as on the stdlib loop: an ``Exception`` from a callback reaches
the loop's exception handler and the loop goes on; KeyboardInterrupt and
SystemExit leave ``run_until_complete``, and so does what a ``signal.signal``
handler raises while the loop waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import resource
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any, TypeVar, cast

import pytest

from protoshim.conformance._helpers import settle, wait, wait_until
from protoshim.conformance.plugin import RunCoroutine

Context = dict[str, Any]
E = TypeVar("E", bound=BaseException)


class Echo(asyncio.Protocol):
    """Echo every byte back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def echo_once(port: int) -> bytes:
    """Connect, send one message and return what comes back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"ping")
        return await wait(reader.readexactly(4), "the echo")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def exceptions_of(contexts: list[Context], kind: type[E]) -> list[E]:
    """Return the exceptions of ``kind`` that the exception handler received."""
    return [c["exception"] for c in contexts if isinstance(c.get("exception"), kind)]


# -- accept errors ---------------------------------------------------------------


@contextlib.contextmanager
def failing_accepts(errnos: list[int]) -> Iterator[list[int]]:
    """Make the next ``socket.accept()`` calls fail with ``errnos``, in order.

    Yields the errnos not yet raised, so a test can tell whether the loop
    accepts through ``socket.accept`` at all.
    """
    pending = list(errnos)
    original = socket.socket.accept

    def accept(self: socket.socket) -> tuple[socket.socket, Any]:
        if pending:
            code = pending.pop(0)
            raise OSError(code, os.strerror(code))
        return original(self)

    socket.socket.accept = accept  # type: ignore[method-assign]
    try:
        yield pending
    finally:
        socket.socket.accept = original  # type: ignore[method-assign]


@pytest.mark.requires("tcp")
@pytest.mark.parametrize("code", [errno.EPROTO, errno.EPERM], ids=["EPROTO", "EPERM"])
def test_accept_error_reaches_the_handler_and_serving_goes_on(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    expect_exceptions: list[Context],
    code: int,
) -> None:
    async def main() -> None:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with failing_accepts([code]) as pending:
                assert await echo_once(port) == b"ping"
                if pending:
                    pytest.skip("this loop accepts without calling socket.accept()")
            await wait_until(lambda: expect_exceptions, "the exception handler")
            (exc,) = exceptions_of(expect_exceptions, OSError)
            assert exc.errno == code
            assert loop.is_running()
            assert await echo_once(port) == b"ping"
        finally:
            server.close()
            await server.wait_closed()

    run(main())


@pytest.mark.requires("tcp")
def test_connection_aborted_before_accept_is_ignored(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with failing_accepts([errno.ECONNABORTED]) as pending:
                assert await echo_once(port) == b"ping"
                if pending:
                    pytest.skip("this loop accepts without calling socket.accept()")
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def _lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


@pytest.mark.requires("tcp")
def test_out_of_descriptors_pauses_accepting_then_serves(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, expect_exceptions: list[Context]
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main() -> None:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            client = socket.create_connection(("127.0.0.1", port))
            client.setblocking(False)
            try:
                # The pending connection cannot be accepted: no descriptor is free.
                resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(), hard))
                try:
                    await wait_until(lambda: expect_exceptions, "the exception handler")
                    await settle()
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                errors = exceptions_of(expect_exceptions, OSError)
                assert errors
                assert {exc.errno for exc in errors} == {errno.EMFILE}
                # Accepting resumes by itself, and serves the waiting connection.
                await loop.sock_sendall(client, b"ping")
                assert await wait(loop.sock_recv(client, 4), "the echo") == b"ping"
            finally:
                client.close()
            assert await echo_once(port) == b"ping"
        finally:
            server.close()
            await server.wait_closed()

    try:
        run(main())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- exceptions from callbacks -----------------------------------------------------


class RaiseOnData(Echo):
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        raise self.exc

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


@pytest.mark.requires("tcp")
def test_raising_data_received_closes_the_transport_and_the_loop_goes_on(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, expect_exceptions: list[Context]
) -> None:
    async def main() -> None:
        protocols: list[RaiseOnData] = []

        def factory() -> RaiseOnData:
            protocols.append(RaiseOnData(ZeroDivisionError("from data_received")))
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"boom")
            assert await wait(reader.read(), "the server's close") == b""
            writer.close()
            await writer.wait_closed()
            lost = await wait(protocols[0].lost, "connection_lost")
            assert isinstance(lost, ZeroDivisionError)
            (context,) = expect_exceptions
            assert context["message"] == "Fatal error: protocol.data_received() call failed."
            assert isinstance(context["exception"], ZeroDivisionError)
        finally:
            server.close()
            await server.wait_closed()

    run(main())


@pytest.mark.requires("fd_watchers")
def test_raising_reader_callback_reaches_the_handler_and_the_loop_goes_on(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, expect_exceptions: list[Context]
) -> None:
    async def main() -> None:
        rsock, wsock = socket.socketpair()
        calls: list[int] = []

        def reader() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise ZeroDivisionError("from a reader")
            rsock.recv(16)

        try:
            loop.add_reader(rsock, reader)
            wsock.send(b"x")
            # Still readable after the failure: asyncio calls the reader again.
            await wait_until(lambda: len(calls) >= 2, "the reader, a second time")
            loop.remove_reader(rsock)
        finally:
            rsock.close()
            wsock.close()
        (exc,) = exceptions_of(expect_exceptions, BaseException)
        assert isinstance(exc, ZeroDivisionError)

    run(main())


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_exit_from_a_callback_leaves_run_until_complete(
    loop: asyncio.AbstractEventLoop, kind: type[BaseException]
) -> None:
    def leave() -> None:
        raise kind("from a callback")

    async def main() -> None:
        loop.call_soon(leave)
        await asyncio.sleep(5)

    task = loop.create_task(main())
    with pytest.raises(kind, match="from a callback"):
        loop.run_until_complete(task)
    # The loop can run again afterwards.
    assert loop.run_until_complete(asyncio.sleep(0.01, "again")) == "again"
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))


@pytest.mark.requires("fd_watchers")
@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_exit_from_an_io_callback_leaves_run_until_complete(
    loop: asyncio.AbstractEventLoop, kind: type[BaseException]
) -> None:
    rsock, wsock = socket.socketpair()

    def leave() -> None:
        loop.remove_reader(rsock)
        raise kind("from a reader")

    try:
        loop.add_reader(rsock, leave)
        wsock.send(b"x")
        with pytest.raises(kind, match="from a reader"):
            loop.run_until_complete(asyncio.sleep(5))
        assert loop.run_until_complete(asyncio.sleep(0.01, "again")) == "again"
    finally:
        rsock.close()
        wsock.close()


@pytest.mark.requires("tcp")
@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_exit_from_data_received_leaves_run_until_complete(
    loop: asyncio.AbstractEventLoop, kind: type[BaseException]
) -> None:
    async def serve() -> tuple[asyncio.Server, socket.socket]:
        server = await loop.create_server(
            lambda: RaiseOnData(kind("from data_received")), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        return server, client

    server, client = loop.run_until_complete(serve())
    try:
        client.sendall(b"boom")
        with pytest.raises(kind, match="from data_received"):
            loop.run_until_complete(asyncio.sleep(5))
    finally:
        client.close()
        server.close()
        loop.run_until_complete(server.wait_closed())


# -- while the loop waits ----------------------------------------------------------


class Interrupted(Exception):
    """Raised by the test's SIGALRM handler."""


@pytest.mark.requires("signals")
def test_signal_handler_exception_leaves_run_until_complete(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # What pytest-timeout's handler does: a plain signal.signal handler that
    # raises while the loop is waiting for I/O.
    def handler(signum: int, frame: object) -> None:
        raise Interrupted("from a signal handler")

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            loop.run_until_complete(asyncio.sleep(5))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.requires("threads")
@pytest.mark.parametrize("how", ["call_later", "sleep"])
def test_a_timer_at_infinity_as_the_earliest_timer(
    loop: asyncio.AbstractEventLoop, how: str
) -> None:
    ran: list[str] = []
    if how == "call_later":
        never = loop.call_later(math.inf, ran.append, "infinity")
        task = None
    else:
        task = loop.create_task(asyncio.sleep(math.inf))
    stopper = threading.Timer(0.1, loop.call_soon_threadsafe, (loop.stop,))
    stopper.start()
    try:
        # Nothing else is scheduled: the loop waits on the infinite timer.
        loop.run_forever()
    finally:
        stopper.join()
    assert ran == []
    if task is None:
        never.cancel()
    else:
        assert not task.done()
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
