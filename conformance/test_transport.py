"""The stream transport rules, one rule per test (TCP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from protoshim.conformance._helpers import (
    Pair,
    Recorder,
    close_and_wait,
    extra,
    fill_write_buffer,
    settle,
    short_tmpdir,
    tcp_pair,
    wait,
    wait_until,
)
from protoshim.conformance.plugin import RunCoroutine

pytestmark = pytest.mark.requires("tcp")

CONNLOST_WARNING = "socket.send() raised exception."


class KeepOpen(Recorder):
    """Return True from eof_received."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, keep_open_on_eof=True)


class PauseOnMade(Recorder):
    """Pause reading inside connection_made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.tr.pause_reading()


class SendOnMade(Recorder):
    """Write as early as possible: inside connection_made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.tr.write(b"early")


class RaiseOnMade(Recorder):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        raise RuntimeError("connection_made failed on purpose")


class RaiseOnData(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        raise RuntimeError("data_received failed on purpose")


# -- connection life cycle ---------------------------------------------------


def test_connection_made_comes_before_data(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop, client_protocol=SendOnMade) as pair:
            assert await pair.peer.received(5) == b"early"
            assert pair.peer.events[:2] == ["made", "data"]

    run(main())


def test_create_connection_returns_before_data_received(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    # Data already waiting on the socket is delivered after the task awaiting
    # create_connection() has resumed: a protocol may use what it returned.
    async def main() -> None:
        ours, theirs = socket.socketpair()
        returned: list[bool] = []
        seen: list[bool] = []

        class Client(Recorder):
            def data_received(self, data: bytes) -> None:
                seen.append(bool(returned))
                super().data_received(data)

        try:
            theirs.sendall(b"waiting")
            _, client = await loop.create_connection(lambda: Client(loop), sock=ours)
            returned.append(True)
            assert await client.received(7) == b"waiting"
            assert seen and all(seen), "data_received ran before create_connection() returned"
            await close_and_wait(client)
        finally:
            theirs.close()

    run(main())


@pytest.mark.parametrize("size", [7, 65536])
def test_eof_behind_data_is_read_in_a_later_iteration(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, size: int
) -> None:
    # asyncio reads a socket once per iteration, so an EOF that arrived with
    # the data reaches eof_received after the callbacks data_received
    # scheduled (TLS relies on it: its close runs an iteration after the
    # data, and create_connection() returns before that).
    async def main() -> None:
        ours, theirs = socket.socketpair()

        class Client(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                self.loop.call_soon(self.events.append, "soon")

        try:
            theirs.sendall(b"x" * size)
            theirs.close()
            _, client = await loop.create_connection(lambda: Client(loop), sock=ours)
            await wait(asyncio.shield(client.lost), "connection_lost")
            events = client.events
            assert len(client.data) == size
            eof = events.index("eof")
            last_data = max(i for i, event in enumerate(events[:eof]) if event == "data")
            assert "soon" in events[last_data:eof], events
        finally:
            theirs.close()

    run(main())


def test_pause_reading_inside_connection_made_is_honoured(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    # Reading must start only after connection_made has returned, so a pause
    # made inside it holds even against data sent at once (CPython gh-76002).
    async def main() -> None:
        async with tcp_pair(loop, server_protocol=PauseOnMade, client_protocol=SendOnMade) as pair:
            await settle()
            assert pair.peer.events == ["made"]
            assert not pair.peer.tr.is_reading()
            pair.peer.tr.resume_reading()
            assert await pair.peer.received(5) == b"early"

    run(main())


def test_connection_lost_once_even_if_connection_made_raised(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, expect_exceptions: list[dict[str, Any]]
) -> None:
    async def main() -> None:
        async with tcp_pair(loop, server_protocol=RaiseOnMade) as pair:
            await wait_until(lambda: expect_exceptions, "the exception handler")
            exc = expect_exceptions[0].get("exception")
            assert isinstance(exc, RuntimeError)
            assert str(exc) == "connection_made failed on purpose"
            pair.peer.tr.close()
            await wait(asyncio.shield(pair.peer.lost), "server-side connection_lost")
            await settle()
            assert pair.peer.lost_calls == 1
            assert pair.peer.events.count("lost") == 1
        assert len(expect_exceptions) == 1

    run(main())


def test_connection_lost_once_after_close_and_abort(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            pair.client.tr.close()
            pair.client.tr.close()
            pair.client.tr.abort()
            assert await wait(asyncio.shield(pair.client.lost), "connection_lost") is None
            await wait(asyncio.shield(pair.peer.lost), "server-side connection_lost")
            await settle()
            assert pair.client.lost_calls == 1
            assert pair.peer.lost_calls == 1

    run(main())


def test_eof_received_true_keeps_write_side_open(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop, server_protocol=KeepOpen) as pair:
            pair.client.tr.write(b"ping")
            pair.client.tr.write_eof()
            await wait(asyncio.shield(pair.peer.eof), "EOF at the server")
            await settle()
            assert not pair.peer.lost.done()
            assert not pair.peer.tr.is_closing()
            pair.peer.tr.write(b"pong")
            pair.peer.tr.close()
            assert await pair.client.received(4) == b"pong"
            await wait(asyncio.shield(pair.client.eof), "EOF at the client")
            assert await wait(asyncio.shield(pair.peer.lost), "server connection_lost") is None
            assert bytes(pair.peer.data) == b"ping"

    run(main())


def test_eof_received_falsy_closes_transport(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            pair.client.tr.write_eof()
            assert await wait(asyncio.shield(pair.peer.lost), "server connection_lost") is None
            assert pair.peer.events == ["made", "eof", "lost"]
            # the server closed, so the client sees EOF in turn
            await wait(asyncio.shield(pair.client.eof), "EOF at the client")

    run(main())


# -- close, abort, write_eof -------------------------------------------------


async def _buffered_writer(pair: Pair) -> int:
    """Make the server's transport hold data of its own; return total bytes written."""
    pair.client.tr.pause_reading()
    written = fill_write_buffer(pair.peer.tr)
    pair.peer.tr.write(b"y" * 1024 * 1024)
    written += 1024 * 1024
    assert pair.peer.tr.get_write_buffer_size() > 0
    return written


def test_close_flushes_buffer_before_closing(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            total = await _buffered_writer(pair)
            pair.peer.tr.close()
            assert pair.peer.tr.is_closing()
            await settle()
            assert not pair.peer.lost.done(), "connection_lost before the buffer was sent"
            pair.client.tr.resume_reading()
            data = await pair.client.received(total, f"all {total} bytes")
            await wait(asyncio.shield(pair.client.eof), "EOF after the data")
            assert len(data) == total
            assert data.endswith(b"y" * 1024 * 1024)
            assert data.count(b"x") == total - 1024 * 1024
            assert await wait(asyncio.shield(pair.peer.lost), "connection_lost") is None

    run(main(), timeout=20)


def test_abort_drops_buffer(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            total = await _buffered_writer(pair)
            pair.peer.tr.abort()
            assert pair.peer.tr.is_closing()
            assert await wait(asyncio.shield(pair.peer.lost), "connection_lost") is None
            pair.client.tr.resume_reading()
            await wait(asyncio.shield(pair.client.lost), "the client to see the end")
            assert len(pair.client.data) < total

    run(main(), timeout=20)


def test_write_eof_waits_for_buffer_to_drain(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop, server_protocol=KeepOpen) as pair:
            pair.peer.tr.pause_reading()
            total = fill_write_buffer(pair.client.tr)
            pair.client.tr.write(b"end")
            total += 3
            pair.client.tr.write_eof()
            assert pair.client.tr.get_write_buffer_size() > 0
            await settle()
            assert "eof" not in pair.peer.events
            pair.peer.tr.resume_reading()
            data = await pair.peer.received(total, f"all {total} bytes before EOF")
            await wait(asyncio.shield(pair.peer.eof), "EOF after the data")
            assert len(data) == total
            assert data.endswith(b"end")
            assert pair.peer.events[-1] == "eof"

    run(main(), timeout=20)


def test_write_eof_is_idempotent_and_blocks_writes(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop, server_protocol=KeepOpen) as pair:
            assert pair.client.tr.can_write_eof() is True
            pair.client.tr.write(b"data")
            pair.client.tr.write_eof()
            pair.client.tr.write_eof()
            with pytest.raises(RuntimeError):
                pair.client.tr.write(b"more")
            await wait(asyncio.shield(pair.peer.eof), "EOF at the server")
            assert bytes(pair.peer.data) == b"data"
            # the read side stays open after write_eof
            pair.peer.tr.write(b"reply")
            assert await pair.client.received(5) == b"reply"

    run(main())


def test_writes_after_close_are_dropped(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            pair.client.tr.write(b"before")
            pair.client.tr.close()
            for _ in range(3):
                pair.client.tr.write(b"late")  # no exception: silently dropped
            await wait(asyncio.shield(pair.peer.lost), "server connection_lost")
            assert bytes(pair.peer.data) == b"before"

    run(main())


def test_writes_after_close_are_sent_while_the_buffer_drains(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    # close() only ends the connection once the buffer is empty; until then
    # the connection is alive and a write joins the queue, as in asyncio.
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            total = await _buffered_writer(pair)
            pair.peer.tr.close()
            pair.peer.tr.write(b"tail")
            pair.client.tr.resume_reading()
            data = await pair.client.received(total + 4, f"all {total + 4} bytes")
            assert len(data) == total + 4
            assert data.endswith(b"tail")
            assert await wait(asyncio.shield(pair.peer.lost), "connection_lost") is None

    run(main(), timeout=20)


def test_fifth_write_after_close_logs_a_warning(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            pair.client.tr.close()
            with caplog.at_level(logging.WARNING):
                for _ in range(4):
                    pair.client.tr.write(b"late")
                assert not _warned(caplog)
                pair.client.tr.write(b"late")
                assert _warned(caplog), "no warning after 5 writes to a closed transport"

    run(main())


def _warned(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.getMessage() == CONNLOST_WARNING for r in caplog.records)


def test_write_str_raises_type_error(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            with pytest.raises(TypeError):
                pair.client.tr.write("text")  # type: ignore[arg-type]
            pair.client.tr.write(b"still usable")
            assert await pair.peer.received(12) == b"still usable"

    run(main())


def test_data_received_exception_reaches_handler_and_closes(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, expect_exceptions: list[dict[str, Any]]
) -> None:
    async def main() -> None:
        async with tcp_pair(loop, server_protocol=RaiseOnData) as pair:
            pair.client.tr.write(b"trigger")
            await wait(asyncio.shield(pair.peer.lost), "connection_lost after the error")
            await wait_until(lambda: expect_exceptions, "the exception handler")
            exc = expect_exceptions[0].get("exception")
            assert isinstance(exc, RuntimeError)
            assert str(exc) == "data_received failed on purpose"
            assert pair.peer.lost.result() is exc
            await settle()
            assert pair.peer.lost_calls == 1
        assert len(expect_exceptions) == 1

    run(main())


# -- extra info and types ----------------------------------------------------


def test_extra_info_socket_and_addresses(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            client, server = pair.client.tr, pair.peer.tr
            listening = pair.server.sockets[0].getsockname()
            assert extra(client, "peername") == listening
            assert extra(server, "sockname") == listening
            assert extra(server, "peername") == extra(client, "sockname")
            sock = extra(client, "socket")
            assert sock.getsockname() == extra(client, "sockname")
            assert sock.type == socket.SOCK_STREAM
            names = (extra(client, "sockname"), extra(client, "peername"))
            client.close()
            await wait(asyncio.shield(pair.client.lost), "connection_lost")
            # still answered after the connection is gone
            assert (extra(client, "sockname"), extra(client, "peername")) == names
            assert client.get_extra_info("socket") is not None

    run(main())


def test_tcp_nodelay_is_on(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            for transport in (pair.client.tr, pair.peer.tr):
                sock = extra(transport, "socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

    run(main())


def test_transport_is_asyncio_transport(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            for transport in (pair.client.tr, pair.peer.tr):
                assert isinstance(transport, asyncio.Transport)

    run(main())


@pytest.mark.requires("unix")
def test_unix_transport_is_asyncio_transport(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        with short_tmpdir() as directory:
            path = f"{directory}/s"
            accepted: list[Recorder] = []

            def factory() -> Recorder:
                accepted.append(Recorder(loop))
                return accepted[-1]

            server = await loop.create_unix_server(factory, path)
            client = None
            try:
                _, client = await loop.create_unix_connection(lambda: Recorder(loop), path)
                await wait_until(lambda: accepted and accepted[0].transport, "the server side")
                for protocol in (client, accepted[0]):
                    assert isinstance(protocol.tr, asyncio.Transport)
            finally:
                server.close()
                await close_and_wait(*([client] if client else []), *accepted)
                await server.wait_closed()

    run(main())


def test_set_protocol_and_get_protocol(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            assert pair.peer.tr.get_protocol() is pair.peer
            replacement = Recorder(loop)
            replacement.transport = pair.peer.tr
            pair.peer.tr.set_protocol(replacement)
            assert pair.peer.tr.get_protocol() is replacement
            pair.client.tr.write(b"for the new protocol")
            assert await replacement.received(20) == b"for the new protocol"
            assert bytes(pair.peer.data) == b""
            pair.client.tr.close()
            await wait(asyncio.shield(replacement.lost), "connection_lost on the new protocol")
            assert not pair.peer.lost.done()
            pair.accepted[0] = replacement  # so the cleanup waits on the right one

    run(main())


def test_is_closing(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            assert not pair.client.tr.is_closing()
            assert not pair.peer.tr.is_closing()
            pair.client.tr.close()
            assert pair.client.tr.is_closing()
            # the peer's transport closes on EOF (eof_received returned None)
            await wait(asyncio.shield(pair.peer.lost), "server connection_lost")
            assert pair.peer.tr.is_closing()

    run(main())
