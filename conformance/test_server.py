"""create_server options and the Server object's life cycle."""

from __future__ import annotations

import asyncio
import socket

import pytest

from protoshim.conformance._helpers import Recorder, close_and_wait, wait, wait_until
from protoshim.conformance.plugin import RunCoroutine

pytestmark = pytest.mark.requires("tcp")


async def _connect_once(loop: asyncio.AbstractEventLoop, port: int) -> None:
    """Connect to 127.0.0.1:port and exchange nothing; close both ends cleanly."""
    transport, client = await wait(
        loop.create_connection(lambda: Recorder(loop), "127.0.0.1", port), "create_connection"
    )
    transport.close()
    await wait(asyncio.shield(client.lost), "client connection_lost")


class _Accepted:
    """A protocol factory that remembers every server-side protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocols: list[Recorder] = []

    def __call__(self) -> Recorder:
        self.protocols.append(Recorder(self.loop))
        return self.protocols[-1]

    async def count(self, expected: int) -> int:
        await wait_until(lambda: len(self.protocols) >= expected, f"{expected} accepted")
        await wait_until(lambda: all(p.transport for p in self.protocols), "connection_made")
        return len(self.protocols)

    async def close_all(self) -> None:
        await self.count(len(self.protocols))
        await close_and_wait(*self.protocols)


def test_create_server_on_a_prebound_socket(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        address = sock.getsockname()
        accepted = _Accepted(loop)
        server = await loop.create_server(accepted, sock=sock)
        try:
            assert [s.getsockname() for s in server.sockets] == [address]
            await _connect_once(loop, address[1])
            assert await accepted.count(1) == 1
        finally:
            server.close()
            await accepted.close_all()
            await server.wait_closed()

    run(main())


@pytest.mark.requires("reuse_port")
def test_create_server_reuse_port_lets_two_servers_share_a_port(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        first = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
        second = None
        try:
            port = first.sockets[0].getsockname()[1]
            assert first.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            accepted = _Accepted(loop)
            second = await loop.create_server(accepted, "127.0.0.1", port, reuse_port=True)
            assert second.sockets[0].getsockname()[1] == port
            first.close()
            await first.wait_closed()
            await _connect_once(loop, port)  # only the second one is left to accept it
            assert await accepted.count(1) == 1
            await accepted.close_all()
        finally:
            first.close()
            if second is not None:
                second.close()
                await second.wait_closed()

    run(main())


def test_create_server_accepts_backlog(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        accepted = _Accepted(loop)
        server = await loop.create_server(accepted, "127.0.0.1", 0, backlog=3)
        try:
            port = server.sockets[0].getsockname()[1]
            for _ in range(3):
                await _connect_once(loop, port)
            assert await accepted.count(3) == 3
        finally:
            server.close()
            await accepted.close_all()
            await server.wait_closed()

    run(main())


def test_server_close_stops_serving(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        assert server.is_serving()
        assert server.get_loop() is loop
        server.close()
        assert not server.is_serving()
        await wait(server.wait_closed(), "Server.wait_closed()")
        with pytest.raises(OSError):
            transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            transport.close()  # only reached if the closed server still accepted

    run(main())


def test_start_serving_false_then_start_serving(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        accepted = _Accepted(loop)
        server = await loop.create_server(accepted, "127.0.0.1", 0, start_serving=False)
        try:
            assert not server.is_serving()
            await server.start_serving()
            assert server.is_serving()
            await _connect_once(loop, server.sockets[0].getsockname()[1])
            assert await accepted.count(1) == 1
        finally:
            server.close()
            await accepted.close_all()
            await server.wait_closed()

    run(main())


def test_server_as_async_context_manager_closes(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        async with server:
            assert server.is_serving()
        assert not server.is_serving()
        await server.wait_closed()

    run(main())


def test_server_sockets_report_the_bound_address(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        try:
            (sock,) = server.sockets
            host, port = sock.getsockname()
            assert host == "127.0.0.1"
            assert port > 0
            assert sock.family == socket.AF_INET
            assert sock.type == socket.SOCK_STREAM
        finally:
            server.close()
            await server.wait_closed()

    run(main())
