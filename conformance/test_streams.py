"""Stream connections end to end: TCP over IPv4 and IPv6, Unix sockets, BufferedProtocol."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from protoshim.conformance._helpers import (
    Recorder,
    close_and_wait,
    ipv6_unavailable,
    short_tmpdir,
    tcp_pair,
    wait,
)
from protoshim.conformance.plugin import RunCoroutine

pytestmark = pytest.mark.requires("tcp")

PAYLOAD = os.urandom(256 * 1024)


class Echo(Recorder):
    """Send back everything received."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.tr.write(data)


async def _echo_round_trip(pair_client: Recorder) -> None:
    pair_client.tr.write(PAYLOAD)
    received = await pair_client.received(len(PAYLOAD), "the echo")
    assert received == PAYLOAD


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_tcp_echo(loop: asyncio.AbstractEventLoop, run: RunCoroutine, host: str) -> None:
    if host == "::1" and (reason := ipv6_unavailable()):
        pytest.skip(reason)

    async def main() -> None:
        async with tcp_pair(loop, host=host, server_protocol=Echo) as pair:
            await _echo_round_trip(pair.client)
            family = pair.client.tr.get_extra_info("socket").family
            assert family == (socket.AF_INET6 if host == "::1" else socket.AF_INET)

    run(main())


def test_tcp_client_close_reaches_server(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            pair.client.tr.write(b"last words")
            pair.client.tr.close()
            assert await wait(pair.client.lost, "client connection_lost") is None
            await wait(asyncio.shield(pair.peer.lost), "server connection_lost")
            assert bytes(pair.peer.data) == b"last words"
            assert pair.peer.events == ["made", "data", "eof", "lost"]

    run(main())


@pytest.mark.requires("unix")
def test_unix_echo(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        with short_tmpdir() as directory:
            path = os.path.join(directory, "s")
            accepted: list[Recorder] = []

            def factory() -> Recorder:
                accepted.append(Echo(loop))
                return accepted[-1]

            server = await loop.create_unix_server(factory, path)
            client = None
            try:
                assert server.sockets[0].family == socket.AF_UNIX
                _, client = await loop.create_unix_connection(lambda: Recorder(loop), path)
                assert client.tr.can_write_eof()
                await _echo_round_trip(client)
                client.tr.write_eof()
                await wait(asyncio.shield(accepted[0].eof), "EOF at the Unix server")
            finally:
                server.close()
                await close_and_wait(*([client] if client else []), *accepted)
                await server.wait_closed()

    run(main())


class Collect(asyncio.BufferedProtocol):
    """Receive into small buffers handed out by get_buffer()."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.buffer = bytearray(4096)
        self.received = bytearray()
        self.get_buffer_calls = 0
        self.done: asyncio.Future[bytes] = loop.create_future()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        self.get_buffer_calls += 1
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= len(self.buffer)
        self.received += self.buffer[:nbytes]

    def eof_received(self) -> None:
        self.done.set_result(bytes(self.received))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)
        if not self.done.done():
            self.done.set_exception(AssertionError(f"lost before EOF: {exc!r}"))


def test_buffered_protocol_receives_everything(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        server_side: list[Collect] = []

        def factory() -> Collect:
            server_side.append(Collect(loop))
            return server_side[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        client = None
        try:
            port = server.sockets[0].getsockname()[1]
            _, client = await loop.create_connection(lambda: Recorder(loop), "127.0.0.1", port)
            client.tr.write(PAYLOAD)
            client.tr.write_eof()
            received = await wait(server_side[0].done, "EOF at the BufferedProtocol")
            assert received == PAYLOAD
            # more than one buffer's worth arrived, so get_buffer was asked again
            assert server_side[0].get_buffer_calls >= len(PAYLOAD) // 4096
        finally:
            server.close()
            if client is not None:
                await close_and_wait(client)
            for collect in server_side:
                if collect.transport is not None:
                    collect.transport.close()
                    await wait(collect.lost, "server-side connection_lost")
            await server.wait_closed()

    run(main())


def test_writing_to_a_closed_peer_fails_within_the_high_water_mark(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    # A writer that loops on write() and drain() to a peer that has gone
    # (an FTP client on a dropped data connection) must see the failure:
    # the stdlib transport is closing as soon as a send fails, and drain()
    # yields while it is.  The loop is bounded, so a miss fails, not hangs.
    async def main() -> None:
        async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await wait(reader.read(), "the peer's EOF") == b""
            chunk = b"-" * 8192
            with pytest.raises(ConnectionError):
                # 64 KiB (the default high-water mark) many times over
                for _ in range(64):
                    writer.write(chunk)
                    await writer.drain()
            assert writer.transport.is_closing()
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main())
