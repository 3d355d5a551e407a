"""Half-close: a client sends its request, shuts its write side, and still gets everything.

An HTTP client may send ``shutdown(SHUT_WR)`` right after its request; the
server must read that as the end of the input, not of the connection, and
deliver the whole response (large, streamed from a WSGI application thread,
or several pipelined ones) before closing.  The echo server must likewise
send back every byte after the peer's EOF.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Iterator

import pytest

from protoshim.conformance._helpers import Recorder, wait
from protoshim.conformance.http._support import Client, Environ, StartResponse, request
from protoshim.conformance.plugin import RunCoroutine
from protoshim.conformance.reliability._servers import PATTERN, App, Watched, watching
from protoshim.protocols.echo import EchoServer
from protoshim.protocols.http import Router

from .conftest import Figure

pytestmark = [pytest.mark.slow, pytest.mark.requires("tcp")]

#: 64 KiB blocks in the large responses: 8 MiB, more than socket buffers hold
BLOCKS = 128


def _stream_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Length", str(BLOCKS * len(PATTERN)))])
    for _ in range(BLOCKS):
        yield PATTERN


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _http(
    loop: asyncio.AbstractEventLoop, case: str
) -> tuple[list[tuple[int, str, int]], list[tuple[int, str, int]]]:
    """Return (expected, received) as (status, digest, size) per response."""
    handler: Router | App = Router(wsgi_app=_stream_app) if case == "wsgi-stream" else App()
    big = PATTERN * BLOCKS
    requests = {
        "large-response": (request("GET", f"/big?n={BLOCKS}"), [big]),
        "wsgi-stream": (request("GET", "/"), [big]),
        "request-body": (
            request("POST", "/upload", [("Content-Length", str(len(big)))], big),
            [b"%d" % len(big)],
        ),
        "pipelined": (
            request("GET", "/big?n=3") + request("GET", "/") + request("GET", "/big?n=2"),
            [PATTERN * 3, b"ok", PATTERN * 2],
        ),
    }
    data, bodies = requests[case]
    async with watching(loop, lambda: Watched(handler)) as served:
        _, client = await wait(
            loop.create_connection(functools.partial(Client, loop), "127.0.0.1", served.port),
            "create_connection",
        )
        assert isinstance(client, Client)
        client.send(data)
        client.tr.write_eof()
        received = []
        for _ in bodies:
            response = await client.response()
            received.append((response.status, _digest(response.body), len(response.body)))
        assert await client.everything() == b""  # then the server closes, nothing more
        client.tr.close()
        await wait(asyncio.shield(client.lost), "the client to close")
    return [(200, _digest(body), len(body)) for body in bodies], received


@pytest.mark.parametrize(
    "case",
    [
        "large-response",
        pytest.param("wsgi-stream", marks=pytest.mark.requires("threads")),
        "request-body",
        "pipelined",
    ],
)
def test_http_client_half_closes_after_its_request(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, figure: Figure, case: str
) -> None:
    expected, received = run(_http(loop, case), timeout=30)
    figure("bytes received after EOF", sum(size for _, _, size in received), "B", headline=True)
    assert received == expected


def test_echo_client_half_closes_and_gets_every_byte_back(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, figure: Figure
) -> None:
    payload = PATTERN * BLOCKS

    async def main() -> bytes:
        server = await loop.create_server(EchoServer, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            _, client = await wait(
                loop.create_connection(functools.partial(Recorder, loop), "127.0.0.1", port),
                "create_connection",
            )
            assert isinstance(client, Recorder)
            client.tr.write(payload)
            client.tr.write_eof()
            await wait(asyncio.shield(client.eof), "the echo server's EOF", timeout=20)
            client.tr.close()
            await wait(asyncio.shield(client.lost), "the client to close")
            return bytes(client.data)
        finally:
            server.close()
            await wait(server.wait_closed(), "Server.wait_closed()")

    echoed = run(main(), timeout=30)
    figure("bytes echoed after EOF", len(echoed), "B", headline=True)
    assert echoed == payload
