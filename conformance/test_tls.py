"""TLS: servers, clients, start_tls upgrades and handshake failures (trustme certificates)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Awaitable
from typing import Any

import pytest

from protoshim.conformance._helpers import (
    Pair,
    Recorder,
    close_and_wait,
    extra,
    settle,
    tcp_pair,
    tls_material,
    wait,
    wait_until,
)
from protoshim.conformance.plugin import RunCoroutine, open_fds

pytestmark = pytest.mark.requires("tcp", "tls")

PAYLOAD = os.urandom(128 * 1024)


class Echo(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.tr.write(data)


def _tls_pair(
    loop: asyncio.AbstractEventLoop, **kwargs: Any
) -> contextlib.AbstractAsyncContextManager[Pair]:
    tls = tls_material()
    return tcp_pair(
        loop,
        server_ssl=tls.server,
        client_ssl=tls.client,
        server_hostname=tls.hostname,
        **kwargs,
    )


def _connect(
    loop: asyncio.AbstractEventLoop, port: int, context: ssl.SSLContext
) -> Awaitable[tuple[asyncio.Transport, Recorder]]:
    """Open a TLS client connection to the local test server."""
    return loop.create_connection(
        lambda: Recorder(loop),
        "127.0.0.1",
        port,
        ssl=context,
        server_hostname=tls_material().hostname,
    )


def test_tls_echo(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        async with _tls_pair(loop, server_protocol=Echo) as pair:
            pair.client.tr.write(PAYLOAD)
            assert await pair.client.received(len(PAYLOAD), "the TLS echo") == PAYLOAD
            pair.client.tr.close()
            assert await wait(asyncio.shield(pair.client.lost), "connection_lost") is None
            await wait(asyncio.shield(pair.peer.lost), "server-side connection_lost")

    run(main())


def test_tls_extra_info(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        tls = tls_material()
        async with _tls_pair(loop) as pair:
            client, server = pair.client.tr, pair.peer.tr
            assert extra(client, "sslcontext") is tls.client
            assert extra(server, "sslcontext") is tls.server
            for transport in (client, server):
                ssl_object = extra(transport, "ssl_object")
                assert isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket)
                assert ssl_object.version() is not None
                cipher = extra(transport, "cipher")
                assert isinstance(cipher, tuple)
                assert len(cipher) == 3
                compression = extra(transport, "compression")
                assert compression is None or isinstance(compression, str)
                assert extra(transport, "peername") is not None
            peercert = extra(client, "peercert")
            assert ("DNS", "localhost") in peercert["subjectAltName"]
            assert extra(server, "peercert") is None  # the client sent no certificate

    run(main())


def test_start_tls_upgrades_a_plain_connection(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        tls = tls_material()
        async with tcp_pair(loop) as pair:
            pair.client.tr.write(b"plain")
            assert await pair.peer.received(5) == b"plain"
            server_tls, client_tls = await wait(
                asyncio.gather(
                    loop.start_tls(pair.peer.tr, pair.peer, tls.server, server_side=True),
                    loop.start_tls(
                        pair.client.tr, pair.client, tls.client, server_hostname=tls.hostname
                    ),
                ),
                "both start_tls calls",
            )
            assert server_tls is not None
            assert client_tls is not None
            try:
                assert extra(client_tls, "sslcontext") is tls.client
                assert extra(server_tls, "ssl_object") is not None
                client_tls.write(b"secret")
                assert await pair.peer.received(11) == b"plainsecret"
                server_tls.write(b"reply")
                assert await pair.client.received(5) == b"reply"
                # the protocols were kept: connection_made is not repeated
                assert pair.peer.events.count("made") == 1
                assert pair.client.events.count("made") == 1
            finally:
                client_tls.close()
                server_tls.close()
                await wait(asyncio.shield(pair.client.lost), "client connection_lost")
                await wait(asyncio.shield(pair.peer.lost), "server connection_lost")

    run(main())


def test_tls_handshake_failure_with_an_untrusted_certificate(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        tls = tls_material()
        accepted: list[Recorder] = []

        def factory() -> Recorder:
            accepted.append(Recorder(loop))
            return accepted[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls.server)
        try:
            port = server.sockets[0].getsockname()[1]
            baseline = open_fds()
            with pytest.raises(ssl.SSLError) as failure:
                await wait(
                    _connect(loop, port, tls.wrong_client),
                    "the failing handshake",
                )
            assert isinstance(failure.value, ssl.SSLCertVerificationError)
            # The server side gives up its end too: its socket is closed, and a
            # protocol that saw connection_made also sees connection_lost.
            if baseline is not None:
                await wait_until(
                    lambda: len(open_fds() or {}) <= len(baseline),
                    "the server to close its side of the failed connection",
                )
            await settle()
            for protocol in accepted:
                assert ("made" in protocol.events) == ("lost" in protocol.events)
                assert protocol.lost_calls <= 1
            assert not [p for p in accepted if p.data], "data crossed a failed handshake"
        finally:
            server.close()
            await close_and_wait(*accepted)
            await server.wait_closed()

    run(main())


def test_tls_server_keeps_serving_after_a_failed_handshake(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        tls = tls_material()
        async with _tls_pair(loop, server_protocol=Echo) as pair:
            port = pair.server.sockets[0].getsockname()[1]
            with pytest.raises(ssl.SSLError):
                await wait(
                    _connect(loop, port, tls.wrong_client),
                    "the failing handshake",
                )
            transport, client = await wait(
                _connect(loop, port, tls.client),
                "a good handshake afterwards",
            )
            try:
                transport.write(b"still here")
                assert await client.received(10) == b"still here"
            finally:
                await close_and_wait(client)

    run(main())
