"""The echo protocols, on the reference loop and on protoshim's core."""

from __future__ import annotations

import asyncio

import pytest

import protoshim
from protoshim.protocols.echo import DatagramEcho, EchoClient, EchoServer, ping_pong

FRAMEWORKS = ["asyncio", "selectors"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("size", [1, 100, 256 * 1024])
def test_ping_pong_completes_every_round(framework: str, size: int) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoServer, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await asyncio.wait_for(ping_pong("127.0.0.1", port, b"x" * size, 20), 30)

    assert protoshim.run(main(), framework=framework) == 20


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_echo_server_flushes_before_honouring_half_close(framework: str) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoServer, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"a" * 1_000_000)
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 30)  # reads to EOF
            writer.close()
            await writer.wait_closed()
            return data

    assert protoshim.run(main(), framework=framework) == b"a" * 1_000_000


def test_echo_client_rejects_an_empty_message() -> None:
    async def main() -> None:
        EchoClient(b"", 1)

    with pytest.raises(ValueError, match="must not be empty"):
        protoshim.run(main())


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_datagram_echo_answers_the_sender(framework: str) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(
            DatagramEcho, local_addr=("127.0.0.1", 0)
        )
        got: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                got.set_result(data)

        client, _ = await loop.create_datagram_endpoint(
            Client, remote_addr=server.get_extra_info("sockname")
        )
        try:
            client.sendto(b"marco")
            return await asyncio.wait_for(got, 10)
        finally:
            client.close()
            server.close()
            await asyncio.sleep(0)

    assert protoshim.run(main(), framework=framework) == b"marco"
