"""Datagram endpoints: echo, unconnected sendto, error_received, transport type."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest

from protoshim.conformance._helpers import Datagrams, extra, settle, wait
from protoshim.conformance.plugin import RunCoroutine

pytestmark = pytest.mark.requires("udp")


class Echo(Datagrams):
    """Send every datagram back to its sender."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        super().datagram_received(data, addr)
        assert self.transport is not None
        self.transport.sendto(data, addr)


Endpoint = tuple[asyncio.DatagramTransport, Datagrams]


async def _endpoint(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[asyncio.AbstractEventLoop], Datagrams] = Datagrams,
    **kwargs: Any,
) -> Endpoint:
    transport, protocol = await wait(
        loop.create_datagram_endpoint(lambda: factory(loop), **kwargs),
        "create_datagram_endpoint",
    )
    return transport, protocol


async def _close(*pairs: Endpoint) -> None:
    for transport, _ in pairs:
        transport.close()
    for _, protocol in pairs:
        await wait(asyncio.shield(protocol.lost), "datagram connection_lost")


def test_udp_echo_with_connected_client(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        server = await _endpoint(loop, Echo, local_addr=("127.0.0.1", 0))
        server_addr = server[0].get_extra_info("sockname")
        client = await _endpoint(loop, remote_addr=server_addr)
        try:
            client[0].sendto(b"ping")
            data, addr = await wait(client[1].datagrams.get(), "the echoed datagram")
            assert data == b"ping"
            assert addr == server_addr
            received, sender = server[1].datagrams.get_nowait()
            assert received == b"ping"
            assert sender == client[0].get_extra_info("sockname")
        finally:
            await _close(server, client)

    run(main())


def test_udp_sendto_from_unconnected_endpoint(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        server = await _endpoint(loop, Echo, local_addr=("127.0.0.1", 0))
        client = await _endpoint(loop, local_addr=("127.0.0.1", 0))
        try:
            server_addr = server[0].get_extra_info("sockname")
            for i in range(3):
                client[0].sendto(b"n%d" % i, server_addr)
            got = {(await wait(client[1].datagrams.get(), "echo"))[0] for _ in range(3)}
            assert got == {b"n0", b"n1", b"n2"}
        finally:
            await _close(server, client)

    run(main())


def test_error_received_on_connected_udp_to_closed_port(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        # A port that was just free: nothing listens there now.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            closed_addr = probe.getsockname()
        client = await _endpoint(loop, remote_addr=closed_addr)
        try:
            # The ICMP error arrives asynchronously; send until it is reported.
            for _ in range(50):
                client[0].sendto(b"anyone?")
                try:
                    error = await asyncio.wait_for(client[1].errors.get(), 0.1)
                except TimeoutError:
                    continue
                break
            else:
                raise AssertionError("error_received was never called")
            assert isinstance(error, ConnectionRefusedError)
            assert not client[1].lost.done(), "an ICMP error must not close the endpoint"
        finally:
            await _close(client)

    run(main())


def test_datagram_transport_type(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    # CPython's datagram transport shares its base with the socket transports,
    # so it is an asyncio.Transport (CPython's own tests check this); from
    # 3.13 it is also an asyncio.DatagramTransport.
    async def main() -> None:
        transport, _ = endpoint = await _endpoint(loop, local_addr=("127.0.0.1", 0))
        try:
            assert isinstance(transport, asyncio.Transport)
            if sys.version_info >= (3, 13):
                assert isinstance(transport, asyncio.DatagramTransport)
            for method in ("sendto", "abort", "close", "is_closing", "get_extra_info"):
                assert callable(getattr(transport, method, None)), method
        finally:
            await _close(endpoint)

    run(main())


def test_datagram_extra_info(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        server = await _endpoint(loop, local_addr=("127.0.0.1", 0))
        server_addr = server[0].get_extra_info("sockname")
        client = await _endpoint(loop, remote_addr=server_addr)
        try:
            for transport, _ in (server, client):
                assert extra(transport, "socket").type == socket.SOCK_DGRAM
            assert extra(client[0], "peername") == server_addr
            assert extra(client[0], "socket").getsockname() == extra(client[0], "sockname")
        finally:
            await _close(server, client)

    run(main())


def test_datagram_close_calls_connection_lost_once(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        transport, protocol = await _endpoint(loop, local_addr=("127.0.0.1", 0))
        assert not transport.is_closing()
        transport.close()
        assert transport.is_closing()
        transport.close()
        assert await wait(asyncio.shield(protocol.lost), "connection_lost") is None
        await settle()
        assert protocol.lost_calls == 1

    run(main())
